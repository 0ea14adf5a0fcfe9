"""``orchestrator jobs watch ID`` (each event of a job as it comes, from its event stream)
and ``orchestrator jobs result ID`` (a succeeded job's output and cost breakdown, or a
cancelled or deadline-failed one's whose provider finished anyway)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer

from orchestrator.cli.checks import seconds as checked_seconds
from orchestrator.cli.client import (
    ApiKeyOpt,
    ApiUrl,
    JobId,
    JsonOut,
    _client,
    _one_line_errors,
    _print_json,
    jobs_app,
    usd,
)
from orchestrator.cli.errors import fail
from orchestrator.client import ApiError, Client, JobEvent, NotFound, WaitTimeout
from orchestrator.client._core import is_outage

# the pause before following the job's stream again after the API could not give it, doubling
# while it cannot
OUTAGE_PAUSE_S = 0.5
OUTAGE_PAUSE_MAX_S = 5.0


def describe(e: JobEvent) -> str:
    """One line per event: what happened, never the job's input."""
    d: dict[str, Any] = e.data
    cost = d.get("cost") or {}
    error = d.get("error") or {}
    what = {
        "job.queued": f"estimate {usd(d.get('estimated_cost_usd'))}",
        "job.started": f"on {d.get('backend')} (attempt {d.get('attempt')})",
        "job.failover": f"{d.get('from')} -> {d.get('to')}: {d.get('why')}",
        "job.succeeded": f"on {d.get('backend')}, cost {usd(cost.get('total_usd'))}",
        "job.failed": f"{error.get('code')}: {error.get('message')}",
        "job.cancelled": f"cost {usd(cost.get('total_usd'))}",
        "job.charged": f"cost {usd(cost.get('previous_total_usd'))} -> "
                       f"{usd(cost.get('total_usd'))}",
    }.get(e.type, "")
    return f"{e.at.isoformat()}  #{e.seq:<3} {e.type:14} {what}".rstrip()


@jobs_app.command("watch")
@_one_line_errors
def jobs_watch(
    job_id: JobId,
    after: Annotated[int, typer.Option(help="start after this event number (seq)", min=0)]
    = 0,
    timeout: Annotated[float, typer.Option(
        help="give up after this many seconds", callback=checked_seconds)] = 3600.0,
    json_out: Annotated[bool, typer.Option("--json", help="each event as a JSON line")]
    = False,
    api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """Print each event of a job as it comes, until it ends; exit non-zero unless it
    succeeded. A server without event streams (older than them) is polled instead: the job's
    status is printed as it ends."""
    last: JobEvent | None = None
    began = time.monotonic()
    pause = OUTAGE_PAUSE_S
    with _client(api_url, api_key) as c:
        while True:
            left = timeout - (time.monotonic() - began)
            try:
                for event in c.events(job_id, after=last.seq if last else after,
                                      timeout=max(left, 0.0)):
                    last, pause = event, OUTAGE_PAUSE_S
                    typer.echo(json.dumps(event.model_dump(mode="json")) if json_out
                               else describe(event))
                break
            except (httpx.TransportError, ApiError) as exc:
                if isinstance(exc, NotFound):
                    if last is not None:  # the stream was there: a 404 now is the job's own
                        raise
                    # the job exists (else this raises its own "no job" error): the server
                    # has no stream to give
                    status = _polled(c, job_id, timeout, left, json_out)
                    if status != "succeeded":
                        fail(f"job {job_id} {status}")
                    return
                if isinstance(exc, ApiError) and not is_outage(exc):
                    raise
                # The API is down or restarting (its stream cut and reconnections refused,
                # or a 502/503): the job runs on, so the watch goes on from the last event
                # it printed once the API is back, within its timeout.
                left = timeout - (time.monotonic() - began)
                if left <= 0:
                    fail(f"job {job_id}: no end within {timeout:g} s")
                time.sleep(min(pause, left))
                pause = min(pause * 2, OUTAGE_PAUSE_MAX_S)
        # The stream can end with no terminal event printed: --after at or past it, or the
        # events dropped by retention. The job itself says how it ended.
        if last is not None and last.is_terminal:
            status = last.type.removeprefix("job.")
        else:
            job = c.get(job_id)  # the SDK's errors are one line (_one_line_errors)
            if not job.is_final:
                fail(f"job {job_id}: its event stream ended while it is {job.status}")
            status = job.status
    if status != "succeeded":
        fail(f"job {job_id} {status}")


def _polled(c: Client, job_id: str, timeout: float, left: float, json_out: bool) -> str:
    """Wait for the job by polling (the SDK's ``wait`` without its stream) for the ``left``
    of ``timeout`` seconds; its final status, printed as the job (``--json``) or one line."""
    c.get(job_id)  # a job that does not exist: its own one-line error
    typer.echo("this server has no event streams: polling the job until it ends", err=True)
    try:
        job = c.wait(job_id, timeout=max(left, 0.0), stream=False)
    except WaitTimeout:
        fail(f"job {job_id}: no end within {timeout:g} s")
    if json_out:
        typer.echo(json.dumps(job.model_dump(mode="json")))
    else:
        at = job.finished_at.isoformat() if job.finished_at else ""
        typer.echo(f"{at}  {job.status}".strip())
    return job.status


@jobs_app.command("result")
@_one_line_errors
def jobs_result(
    job_id: JobId,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """A succeeded job's output and what it cost, attempt by attempt (a cancelled or
    deadline-failed job's too, when its provider finished the work anyway)."""
    with _client(api_url, api_key) as c:
        res = c.result(job_id)
    if json_out:
        _print_json(res.model_dump(mode="json"))
        return
    typer.echo(f"job {res.job_id} {res.status} on {res.backend}: "
               f"{usd(res.cost.get('total_usd'))}")
    for a in res.cost.get("attempts", []):
        typer.echo(f"  attempt {a.get('attempt')} {a.get('backend')}: {a.get('outcome')} "
                   f"{usd(a.get('cost_usd'))}")
    typer.echo(json.dumps(res.output, indent=2))
