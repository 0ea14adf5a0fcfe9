"""What the job chain tells the outside world: metrics (DESIGN §7) and structured log events.

:class:`JobObserver` is injected into :class:`~orchestrator.service.runner.JobRunner`; the
runner calls it at the few moments that matter (job started, attempt ended, fail-over, job
finished, poll retried, a bill above the job's hold) and it turns each into the catalogue's
metrics and one JSON log event.
Recording is in memory (the recorder's sinks export from their own threads), and no method of
an observer ever raises into the runner.

:func:`publish_gauges` sets the periodic gauges (budgets, breakers, queues); beat runs it every
15 s through the ``orchestrator.publish_gauges`` task. Submissions are counted by
``Submitter.submit`` through :func:`record_submission`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection, text

from orchestrator.domain.breaker import shown_status
from orchestrator.domain.forecast import forecast_micros
from orchestrator.ledger.budgets import list_budgets
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import Recorder, get_recorder
from orchestrator.service.ports import HealthPort
from orchestrator.store.jobs import AttemptRow, JobRow

log = logging.getLogger("orchestrator.jobs")
P = ParamSpec("P")
R = TypeVar("R")
NONE = "none"  # label value when a job ended on no backend


def _never_raises(fn: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.debug("observer %s failed", fn.__name__, exc_info=True)

    return wrapper


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class JobObserver:
    """Metrics and log events of the job chain. ``recorder`` defaults to the process-wide one."""

    def __init__(self, recorder: Recorder | None = None, logger: logging.Logger = log) -> None:
        self._recorder = recorder
        self.log = logger

    @property
    def recorder(self) -> Recorder:
        return self._recorder or get_recorder()

    @_never_raises
    def job_started(self, job: JobRow) -> None:
        """A worker claimed a queued job: submit-to-start (schedule_to_start) latency."""
        wait = _seconds(job.created_at, job.started_at)
        if wait is not None:
            self.recorder.distribution(m.JOB_QUEUE_LATENCY, wait, kind=job.kind, tier=job.tier)
        self.log.info("job started", extra={
            "event": "job_started", "job_id": str(job.id), "tenant": job.tenant,
            "kind": job.kind, "tier": job.tier, "queue_ms": _ms(wait)})

    @_never_raises
    def attempt_ended(self, job: JobRow, attempt: AttemptRow, status: str, *, fault: str,
                      error_code: str | None = None, cost_micros: int | None = None,
                      now: datetime | None = None) -> None:
        """One event per attempt outcome (succeeded, failed, cancelled, timeout)."""
        self.log.log(logging.INFO if status == "succeeded" else logging.WARNING,
                     "attempt %s", status, extra={
                         "event": "attempt_ended", "job_id": str(job.id), "tenant": job.tenant,
                         "backend": attempt.backend, "attempt": attempt.number,
                         "outcome": status, "fault": fault, "error_code": error_code,
                         "cost_micros": cost_micros,
                         "duration_ms": _ms(_seconds(attempt.started_at, now))})

    @_never_raises
    def uncertain(self, job: JobRow, attempt: AttemptRow, reason: str,
                  possible_micros: int) -> None:
        """An attempt closed without its outcome known: the provider may have billed up to
        ``possible_micros`` for it, and nothing we can ask will say (DESIGN: reconcile)."""
        self.recorder.counter(m.ATTEMPTS_UNCERTAIN, 1, backend=attempt.backend, reason=reason)
        self.recorder.counter(m.UNCERTAIN_SPEND, possible_micros / 1_000_000,
                              backend=attempt.backend)
        self.log.warning("attempt outcome uncertain: the provider may have billed it", extra={
            "event": "attempt_uncertain", "job_id": str(job.id), "tenant": job.tenant,
            "backend": attempt.backend, "attempt": attempt.number, "error_code": reason,
            "possible_cost_micros": possible_micros})

    @_never_raises
    def concluded(self, job: JobRow, *, backend: str | None, charged_micros: int) -> None:
        """An attempt that outlived its job's end (a cancel, a deadline) concluded, and the
        job's hold was finished with what the provider billed."""
        if charged_micros > 0:
            self.recorder.distribution(m.JOB_COST, charged_micros / 1_000_000, kind=job.kind,
                                       tier=job.tier, backend=backend or NONE)
        self.log.info("job charged after its end", extra={
            "event": "job_concluded", "job_id": str(job.id), "tenant": job.tenant,
            "backend": backend or NONE, "outcome": job.status, "cost_micros": charged_micros})

    @_never_raises
    def retry(self, backend: str, reason: str) -> None:
        """A transient error on ``backend`` that will be retried on the same backend."""
        self.recorder.counter(m.JOB_RETRIES, 1, backend=backend, reason=reason)

    @_never_raises
    def failover(self, job: JobRow, from_backend: str, to_backend: str, attempt: int) -> None:
        self.recorder.counter(m.JOB_FAILOVERS, 1, kind=job.kind, from_backend=from_backend,
                              to_backend=to_backend)
        self.log.info("failing over", extra={
            "event": "failover", "job_id": str(job.id), "tenant": job.tenant,
            "from_backend": from_backend, "backend": to_backend, "attempt": attempt})

    @_never_raises
    def job_finished(self, job: JobRow, status: str, *, backend: str | None,
                     charged_micros: int, now: datetime, error_code: str | None = None) -> None:
        """A job reached its final state (the transition committed): counts, latency, cost."""
        backend = backend or NONE
        labels = {"kind": job.kind, "tier": job.tier, "backend": backend, "status": status}
        self.recorder.counter(m.JOBS_FINISHED, 1, **labels)
        latency = _seconds(job.created_at, now)
        if latency is not None:
            self.recorder.distribution(m.JOB_LATENCY, latency, **labels)
        if status == "succeeded" or charged_micros > 0:
            self.recorder.distribution(m.JOB_COST, charged_micros / 1_000_000, kind=job.kind,
                                       tier=job.tier, backend=backend)
        self.log.log(logging.INFO if status == "succeeded" else logging.WARNING,
                     "job %s", status, extra={
                         "event": "job_finished", "job_id": str(job.id), "tenant": job.tenant,
                         "kind": job.kind, "tier": job.tier, "backend": backend,
                         "outcome": status, "error_code": error_code,
                         "cost_micros": charged_micros, "duration_ms": _ms(latency),
                         "queue_ms": _ms(_seconds(job.created_at, job.started_at))})


    @_never_raises
    def overage(self, job: JobRow, backend: str | None, overage_micros: int, *,
                charged_micros: int | None = None, hold_micros: int | None = None) -> None:
        """The job's bill went ``overage_micros`` past its hold and was charged in full
        (``JobEnd.overage_micros``): one warning (no prompt: amounts and ids only) and one
        sample of ``jobs/overage``."""
        if overage_micros <= 0:
            return
        backend = backend or NONE
        self.recorder.distribution(m.JOB_OVERAGE, overage_micros / 1_000_000, kind=job.kind,
                                   tier=job.tier, backend=backend)
        hold = hold_micros if hold_micros is not None else job.estimated_cost_micros
        self.log.warning("job billed above its hold; charged in full", extra={
            "event": "job_overage", "job_id": str(job.id), "tenant": job.tenant,
            "kind": job.kind, "tier": job.tier, "backend": backend,
            "hold_micros": hold, "cost_micros": charged_micros,
            "overage_micros": overage_micros})


