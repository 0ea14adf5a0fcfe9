"""The metric catalogue, as code: every figure the orchestrator records.

Each :class:`MetricDef` names one metric once; the recorder validates events against it, the
Cloud Monitoring sink turns it into a ``MetricDescriptor`` under
``custom.googleapis.com/orchestrator/<name>``, and the Prometheus exposition names it
``<prom_name>``. Kinds:

* ``CUMULATIVE`` — a counter that only grows from a fixed start time (per process series);
* ``GAUGE`` — the latest value of something measured (budget use, breaker state, queue depth);
* ``DISTRIBUTION`` — a cumulative histogram with explicit bucket bounds (latency, cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

METRIC_PREFIX = "custom.googleapis.com/orchestrator/"


class Kind(StrEnum):
    CUMULATIVE = "CUMULATIVE"
    GAUGE = "GAUGE"
    DISTRIBUTION = "DISTRIBUTION"


class ValueType(StrEnum):
    INT64 = "INT64"
    DOUBLE = "DOUBLE"
    DISTRIBUTION = "DISTRIBUTION"


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    kind: Kind
    value_type: ValueType
    unit: str
    labels: tuple[str, ...]
    description: str
    prom_name: str
    buckets: tuple[float, ...] = ()

    @property
    def metric_type(self) -> str:
        return METRIC_PREFIX + self.name


# Metric names, for callers (avoid typos in string literals).
JOBS_SUBMITTED = "jobs/submitted"
JOBS_FINISHED = "jobs/finished"
JOB_LATENCY = "jobs/latency"
JOB_QUEUE_LATENCY = "jobs/queue_latency"
JOB_COST = "jobs/cost"
JOB_OVERAGE = "jobs/overage"
JOB_FAILOVERS = "jobs/failovers"
JOB_RETRIES = "jobs/retries"
ATTEMPTS_UNCERTAIN = "attempts/uncertain"
UNCERTAIN_SPEND = "attempts/uncertain_spend"
CACHE_LOOKUPS = "cache/lookups"
ALERT_DELIVERIES = "alerts/deliveries"
WEBHOOK_DELIVERIES = "webhooks/deliveries"
CACHE_SAVED = "cache/saved"
BUDGET_SPEND = "budget/spend"
BUDGET_HELD = "budget/held"
BUDGET_REMAINING = "budget/remaining"
BUDGET_UTILIZATION = "budget/utilization"
BUDGET_FORECAST_RATIO = "budget/forecast_ratio"
BREAKER_STATE = "backend/breaker_state"
BREAKER_STRIKES = "backend/breaker_strikes"
BACKEND_WAITING = "backend/waiting"
QUEUE_DEPTH = "queue/depth"
QUEUE_OLDEST_AGE = "queue/oldest_age"
HTTP_REQUESTS = "http/requests"
HTTP_LATENCY = "http/latency"
HTTP_ERRORS = "http/errors"
EXPORTER_FAILURES = "exporter/failures"
RECORDER_DROPPED = "recorder/dropped"

# Breaker state as a gauge value (alert: state == OPEN, i.e. > 1.5).
BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN = 0, 1, 2
BREAKER_STATE_VALUES = {"closed": BREAKER_CLOSED, "half_open": BREAKER_HALF_OPEN, "open": 2}

LATENCY_BUCKETS_S = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
QUEUE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
COST_BUCKETS_USD = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100)

_JOB = ("kind", "tier", "backend", "status")
_BUDGET = ("scope", "period")


def _d(
    name: str, kind: Kind, vt: ValueType, unit: str, labels: tuple[str, ...], desc: str,
    prom: str, buckets: tuple[float, ...] = (),
) -> MetricDef:
    return MetricDef(name, kind, vt, unit, labels, desc, "orchestrator_" + prom, buckets)


C, G, D = Kind.CUMULATIVE, Kind.GAUGE, Kind.DISTRIBUTION
I64, F64, DIST = ValueType.INT64, ValueType.DOUBLE, ValueType.DISTRIBUTION

CATALOGUE: dict[str, MetricDef] = {
    m.name: m
    for m in (
        _d(JOBS_SUBMITTED, C, I64, "1", _JOB,
           "Job submissions; status accepted or refused (budget, no backend).",
           "jobs_submitted_total"),
        _d(JOBS_FINISHED, C, I64, "1", _JOB,
           "Jobs that reached a final state; status succeeded, failed or cancelled.",
           "jobs_finished_total"),
        _d(JOB_LATENCY, D, DIST, "s", _JOB,
           "Submit-to-finish time of finished jobs.", "job_latency_seconds", LATENCY_BUCKETS_S),
        _d(JOB_QUEUE_LATENCY, D, DIST, "s", ("kind", "tier"),
           "Submit-to-start time (schedule_to_start) of started jobs.",
           "job_queue_latency_seconds", QUEUE_BUCKETS_S),
        _d(JOB_COST, D, DIST, "{USD}", ("kind", "tier", "backend"),
           "Actual cost charged per settled job, USD.", "job_cost_usd", COST_BUCKETS_USD),
        _d(JOB_OVERAGE, D, DIST, "{USD}", ("kind", "tier", "backend"),
           "Per job billed above its budget hold: the amount above it (charged in full), USD.",
           "job_overage_usd", COST_BUCKETS_USD),
        _d(JOB_FAILOVERS, C, I64, "1", ("kind", "from_backend", "to_backend"),
           "Fail-overs of a job from one backend to the next.", "job_failovers_total"),
        _d(JOB_RETRIES, C, I64, "1", ("backend", "reason"),
           "Retried backend calls within one backend (429, 5xx, timeout...).",
           "job_retries_total"),
        _d(ATTEMPTS_UNCERTAIN, C, I64, "1", ("backend", "reason"),
           "Attempts whose outcome nothing could tell: the provider may have billed them.",
           "attempts_uncertain_total"),
        _d(UNCERTAIN_SPEND, C, F64, "{USD}", ("backend",),
           "Possible charges of uncertain attempts (their worst case), USD.",
           "attempts_uncertain_spend_usd_total"),
        _d(ALERT_DELIVERIES, C, I64, "1", ("channel", "outcome"),
           "Budget alert sends to a channel (webhook, slack, email); outcome delivered, "
           "retrying (a retry is due) or failed (for good: no retry left, or refused).",
           "alert_deliveries_total"),
        _d(WEBHOOK_DELIVERIES, C, I64, "1", ("outcome",),
           "Job webhook sends; outcome delivered, retrying or failed (for good).",
           "webhook_deliveries_total"),
        _d(CACHE_LOOKUPS, C, I64, "1", ("kind", "outcome"),
           "Cache-enabled submissions; outcome hit (a result at $0), coalesced (waits for an "
           "identical job in flight) or miss (runs itself).", "cache_lookups_total"),
        _d(CACHE_SAVED, C, F64, "{USD}", ("kind",),
           "What jobs served from the result cache would have cost: the cost of the job "
           "whose result they got, USD.", "cache_saved_usd_total"),
        _d(BUDGET_SPEND, G, F64, "{USD}", _BUDGET,
           "Committed spend in the current budget period, USD.", "budget_spend_usd"),
        _d(BUDGET_HELD, G, F64, "{USD}", _BUDGET,
           "Held (reserved, unsettled) amount in the current budget period, USD.",
           "budget_held_usd"),
        _d(BUDGET_REMAINING, G, F64, "{USD}", _BUDGET,
           "Limit minus committed minus held in the current budget period, USD.",
           "budget_remaining_usd"),
        _d(BUDGET_UTILIZATION, G, F64, "1", _BUDGET,
           "Committed spend divided by the limit (1.0 = limit reached).",
           "budget_utilization_ratio"),
        _d(BUDGET_FORECAST_RATIO, G, F64, "1", _BUDGET,
           "Run-rate forecast of spend at period end divided by the limit.",
           "budget_forecast_ratio"),
        _d(BREAKER_STATE, G, I64, "1", ("backend",),
           "Circuit breaker state per backend: 0 closed, 1 half open, 2 open.",
           "backend_breaker_state"),
        _d(BREAKER_STRIKES, G, I64, "1", ("backend",),
           "Consecutive backend-fault failures counted by the breaker.",
           "backend_breaker_strikes"),
        _d(BACKEND_WAITING, G, I64, "1", ("backend",),
           "Jobs waiting for one of the backend's concurrency slots.",
           "backend_waiting"),
        _d(QUEUE_DEPTH, G, I64, "1", ("queue",), "Jobs queued and not yet started.",
           "queue_depth"),
        _d(QUEUE_OLDEST_AGE, G, F64, "s", ("queue",),
           "Age of the oldest queued job, seconds (0 when the queue is empty).",
           "queue_oldest_age_seconds"),
        # HTTP requests of the API, by route *template* (``/v1/jobs/{job_id}``, never a raw
        # path: ids would make a series per job); ``unmatched`` for paths no route serves
        _d(HTTP_REQUESTS, C, I64, "1", ("method", "route", "status"),
           "HTTP requests answered by the API, by method, route template and status.",
           "http_requests_total"),
        _d(HTTP_LATENCY, D, DIST, "s", ("method", "route"),
           "Time from a request's arrival to the last byte of its answer, seconds.",
           "http_request_duration_seconds", HTTP_BUCKETS_S),
        _d(HTTP_ERRORS, C, I64, "1", ("method", "route", "status"),
           "HTTP requests answered with a 4xx or 5xx status, by route template and status.",
           "http_request_errors_total"),
        _d(EXPORTER_FAILURES, C, I64, "1", ("sink", "reason"),
           "Metric export attempts that failed (points dropped or delayed).",
           "exporter_failures_total"),
        _d(RECORDER_DROPPED, C, I64, "1", ("reason",),
           "Recording calls dropped: unknown metric, bad labels, too many series.",
           "recorder_dropped_total"),
    )
}
