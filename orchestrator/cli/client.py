"""Client commands of the ``orchestrator`` CLI: ``submit``, ``jobs get|list|cancel``,
``backends`` (through the SDK and the HTTP API), and ``keys create|list|revoke`` (straight to
the database, like ``budgets set``: :mod:`orchestrator.cli.keys`). ``orchestrator.cli`` mounts
them with ``register(app)``.

The API URL and key come from ``--api-url``/``--api-key``, else ``ORCH_API_URL``/``ORCH_API_KEY``,
else the ``credentials.json`` that ``orchestrator up`` wrote (its tenant key). Every command
exits non-zero with one line ``error: <reason>`` on failure.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Annotated, Any

import httpx
import typer

from orchestrator.cli.checks import idempotency_key as checked_idempotency_key
from orchestrator.cli.checks import job_id as checked_job_id
from orchestrator.cli.checks import one_of
from orchestrator.cli.checks import seconds as checked_seconds
from orchestrator.cli.checks import usd as checked_usd
from orchestrator.cli.errors import UsageError, errors_as_one_line, fail, say
from orchestrator.cli.keys import keys_app
from orchestrator.client import (
    ApiConnectionError,
    ApiError,
    Backend,
    BudgetExceeded,
    Client,
    Job,
    NoEligibleBackend,
    ServerError,
    WaitTimeout,
)
from orchestrator.client._core import (
    API_KEY,
    CREDENTIALS_IN_URL,
    NOT_A_KEY,
    SETTINGS_TO_FIX,
    has_credentials,
    is_api_url,
)
from orchestrator.domain.jobs import Kind, Strategy, Tier
from orchestrator.store.jobs import FINAL, LIVE

jobs_app = typer.Typer(no_args_is_help=True,
                       help="Show, list, watch and cancel jobs; a job's result.")

ApiUrl = Annotated[str | None, typer.Option(
    "--api-url", help="API base URL (default: ORCH_API_URL, else `orchestrator up`'s)",
    show_default=False)]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", help="API key (default: ORCH_API_KEY, else `orchestrator up`'s tenant key)",
    show_default=False)]
JsonOut = Annotated[bool, typer.Option("--json", help="print the resource as JSON")]
JobId = Annotated[str, typer.Argument(metavar="ID", callback=checked_job_id,
                                      help="the job's id (a UUID)")]


def register(app: typer.Typer) -> None:
    """Add ``submit``, ``backends``, ``jobs …``, ``keys …`` and ``webhooks …`` to the
    ``orchestrator`` app."""
    app.command("submit")(submit)
    app.command("backends")(backends)
    from orchestrator.cli import watch  # noqa: F401  (adds jobs watch and jobs result)
    from orchestrator.cli.webhooks import webhooks_app

    app.add_typer(jobs_app, name="jobs")
    app.add_typer(keys_app, name="keys")
    app.add_typer(webhooks_app, name="webhooks")


# -- plumbing ---------------------------------------------------------------------------------

def _budget_message(exc: BudgetExceeded) -> str:
    """The refusal in dollars and cents, from the error's details (else the server's text)."""
    start = exc.details.get("period_start")
    if exc.scope is None or exc.remaining_usd is None or exc.requested_usd is None:
        return exc.message
    since = f" from {str(start)[:10]}" if start else ""
    return (f"budget {exc.scope} ({exc.period}{since}) has {usd(exc.remaining_usd)} remaining; "
            f"this job needs up to {usd(exc.requested_usd)}")


def _no_backend_message(exc: NoEligibleBackend) -> str:
    """The API's reason, and why each backend was left out (its ``details.excluded``)."""
    excluded = exc.details.get("excluded")
    reasons = [f"{e.get('backend')}: {e.get('reason')}" for e in excluded
               if isinstance(e, dict)] if isinstance(excluded, list) else []
    return exc.message + (f" ({'; '.join(reasons)})" if reasons else "")


# httpx refused the API URL (before any request). Neither the URL nor httpx's reason is
# shown: both may quote a password (httpx's reason quotes the part it could not read).
INVALID_URL = ("invalid API URL: not an http(s) URL httpx can read (check --api-url, "
               "ORCH_API_URL or the credentials file)")


