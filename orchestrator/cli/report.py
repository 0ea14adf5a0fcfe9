"""``orchestrator report``: spend from the ledger grouped by backend, tier, project, day or
tenant, and how close the estimates were (``GET /v1/reports/costs``). ``orchestrator.cli`` mounts it
with ``register(app)``.

The API URL and key resolve like the other client commands: ``--api-url``/``--api-key``, else
``ORCH_API_URL``/``ORCH_API_KEY``, else the ``credentials.json`` of ``orchestrator up``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer

from orchestrator.cli.checks import iso_time, one_of
from orchestrator.cli.checks import tenant as checked_tenant
from orchestrator.cli.client import INVALID_URL, endpoint
from orchestrator.cli.errors import fail
from orchestrator.client._core import origin
from orchestrator.domain.money import format_usd
from orchestrator.reports import GroupBy


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``orchestrator`` app."""
    app.command("report")(report)


def fetch_report(
    api_url: str, api_key: str | None, params: dict[str, str], timeout: float = 30.0
) -> dict[str, Any]:
    """The report as the API returns it; ``ValueError`` with the API's one-line reason."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{api_url}/v1/reports/costs", params=params, headers=headers,
                      timeout=timeout)
    except httpx.InvalidURL:  # not an HTTPError: httpx refused the URL itself
        raise ValueError(INVALID_URL) from None
    except httpx.HTTPError as exc:
        # the origin only: the URL may carry a password or a token
        raise ValueError(f"cannot reach the API at {origin(api_url)}: "
                         f"{type(exc).__name__}") from None
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code != 200:
        err = body.get("error") if isinstance(body, dict) else None
        # not our API's error (a proxy's page, say): its body is not shown
        if not isinstance(err, dict) or not err:
            raise ValueError(f"HTTP {r.status_code} from {origin(api_url)}, not an API error")
        raise ValueError(f"{err.get('code', r.status_code)}: {err.get('message', '')}")
    if not isinstance(body, dict) or not body.keys() >= REPORT_FIELDS:
        raise ValueError(f"{origin(api_url)} answered something that is not a cost report "
                         "(is the API URL right?)")
    return body


# what ``render`` reads of a report: an answer without them is not one (a wrong URL's JSON)
REPORT_FIELDS = frozenset({"group_by", "groups", "jobs", "total_micros", "accuracy"})


def render(rep: dict[str, Any]) -> list[str]:
    """The report as text: exact amounts (micro-dollars shown as $x.xxxxxx)."""
    scope = rep.get("tenant") or "all tenants"
    span = f"{rep.get('from') or 'start'} .. {rep.get('to') or 'now'}"
    lines = [f"costs by {rep['group_by']} for {scope} ({span})",
             f"{rep['group_by']:<24} {'jobs':>6} {'cost':>16}"]
    for g in rep["groups"]:
        key = g["key"] if g["key"] is not None else "(none)"
        lines.append(f"{key:<24} {g['jobs']:>6} {format_usd(g['cost_micros']):>16}")
    lines.append(f"{'total':<24} {rep['jobs']:>6} {format_usd(rep['total_micros']):>16}")
    if rep["accuracy"]:
        lines += ["", "estimate accuracy (actual / estimate, succeeded jobs)",
                  f"{'backend':<24} {'jobs':>6} {'mean':>7} {'p50':>7} {'p95':>7} "
                  f"{'within 5%':>10}"]
        for a in rep["accuracy"]:
            lines.append(
                f"{a['backend']:<24} {a['jobs']:>6} {a['mean_ratio']:>7.3f} "
                f"{a['p50_ratio']:>7.3f} {a['p95_ratio']:>7.3f} "
                f"{a['within_5pct_share']:>9.0%} "
            )
        lines += ["", "error p95 |actual - predicted| / predicted: worst-case estimate -> "
                  "calibrated expected cost"]
        for a in rep["accuracy"]:
            cal = a.get("calibrated") or {}
            lines.append(f"{a['backend']:<24} {a.get('err_p95', 0.0):>8.2%} -> "
                         f"{cal.get('err_p95', 0.0):>8.2%}  (within 5%: "
                         f"{cal.get('within_5pct_share', 0.0):.0%})")
    cache = rep.get("cache")
    if cache and cache.get("cacheable_jobs"):
        lines += ["", f"result cache: {cache['served']} of {cache['cacheable_jobs']} "
                  f"cache-enabled jobs served ({cache['hit_rate']:.1%}), saved "
                  f"{format_usd(cache['saved_micros'])}"]
    return lines


def report(
    group_by: Annotated[str, typer.Option(
        "--group-by", help="backend | tier | project | day | tenant", callback=one_of(GroupBy))]
    = "backend",
    start: Annotated[str | None, typer.Option(
        "--from", help="charges at or after this ISO time (UTC if no offset)",
        callback=iso_time)] = None,
    end: Annotated[str | None, typer.Option(
        "--to", help="charges before this ISO time", callback=iso_time)] = None,
    tenant: Annotated[str | None, typer.Option(
        help="admin key: one tenant (default: all)", callback=checked_tenant)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    api_url: Annotated[str | None, typer.Option(
        "--api-url", help="API base URL (default: ORCH_API_URL, else `orchestrator up`'s)",
        show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="API key (default: ORCH_API_KEY, else `orchestrator up`'s)",
        show_default=False)] = None,
) -> None:
    """Spend from the budget ledger, grouped, with estimate-vs-actual accuracy per backend."""
    if start is not None and end is not None and _utc(end) <= _utc(start):
        raise typer.BadParameter("must be after --from", param_hint="'--to'")
    params = {"group_by": group_by}
    for name, value in (("from", start), ("to", end), ("tenant", tenant)):
        if value is not None:
            params[name] = value
    try:
        url, key = endpoint(api_url, api_key)
        rep = fetch_report(url, key, params)  # endpoint checked the URL
    except ValueError as exc:
        fail(str(exc))
        return
    if json_out:
        typer.echo(json.dumps(rep, indent=2))
        return
    try:
        lines = render(rep)
    except (KeyError, TypeError, ValueError, AttributeError):  # a field of another shape
        fail(f"{origin(url)} answered something that is not a cost report "
             "(is the API URL right?)")
    typer.echo("\n".join(lines))


def _utc(iso: str) -> datetime:
    """An ISO time as the API reads it: UTC when it names no offset."""
    t = datetime.fromisoformat(iso)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
