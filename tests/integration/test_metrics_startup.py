"""``/metrics`` of a fresh ``orchestrator api`` process, before any job ran: the request and
process families and every catalogue family, each with HELP and TYPE before its samples;
requests counted by route template and status, never by raw path."""

from __future__ import annotations

import os
import uuid

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.embedded._ports import free_port
from orchestrator.metrics.catalogue import CATALOGUE, Kind

from .test_metrics_addr import api_process

PROCESS_FAMILIES = {"process_cpu_seconds", "process_resident_memory_bytes",
                    "process_open_fds", "process_start_time_seconds", "python_gc_collections",
                    "python_info"}
REQUEST_FAMILIES = {"orchestrator_http_requests", "orchestrator_http_request_duration_seconds",
                    "orchestrator_http_request_errors"}
PROM_TYPE = {Kind.CUMULATIVE: "counter", Kind.GAUGE: "gauge", Kind.DISTRIBUTION: "histogram"}


def family_name(prom_name: str) -> str:
    """The family as the parser names it (a counter's family drops ``_total``)."""
    return prom_name.removesuffix("_total")


def header_order_ok(text: str) -> list[str]:
    """Families whose samples come before their HELP or TYPE line (empty: all in order)."""
    seen_help: set[str] = set()
    seen_type: set[str] = set()
    bad = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            seen_help.add(line.split()[2])
        elif line.startswith("# TYPE "):
            seen_type.add(line.split()[2])
        elif line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            owners = {name, *(name.removesuffix(s) for s in
                              ("_total", "_bucket", "_sum", "_count", "_created"))}
            if not owners & seen_help or not owners & seen_type:
                bad.append(name)
    return bad


def test_a_fresh_api_lists_every_family(database_url: str, redis_url: str) -> None:
    # earlier tests of this process may have used up 127.0.0.1's failed authentications,
    # which would answer the 401 counted below with a 429
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ORCH_METRICS_ADDR"}
    env.update(ORCH_DATABASE_URL=database_url, ORCH_REDIS_URL=redis_url,
               ORCH_LOG_LEVEL="WARNING")
    base = f"http://127.0.0.1:{port}"
    with api_process(env, port):
        first = httpx.get(f"{base}/metrics", timeout=5)
        assert first.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(first.text)}
        assert families.keys() >= PROCESS_FAMILIES
        assert families.keys() >= REQUEST_FAMILIES
        for metric in CATALOGUE.values():
            fam = families.get(family_name(metric.prom_name))
            assert fam is not None, f"{metric.prom_name} is missing"
            assert fam.type == PROM_TYPE[metric.kind] and fam.documentation
        # no job ran: the job families are there, empty
        assert families["orchestrator_jobs_finished"].samples == []
        assert header_order_ok(first.text) == []
        assert families["process_resident_memory_bytes"].samples[0].value > 0

        job_id = uuid.uuid4()
        assert httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).status_code == 401
        assert httpx.get(f"{base}/no/such/{job_id}", timeout=5).status_code == 404
        text = httpx.get(f"{base}/metrics", timeout=5).text
    assert str(job_id) not in text  # a raw path never becomes a label
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    job_route = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "401"))
    assert samples[("orchestrator_http_requests_total", job_route)] == 1
    assert samples[("orchestrator_http_request_errors_total", job_route)] == 1
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("orchestrator_http_request_errors_total", unmatched)] == 1
    metrics_ok = (("method", "GET"), ("route", "/metrics"), ("status", "200"))
    assert samples[("orchestrator_http_requests_total", metrics_ok)] >= 1
    assert ("orchestrator_http_request_errors_total", metrics_ok) not in samples
    timed = (("le", "+Inf"), ("method", "GET"), ("route", "/v1/jobs/{job_id}"))
    assert samples[("orchestrator_http_request_duration_seconds_bucket", timed)] == 1
