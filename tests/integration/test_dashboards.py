"""The Grafana dashboard (``config/monitoring/grafana-dashboard.json``) charts only what the
code exports: every panel query is parsed as PromQL, and every metric it names must be in
what a live ``orchestrator api`` serves at ``/metrics`` (no hand-kept list)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.embedded._ports import free_port

from .e2e_support import ROOT
from .test_metrics_addr import api_process

GRAFANA = ROOT / "config" / "monitoring" / "grafana-dashboard.json"
# the series names a family of each type puts on the wire
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "untyped": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"), "info": ("_info",),
            "summary": ("", "_sum", "_count", "_created")}


@pytest.fixture(scope="module")
def exported(database_url: str, redis_url: str) -> Iterator[set[str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ORCH_METRICS_ADDR"}
    env.update(ORCH_DATABASE_URL=database_url, ORCH_REDIS_URL=redis_url,
               ORCH_LOG_LEVEL="WARNING")
    with api_process(env, port):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    yield {fam.name + suffix for fam in text_string_to_metric_families(text)
           for suffix in SUFFIXES[fam.type]}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def queries(path: Path) -> list[tuple[str, str]]:
    dashboard = json.loads(path.read_text())
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def test_every_panel_query_names_an_exported_metric(exported: set[str]) -> None:
    found = queries(GRAFANA)
    assert len(found) >= 20
    used: set[str] = set()
    for title, expr in found:
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        missing = names - exported
        assert not missing, f"panel {title!r} uses {sorted(missing)}, which nothing exports"
        used |= names
    # what the dashboard is for: spend, jobs by status, fail-overs, breakers, submit latency,
    # queue age (and the API's requests, the processes)
    assert {"orchestrator_budget_spend_usd", "orchestrator_job_cost_usd_sum",
            "orchestrator_jobs_finished_total", "orchestrator_job_failovers_total",
            "orchestrator_backend_breaker_state",
            "orchestrator_http_request_duration_seconds_bucket",
            "orchestrator_queue_oldest_age_seconds", "orchestrator_http_requests_total",
            "process_cpu_seconds_total", "process_resident_memory_bytes"} <= used


def test_the_check_catches_a_wrong_name(exported: set[str], tmp_path: Path) -> None:
    dashboard = json.loads(GRAFANA.read_text())
    target = next(p for p in panels(dashboard) if p.get("targets"))["targets"][0]
    target["expr"] = "sum(rate(orchestrator_jobs_finish_total[5m]))"  # a typo
    bad = tmp_path / "dashboard.json"
    bad.write_text(json.dumps(dashboard))
    names = set().union(*(metric_names(expr) for _, expr in queries(bad)))
    assert names - exported == {"orchestrator_jobs_finish_total"}
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("sum(rate(orchestrator_jobs_finished_total[5m])")  # unbalanced
