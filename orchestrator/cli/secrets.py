"""``orchestrator secrets``: keys of the encrypted channel secrets (``orchestrator.secrets``).

    orchestrator secrets new-key    # print a new key (to put first in ORCH_SECRET_KEY)
    orchestrator secrets rotate     # re-encrypt every stored secret with the first key

``orchestrator.cli`` mounts it with ``register(app)``.
"""

from __future__ import annotations

import typer

from orchestrator.cli.errors import fail, one_line_errors

secrets_app = typer.Typer(no_args_is_help=True,
                          help="Keys of the channel secrets kept encrypted in the database.")


def register(app: typer.Typer) -> None:
    app.add_typer(secrets_app, name="secrets")


@secrets_app.command("new-key")
def new_key_command() -> None:
    """Print a new Fernet key. Rotation: ORCH_SECRET_KEY=<new>,<old> everywhere, then
    `orchestrator secrets rotate`, then drop <old>."""
    from orchestrator.secrets import new_key

    typer.echo(new_key())


@secrets_app.command("rotate")
@one_line_errors
def rotate() -> None:
    """Re-encrypt every stored channel secret and tenant webhook endpoint with the first key
    of ORCH_SECRET_KEY (or of <data_dir>/secret.key), and encrypt any channel secret still
    stored in plain text. All or nothing."""
    from orchestrator.events.endpoints import rotate_all
    from orchestrator.notify.stored import seal_legacy
    from orchestrator.secrets import SecretKeyMissing, load_keys
    from orchestrator.settings import get_settings, resolve_database_url
    from orchestrator.store.engine import make_engine

    settings = get_settings()
    box = load_keys(settings)
    if box is None:
        fail(SecretKeyMissing().message)
    engine = make_engine(resolve_database_url(settings), pool_size=1)
    try:
        with engine.begin() as tx:
            report = seal_legacy(tx, box, rotate=True)
            endpoints = rotate_all(tx, box)
    finally:
        engine.dispose()
    invalid = f" ({report.invalid} of them not valid channels)" if report.invalid else ""
    typer.echo(f"re-encrypted {report.rotated} channel(s) and encrypted {report.sealed} "
               f"stored in plain text{invalid}, in {report.budgets} budget(s), with key 1 of "
               f"{box.key_count}")
    typer.echo(f"re-encrypted {endpoints} tenant webhook endpoint(s)")
