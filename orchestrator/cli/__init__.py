"""The ``orchestrator`` command: ``main`` (typer), its client commands (``client``), the cost
report (``report``) and how every command ends on an error (``errors``)."""

try:
    from orchestrator.cli.main import app, main
except KeyboardInterrupt:
    # Ctrl-C in the second or so the command's modules take to load, before any command
    # runs: ended as one during the command is (typer's status 130, nothing printed), not
    # with a traceback through the import machinery
    raise SystemExit(130) from None

__all__ = ["app", "main"]