# ``one_line_errors``, and the SDK's errors (a 402 in dollars and cents) as one line too;
# a URL httpx refuses while sending, where ``_client`` did not see it first
_one_line_errors = errors_as_one_line((BudgetExceeded, _budget_message),
                                      (NoEligibleBackend, _no_backend_message),
                                      (ApiError, lambda e: e.message),
                                      (httpx.InvalidURL, lambda _: INVALID_URL))


def endpoint(api_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The API URL and key a client command uses: the options, else ``ORCH_API_URL`` /
    ``ORCH_API_KEY``, else what ``orchestrator up`` wrote to its credentials file;
    ``ValueError`` for a URL that is none (``checked_url``), then one saying where a key can
    come from when none of them has one, or that the key is none (a newline read with it)."""
    from orchestrator.settings import load_settings

    settings = load_settings()
    creds: dict[str, Any] = {}
    path = settings.data_dir / "credentials.json"
    if path.exists():
        try:
            creds = json.loads(path.read_text())
        except (OSError, ValueError):
            creds = {}
    url = (api_url or (settings.api_url if "api_url" in settings.model_fields_set else None)
           or creds.get("api_url") or settings.api_url)
    url = checked_url(str(url).rstrip("/"))  # a bad URL is named first: it is one anyway
    key = api_key or settings.api_key or creds.get("tenant_key")
    if not key:
        # said here: the API's 401 ("send 'Authorization: Bearer <key>'") names no place a
        # CLI user can put a key, and `up --data-dir` elsewhere leaves this path empty
        raise ValueError(f"no API key: give --api-key or ORCH_API_KEY, or run `orchestrator "
                         f"up` (no credentials.json in {settings.data_dir.absolute()}; "
                         f"ORCH_DATA_DIR names the data dir it uses)")
    if not isinstance(key, str) or not API_KEY.fullmatch(key):
        # never quoted: httpx's own refusal, at every request, quotes the whole header
        raise ValueError("the API key (--api-key, ORCH_API_KEY or the credentials file) has "
                         + NOT_A_KEY)
    return url, key


def checked_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host and no credentials; ``ValueError``
    otherwise (the SDK's checks), never quoting it."""
    if not is_api_url(url):
        raise ValueError(INVALID_URL)
    if has_credentials(url):
        raise ValueError(f"invalid API URL: it {CREDENTIALS_IN_URL}; give the key with "
                         "--api-key or ORCH_API_KEY")
    return url


def _client(api_url: str | None, api_key: str | None) -> Client:
    """The SDK client, on the URL and key ``endpoint`` checked (a ``ValueError`` that says
    what is wrong with them, never quoting either)."""
    url, key = endpoint(api_url, api_key)
    return Client(base_url=url, api_key=key)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def usd(value: float | None) -> str:
    """$1.20, $0.0042, $0.000008 (cents, or up to the ledger's 6 decimals for small
    amounts: a text job's few micro-dollars are not $0.00); "-" for none."""
    if value is None:
        return "-"
    text = f"{value:,.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


# a number as JSON writes it: no sign but '-', no leading zero, digits on both sides of a
# point (``007``, ``+5``, ``.5`` and ``1.`` are no JSON: they stay the strings written)
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def parse_value(raw: str) -> Any:
    """A ``--param`` value: what it is as JSON (true/false/null, an int, a finite float, an
    object, array or quoted string); anything else stays the string it is."""
    if raw in ("true", "false"):
        return raw == "true"
    if raw == "null":
        return None
    number = _NUMBER_RE.fullmatch(raw)
    if number is not None:
        if number.group(1) is None and number.group(2) is None:
            return int(raw)
        f = float(raw)
        if math.isfinite(f):
            return f
    if raw[:1] in ("{", "[", '"'):
        try:
            return json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            pass
    return raw


def _no_constant(name: str) -> Any:
    """``NaN`` and ``Infinity``, which Python's json reads, are no JSON (nor would the SDK
    send them)."""
    raise ValueError(f"{name} is no JSON")


def parse_params(params: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in params:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected key=value")
        if key in out:
            raise UsageError(f"--param {key} given twice")
        out[key] = parse_value(raw)
    return out


def _job_summary(job: Job) -> list[str]:
    lines = [
        f"job        {job.id}",
        f"status     {job.status}",
        f"kind/tier  {job.kind or '-'} / {job.tier or '-'}",
        f"backend    {job.backend or '-'}",
        f"estimate   {usd(job.estimated_cost_usd)}",
        f"cost       {usd(job.cost_usd)}",
    ]
    if job.error is not None:
        lines.append(f"error      {job.error.code}: {job.error.message or ''}".rstrip())
    if job.attempts:
        tries = ", ".join(f"{a.backend}: {a.outcome or 'running'}" for a in job.attempts)
        lines.append(f"attempts   {tries}")
    for label, when in (("created", job.created_at), ("started", job.started_at),
                        ("finished", job.finished_at)):
        if when is not None:
            lines.append(f"{label:<10} {when.isoformat()}")
    return lines


def _show_job(job: Job, as_json: bool) -> None:
    if as_json:
        _print_json(job.model_dump(mode="json"))
    else:
        typer.echo("\n".join(_job_summary(job)))


# -- commands ---------------------------------------------------------------------------------

@_one_line_errors
def submit(
    kind: Annotated[str, typer.Option(help="video | image | text", callback=one_of(Kind))],
    prompt: Annotated[str, typer.Option(help="the prompt (never logged)")],
    tier: Annotated[str | None, typer.Option(
        help="draft | standard | premium", callback=one_of(Tier))] = None,
    strategy: Annotated[str | None, typer.Option(
        help="cheapest | fastest | balanced", callback=one_of(Strategy))] = None,
    max_cost_usd: Annotated[float | None, typer.Option(
        help="refuse backends dearer than this", callback=checked_usd)] = None,
    backend: Annotated[str | None, typer.Option(help="pin one backend by name")] = None,
    project: Annotated[str | None, typer.Option(help="metadata.project (a project budget)")]
    = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="input parameter key=value, repeatable (duration_s=8 resolution=720p)")]
    = None,
    idempotency_key: Annotated[str | None, typer.Option(
        help="resubmitting with the same key returns the same job",
        callback=checked_idempotency_key)] = None,
    cache: Annotated[bool | None, typer.Option(
        "--cache/--no-cache", help="use the result cache (default: the tenant's default)")]
    = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="wait until the job is final (its event stream, else polling)")] = False,
    timeout: Annotated[float, typer.Option(
        help="seconds --wait waits", callback=checked_seconds)] = 600.0,
    json_out: JsonOut = False,
    api_url: ApiUrl = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Submit a job. With --wait, exits non-zero unless it succeeds."""
    params = parse_params(param or [])
    if "prompt" in params:
        raise UsageError("give the prompt with --prompt, not --param prompt=…")
    # made here rather than by the SDK, so that a submission whose answer never came (or an
    # interrupt) can name it: a rerun without it could pay for a second job
    key = str(uuid.uuid4()) if idempotency_key is None else idempotency_key
    with _client(api_url, api_key) as c:
        try:
            job = c.submit(kind=kind, input={"prompt": prompt, **params}, tier=tier,
                           strategy=strategy, max_cost_usd=max_cost_usd, backend=backend,
                           metadata={"project": project} if project else None,
                           idempotency_key=key, cache=cache)
        except KeyboardInterrupt:
            say(f"interrupted: the job may have been made all the same; {_resubmit(key)}")
            raise typer.Exit(130) from None
        except (ApiConnectionError, ServerError) as exc:
            if exc.code in SETTINGS_TO_FIX:
                raise
            fail(f"{exc.message} (the job may have been made all the same; "
                 f"{_resubmit(key)})")
        if wait:
            try:
                job = _wait_for(c, job, timeout)
            except WaitTimeout as exc:
                if json_out:  # a script still learns the job, which runs on
                    _show_job(exc.job or job, True)
                raise
    _show_job(job, json_out)
    if wait and job.status != "succeeded":
        reason = f": {job.error.code}: {job.error.message}" if job.error else ""
        fail(f"job {job.id} {job.status}{reason}")


def _resubmit(key: str) -> str:
    return (f"run the same command with --idempotency-key {key} to get it rather than a "
            "second job")


def _wait_for(c: Client, job: Job, timeout: float) -> Job:
    """``submit --wait``'s wait for the job it made. What ends the wait early (an error, a
    timeout, Ctrl-C) names the job, which runs on: a rerun of the command would make (and
    pay for) a second one."""
    try:
        return c.wait(job.id, timeout=timeout)
    except KeyboardInterrupt:
        say(f"interrupted: job {job.id} runs on; follow it with `orchestrator jobs watch "
            f"{job.id}`, or stop it with `orchestrator jobs cancel {job.id}`")
        raise typer.Exit(130) from None
    except WaitTimeout:
        raise  # its message names the job
    except ApiError as exc:
        fail(f"job {job.id} was submitted, but waiting for it failed: {exc.message}")


@jobs_app.command("get")
@_one_line_errors
def jobs_get(
    job_id: JobId,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """Show one job."""
    with _client(api_url, api_key) as c:
        _show_job(c.get(job_id), json_out)


@jobs_app.command("list")
@_one_line_errors
def jobs_list(
    status: Annotated[str | None, typer.Option(
        help="queued | running | succeeded | failed | cancelled",
        callback=one_of((*LIVE, *FINAL)))] = None,
    limit: Annotated[int, typer.Option(help="at most this many (newest first)", min=1,
                                       max=200)] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page")] = None,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """List own jobs, newest first."""
    with _client(api_url, api_key) as c:
        page = c.list(status=status, limit=limit, cursor=cursor)
    if json_out:
        _print_json(page.model_dump(mode="json"))
        return
    if not page.items:
        typer.echo("no jobs")
        return
    typer.echo(f"{'id':36}  {'status':9}  {'kind':5}  {'tier':8}  {'backend':20}  "
               f"{'estimate':>10}  {'cost':>10}")
    for j in page.items:
        typer.echo(f"{j.id:36}  {j.status:9}  {j.kind or '-':5}  {j.tier or '-':8}  "
                   f"{j.backend or '-':20}  {usd(j.estimated_cost_usd):>10}  "
                   f"{usd(j.cost_usd):>10}")
    if page.next_cursor:
        typer.echo(f"more: --cursor {page.next_cursor}")


@jobs_app.command("cancel")
@_one_line_errors
def jobs_cancel(
    job_id: JobId,
    json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None,
) -> None:
    """Cancel a job; its budget hold is released, or kept while an attempt is in flight.

    With an attempt in flight the provider is asked to stop, and the hold stays
    until that attempt concludes: what the provider billed is charged, the rest
    released.
    """
    with _client(api_url, api_key) as c:
        job = c.cancel(job_id)
    if json_out:
        _print_json(job.model_dump(mode="json"))
    else:
        typer.echo(f"job {job.id} {job.status}")


def _backend_row(b: Backend) -> str:
    breaker = b.breaker.state + (f" ({b.breaker.strikes})" if b.breaker.strikes else "")
    success = "-" if b.success_rate is None else f"{b.success_rate:.0%}"
    latency = "-" if b.latency_ms is None else f"{b.latency_ms:.0f}ms"
    cal = "-" if not b.calibration else f"x{float(b.calibration.get('ratio', 0)):.3f}"
    return (f"{b.name:24}  {','.join(b.kinds):12}  {b.tier or '-':8}  {breaker:14}  "
            f"{success:>7}  {latency:>9}  {b.in_flight if b.in_flight is not None else '-':>9}  "
            f"{b.waiting if b.waiting is not None else '-':>7}  {cal:>11}")


@_one_line_errors
def backends(json_out: JsonOut = False, api_url: ApiUrl = None, api_key: ApiKeyOpt = None) -> None:
    """The backend catalogue with breaker state and observed health."""
    with _client(api_url, api_key) as c:
        items = c.backends()
    if json_out:
        _print_json({"backends": [b.model_dump(mode="json") for b in items]})
        return
    typer.echo(f"{'name':24}  {'kinds':12}  {'tier':8}  {'breaker':14}  {'success':>7}  "
               f"{'latency':>9}  {'in_flight':>9}  {'waiting':>7}  {'calibration':>11}")
    for b in items:
        typer.echo(_backend_row(b))
