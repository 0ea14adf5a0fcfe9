"""``orchestrator webhooks deliveries`` (what was sent to the tenant's webhook endpoints, and
what failed), ``orchestrator webhooks redeliver ID`` and ``orchestrator webhooks
redeliver-failed`` (queue them again once the receiver is fixed), through the SDK."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.checks import job_id as checked_job_id
from orchestrator.cli.checks import one_of
from orchestrator.cli.checks import tenant as checked_tenant
from orchestrator.cli.client import (
    ApiKeyOpt,
    ApiUrl,
    JsonOut,
    _client,
    _one_line_errors,
    _print_json,
)

webhooks_app = typer.Typer(no_args_is_help=True,
                           help="Webhook deliveries: list them, send failed ones again.")

Tenant = Annotated[str | None, typer.Option(help="admin keys: another tenant's",
                                            callback=checked_tenant)]


def _job(value: str | None) -> str | None:
    return None if value is None else checked_job_id(value)


JobOpt = Annotated[str | None, typer.Option("--job", help="one job's only (its id)",
                                            callback=_job)]


@webhooks_app.command("deliveries")
@_one_line_errors
def deliveries(
    status: Annotated[str | None, typer.Option(
        help="pending | delivered | failed",
        callback=one_of(("pending", "delivered", "failed")))] = None,
    job: JobOpt = None,
    limit: Annotated[int, typer.Option(help="at most this many (newest first)", min=1,
                                       max=500)] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page")] = None,
    tenant: Tenant = None,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """List webhook deliveries, newest first (failing ones with their last error)."""
    with _client(api_url, api_key) as c:
        page = c.webhook_deliveries(status=status, job_id=job, limit=limit, cursor=cursor,
                                    tenant=tenant)
    if json_out:
        _print_json(page.model_dump(mode="json"))
        return
    if not page.items:
        typer.echo("no deliveries")
        return
    typer.echo(f"{'id':>8}  {'event':13}  {'job':36}  {'target':6}  {'status':9}  "
               f"{'tries':>5}  last error")
    for d in page.items:
        typer.echo(f"{d.id:>8}  {d.event_type:13}  {d.job_id:36}  {d.target:6}  "
                   f"{d.status:9}  {d.attempts:>5}  {d.last_error or '-'}")
    if page.next_cursor:
        typer.echo(f"more: --cursor {page.next_cursor}")


@webhooks_app.command("redeliver")
@_one_line_errors
def redeliver(
    delivery_id: Annotated[int, typer.Argument(metavar="ID", min=1,
                                               help="the delivery's id (as listed)")],
    tenant: Tenant = None,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """Send a failed (or delivered) delivery again, with a new retry window."""
    with _client(api_url, api_key) as c:
        d = c.redeliver(delivery_id, tenant=tenant)
    if json_out:
        _print_json(d.model_dump(mode="json"))
    else:
        typer.echo(f"delivery {d.id} ({d.event_type} of job {d.job_id}) queued again")


@webhooks_app.command("redeliver-failed")
@_one_line_errors
def redeliver_failed(
    job: JobOpt = None, tenant: Tenant = None,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """Send every failed delivery (of one job, with --job) again."""
    with _client(api_url, api_key) as c:
        n = c.redeliver_failed(job_id=job, tenant=tenant)
    if json_out:
        _print_json({"requeued": n})
    else:
        typer.echo(f"{n} failed deliver{'y' if n == 1 else 'ies'} queued again")
