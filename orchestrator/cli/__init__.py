"""The ``orchestrator`` command: ``main`` (typer), its client commands (``client``), the cost
report (``report``) and how every command ends on an error (``errors``)."""

from orchestrator.cli.main import app, main

__all__ = ["app", "main"]