class _Spec(Protocol):
    @property
    def kind(self) -> Any: ...

    @property
    def tier(self) -> Any: ...


def record_submission(spec: _Spec, status: str, backend: str | None = None,
                      recorder: Recorder | None = None) -> None:
    """Count one submission (``jobs/submitted``) as ``accepted`` or the refusal's error code;
    never raises."""
    try:
        (recorder or get_recorder()).counter(
            m.JOBS_SUBMITTED, 1, kind=str(getattr(spec.kind, "value", spec.kind)),
            tier=str(getattr(spec.tier, "value", spec.tier)), backend=backend or NONE,
            status=status)
    except Exception:
        log.debug("recording a submission failed", exc_info=True)


# -- periodic gauges ---------------------------------------------------------------------------

_OLDEST_QUEUED = text(
    "SELECT COALESCE(spec->>'priority', 'normal') AS priority, min(created_at) AS oldest "
    "FROM jobs WHERE status = 'queued' GROUP BY 1"
)
# kombu's Redis transport keeps a queue's messages in the list named like the queue, plus one
# list per priority step ("<queue>\x06\x16<step>") when message priorities are used.
_PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}\x06\x16{p}" for p in _PRIORITY_STEPS)]


class _Redis(Protocol):
    def pipeline(self, transaction: bool = ...) -> Any: ...


def publish_gauges(conn: Connection, redis: _Redis, health: HealthPort,
                   backends: Iterable[str], queues: Iterable[str], now: datetime,
                   queue_for: Callable[[str], str], recorder: Recorder | None = None) -> int:
    """Set every periodic gauge once; returns how many were set. Budgets of the current
    period, breaker state, strikes and jobs waiting for a slot per backend, depth per Celery
    queue (Redis LLEN) and the age of the oldest queued job per queue (PostgreSQL, the source
    of truth)."""
    rec = recorder or get_recorder()
    n = 0
    for b in list_budgets(conn, now=now):
        labels = {"scope": b.scope, "period": b.period}
        rec.gauge(m.BUDGET_SPEND, b.committed_micros / 1e6, **labels)
        rec.gauge(m.BUDGET_HELD, b.held_micros / 1e6, **labels)
        rec.gauge(m.BUDGET_REMAINING, b.remaining_micros / 1e6, **labels)
        util = b.committed_micros / b.limit_micros if b.limit_micros else float(
            b.committed_micros > 0)
        rec.gauge(m.BUDGET_UTILIZATION, util, **labels)
        n += 4
        # the run-rate projection to the period end over the limit: the alert policy
        # "budget forecast overrun" reads it (none for a `total` budget or too early to tell)
        forecast = forecast_micros(b.committed_micros, b.period, now)
        if forecast is not None and b.limit_micros:
            rec.gauge(m.BUDGET_FORECAST_RATIO, forecast / b.limit_micros, **labels)
            n += 1
    clock = getattr(health, "clock", None)
    t = float(clock()) if callable(clock) else now.timestamp()
    for name, h in health.snapshot(tuple(backends)).items():
        state = m.BREAKER_STATE_VALUES[shown_status(h.breaker, t).value]
        rec.gauge(m.BREAKER_STATE, state, backend=name)
        rec.gauge(m.BREAKER_STRIKES, h.breaker.strikes, backend=name)
        rec.gauge(m.BACKEND_WAITING, h.waiting, backend=name)
        n += 3
    queues = tuple(queues)
    pipe = redis.pipeline(transaction=False)
    for q in queues:
        for key in queue_keys(q):
            pipe.llen(key)
    lengths = pipe.execute()
    per = len(_PRIORITY_STEPS) + 1
    oldest = {queue_for(str(r.priority)): r.oldest for r in conn.execute(_OLDEST_QUEUED)}
    for i, q in enumerate(queues):
        rec.gauge(m.QUEUE_DEPTH, int(sum(lengths[i * per:(i + 1) * per])), queue=q)
        age = _seconds(oldest.get(q), now)
        rec.gauge(m.QUEUE_OLDEST_AGE, age or 0.0, queue=q)
        n += 2
    return n
