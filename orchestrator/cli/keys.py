"""``orchestrator keys create|list|revoke``: API keys, straight to the database
(``ORCH_DATABASE_URL`` or the one ``orchestrator up`` runs), like ``budgets set``: these are
the operator's commands on a machine that reaches the database, and they work when no admin
key is at hand. They use the same rules as ``/v1/keys``: a key is named by its id, the last
live admin key cannot be revoked, no key is ever shown but the one just created.

A revocation here takes effect on every API replica within ``ORCH_API_KEY_CACHE_S``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import typer
from sqlalchemy import Connection

from orchestrator.cli.checks import tenant as checked_tenant
from orchestrator.cli.errors import one_line_errors

keys_app = typer.Typer(no_args_is_help=True,
                       help="Create, list and revoke API keys (talks to the database).")


@contextmanager
def _database() -> Iterator[Connection]:
    from orchestrator.settings import load_settings, resolve_database_url
    from orchestrator.store.engine import make_engine

    engine = make_engine(resolve_database_url(load_settings()), pool_size=1)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if at is not None else "-"


@keys_app.command("create")
@one_line_errors
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for",
                                        callback=checked_tenant)],
    admin: Annotated[bool, typer.Option("--admin", help="may manage keys and budgets")] = False,
) -> None:
    """Create an API key and print it once: it is stored only as a hash."""
    from orchestrator.store.keys import create_key_record

    with _database() as conn:
        key, rec = create_key_record(conn, tenant, admin)
    typer.echo(f"{'admin' if admin else 'tenant'} key {rec.id} for {tenant} (shown once):",
               err=True)
    typer.echo(key)


@keys_app.command("list")
@one_line_errors
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys",
                                               callback=checked_tenant)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print GET /v1/keys's shape")] = False,
) -> None:
    """List API keys, newest first: id, tenant, admin, prefix, created, last used, revoked
    (UTC)."""
    from orchestrator.store.keys import list_keys

    with _database() as conn:
        records = list_keys(conn, tenant)
    if json_out:
        typer.echo(json.dumps({"items": [r.resource() for r in records]}, indent=2))
        return
    if not records:
        typer.echo("no keys" + (f" for {tenant}" if tenant else ""))
        return
    typer.echo(f"{'id':>6}  {'tenant':20}  {'admin':5}  {'prefix':8}  {'created':16}  "
               f"{'last used':16}  {'revoked':16}")
    for r in records:
        typer.echo(f"{r.id:>6}  {r.tenant:20}  {'yes' if r.admin else 'no':5}  {r.prefix:8}  "
                   f"{_when(r.created_at):16}  {_when(r.last_used_at):16}  "
                   f"{_when(r.revoked_at):16}")


@keys_app.command("revoke")
@one_line_errors
def keys_revoke(
    key_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="the key's id (keys list)")],
) -> None:
    """Revoke one API key by its id. Revoking a revoked key changes nothing; the last live
    admin key cannot be revoked."""
    from orchestrator.store.keys import revoke_key

    with _database() as conn:
        rec = revoke_key(conn, key_id)
    typer.echo(f"key {rec.id} ({rec.tenant}, {rec.prefix}) revoked "
               f"{_when(rec.revoked_at)} UTC")
