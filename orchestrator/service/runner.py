"""The job chain (DESIGN §3): claim → route → submit → checkpoint → poll … → settle / fail over.

``JobRunner.advance`` is the one step every task runs. It reads the job and its attempts from
PostgreSQL, does at most one backend call's worth of work, and says what should happen next
(``Next.done`` or ``Next.poll_in(seconds)``). A redelivered or duplicated step is harmless:
transitions are guarded, an attempt row is written before its backend call and its external id
right after, and a re-submission reuses the attempt's idempotency key, so a backend never gets
(or bills) one attempt twice. A step carrying an old chain token does nothing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from orchestrator.backends.base import BackendAdapter, PollResult
from orchestrator.backends.errors import BackendError, JobFault, TransientError
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.routing import RoutePlan
from orchestrator.errors import HoldNotActive
from orchestrator.ledger import Ledger
from orchestrator.service.ports import HealthPort
from orchestrator.store import jobs as repo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Next:
    poll_in_s: float | None = None  # None: the chain is over

    @property
    def done(self) -> bool:
        return self.poll_in_s is None


DONE = Next()


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How often to poll a running attempt: every age/10 s, clamped to [min_s, max_s]."""

    min_s: float = 1.0
    max_s: float = 10.0
    grace_s: float = 60.0  # a chain silent this long past its next step is revived

    def interval(self, age_s: float) -> float:
        return min(self.max_s, max(self.min_s, age_s / 10))


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        catalogue: Callable[[], Catalogue],
        health: HealthPort,
        adapter: Callable[[str], BackendAdapter],
        clock: Callable[[], datetime],
        poll: PollPolicy = PollPolicy(),
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.catalogue = catalogue
        self.health = health
        self.adapter = adapter
        self.clock = clock
        self.poll_policy = poll

    # -- the one step --------------------------------------------------------------------------
    def advance(self, job_id: uuid.UUID, token: uuid.UUID) -> Next:
        now = self.clock()
        with self.engine.begin() as tx:
            job = repo.get_job(tx, job_id)
            if job is None or job.is_final or job.chain_token != token:
                return DONE
            if job.status == "queued":
                repo.claim(tx, job_id, now)
            attempts = repo.attempts(tx, job_id)
        open_ = next((a for a in attempts if a.outcome is None), None)
        if job.deadline_at is not None and now >= job.deadline_at:
            return self._deadline(job, open_)
        if open_ is None:
            return self._next_attempt(job, attempts, token)
        if open_.external_id is None:
            return self._submit(job, open_, token)
        return self._poll(job, open_, token)

    # -- attempts ------------------------------------------------------------------------------
    def _next_attempt(
        self, job: repo.JobRow, attempts: list[repo.AttemptRow], token: uuid.UUID
    ) -> Next:
        plan = RoutePlan.from_quote(job.route or {})
        cat = self.catalogue()
        tried = {a.backend for a in attempts}
        refused: list[str] = []
        for name in plan.backends:
            if name in tried or name not in cat:
                continue
            backend = cat.get(name)
            ticket = self.health.acquire(
                name, max_concurrency=backend.max_concurrency,
                lease_s=backend.timeouts.start_to_close_s + self.poll_policy.grace_s,
            )
            if not ticket.allowed:
                refused.append(f"{name}: {ticket.refusal}")
                continue
            with self.engine.begin() as tx:
                attempt = repo.open_attempt(
                    tx, job.id, len(attempts) + 1, name, self.clock(),
                    slot=ticket.slot, probe=ticket.probe,
                )
            if attempt is None:  # a duplicate step opened it first; let it run
                self.health.record(name, Outcome.CANCELLED, probe=ticket.probe, slot=ticket.slot)
                return Next(self.poll_policy.min_s)
            return self._submit(job, attempt, token)
        last = attempts[-1] if attempts else None
        if last is not None and last.error_code:
            code, message = "all_backends_failed", (
                f"every backend in the plan failed; last: {last.backend}: {last.error_code}"
            )
        else:
            code, message = "no_eligible_backend", (
                "no backend in the plan would take the job"
                + (f" ({'; '.join(refused)})" if refused else "")
            )
        self._fail(job, code, message)
        return DONE

    def _submit(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        adapter = self.adapter(attempt.backend)
        spec = JobSpec.model_validate(job.spec)
        started = time.monotonic()
        try:
            sub = adapter.submit(spec, idempotency_key=f"{job.id}:{attempt.number}")
        except BackendError as exc:
            return self._attempt_failed(job, attempt, exc, token)
        with self.engine.begin() as tx:
            repo.record_external_id(tx, attempt.id, sub.external_id)
            current = repo.get_job(tx, job.id)
        if current is not None and current.is_final:  # cancelled while we were submitting
            self._cancel_at_backend(adapter, sub.external_id)
            self._close(attempt, "cancelled", Outcome.CANCELLED)
            return DONE
        if sub.result is not None:
            latency = (time.monotonic() - started) * 1000
            return self._concluded(job, attempt, sub.result, token, latency)
        return self._schedule_poll(job, token, 0.0)

    def _poll(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        backend = self.catalogue().get(attempt.backend)
        adapter = self.adapter(attempt.backend)
        age = (self.clock() - attempt.started_at).total_seconds()
        assert attempt.external_id is not None
        if age > backend.timeouts.start_to_close_s:
            self._cancel_at_backend(adapter, attempt.external_id)
            timeout = TransientError(
                f"attempt on {attempt.backend} ran past start_to_close "
                f"({backend.timeouts.start_to_close_s:.0f} s)",
                code="start_to_close_timeout", backend=attempt.backend,
            )
            return self._attempt_failed(job, attempt, timeout, token)
        try:
            res = adapter.poll(attempt.external_id)
        except TransientError:  # the provider is still working; ask again later
            return self._schedule_poll(job, token, age)
        except BackendError as exc:
            return self._attempt_failed(job, attempt, exc, token)
        if not res.done:
            return self._schedule_poll(job, token, age)
        return self._concluded(job, attempt, res, token, age * 1000)

    def _concluded(
        self, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult, token: uuid.UUID,
        latency_ms: float,
    ) -> Next:
        if res.status == "succeeded":
            self._succeed(job, attempt, res, latency_ms)
            return DONE
        if res.status == "cancelled":
            err: BackendError = TransientError(
                f"{attempt.backend} cancelled the job", code="cancelled_by_backend",
                backend=attempt.backend,
            )
        else:
            err = res.error or TransientError(
                f"{attempt.backend} reported failure", code="prediction_failed",
                backend=attempt.backend,
            )
        return self._attempt_failed(job, attempt, err, token, cost=res.cost_micros)

    def _attempt_failed(
        self, job: repo.JobRow, attempt: repo.AttemptRow, exc: BackendError, token: uuid.UUID,
        *, cost: int | None = None,
    ) -> Next:
        if isinstance(exc, JobFault):
            self._close(attempt, "failed", Outcome.JOB_FAULT, exc=exc, cost=cost)
            self._fail(job, exc.code, exc.message)
            return DONE
        outcome = Outcome.BACKEND_FAULT if exc.strike else Outcome.TRANSIENT
        self._close(attempt, "failed", outcome, exc=exc, cost=cost)
        log.info("attempt failed; failing over", extra={
            "job_id": str(job.id), "backend": attempt.backend, "error": exc.code})
        with self.engine.connect() as conn:
            attempts = repo.attempts(conn, job.id)
        return self._next_attempt(job, attempts, token)

    # -- endings -------------------------------------------------------------------------------
    def _close(
        self, attempt: repo.AttemptRow, status: str, outcome: Outcome, *,
        exc: BackendError | None = None, cost: int | None = None, latency_ms: float | None = None,
    ) -> bool:
        with self.engine.begin() as tx:
            closed = repo.close_attempt(
                tx, attempt.id, status, self.clock(), fault=outcome.value,
                error_code=exc.code if exc else None, error_message=exc.message if exc else None,
                cost_micros=cost,
            )
        if closed:
            self.health.record(attempt.backend, outcome, latency_ms=latency_ms,
                               probe=attempt.probe, slot=attempt.slot)
        return closed

    def _succeed(
        self, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult, latency_ms: float
    ) -> None:
        now = self.clock()
        cost = res.cost_micros or 0
        with self.engine.begin() as tx:
            if not repo.close_attempt(tx, attempt.id, "succeeded", now,
                                      fault=Outcome.SUCCESS.value, cost_micros=cost):
                return  # a duplicate step concluded it
            total = cost + sum(
                a.cost_micros or 0 for a in repo.attempts(tx, job.id) if a.id != attempt.id
            )
            if not repo.finish(tx, job.id, "succeeded", now, backend=attempt.backend,
                               cost_micros=total, result={"output": res.output}):
                return
            self._charge(tx, job, total, settle=True)
        self.health.record(attempt.backend, Outcome.SUCCESS, latency_ms=latency_ms,
                           probe=attempt.probe, slot=attempt.slot)

    def _fail(self, job: repo.JobRow, code: str, message: str) -> None:
        now = self.clock()
        with self.engine.begin() as tx:
            total = sum(a.cost_micros or 0 for a in repo.attempts(tx, job.id))
            if repo.finish(tx, job.id, "failed", now, cost_micros=total, error_code=code,
                           error_message=message):
                self._charge(tx, job, total, settle=False)

    def _charge(self, tx: Connection, job: repo.JobRow, total: int, *, settle: bool) -> None:
        charge = min(total, job.estimated_cost_micros)
        if charge < total:
            log.error("job cost more than its hold; charging the hold",
                      extra={"job_id": str(job.id), "cost_micros": total,
                             "hold_micros": job.estimated_cost_micros})
        try:
            if settle:
                self.ledger.settle(job.id, charge, conn=tx)
            else:
                self.ledger.release(job.id, charge_micros=charge, conn=tx)
        except HoldNotActive as exc:
            log.error("hold already %s; job finished without a charge", exc.status,
                      extra={"job_id": str(job.id)})

    def _deadline(self, job: repo.JobRow, open_: repo.AttemptRow | None) -> Next:
        if open_ is not None:
            if open_.external_id is not None:
                self._cancel_at_backend(self.adapter(open_.backend), open_.external_id)
            exc = TransientError("the job's deadline passed", code="deadline_exceeded",
                                 backend=open_.backend)
            self._close(open_, "timeout", Outcome.CANCELLED, exc=exc)
        self._fail(job, "deadline_exceeded",
                   f"the job did not finish within its deadline of {job.spec.get('deadline_s')} s")
        return DONE

    def cancel(self, job_id: uuid.UUID, tenant: str | None = None) -> repo.JobRow | None:
        """Cancel a live job now: final status and hold released in one transaction, then the
        backend is asked to stop. Returns the job (None: not found / not the tenant's)."""
        now = self.clock()
        with self.engine.begin() as tx:
            job = repo.get_job(tx, job_id, for_update=True)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            if job.is_final:
                return job
            attempts = repo.attempts(tx, job_id)
            total = sum(a.cost_micros or 0 for a in attempts)
            repo.finish(tx, job_id, "cancelled", now, cost_micros=total,
                        error_code="cancelled", error_message="cancelled by request")
            self._charge(tx, job, total, settle=False)
        open_ = next((a for a in attempts if a.outcome is None), None)
        if open_ is not None:
            if open_.external_id is not None:
                self._cancel_at_backend(self.adapter(open_.backend), open_.external_id)
            self._close(open_, "cancelled", Outcome.CANCELLED)
        with self.engine.connect() as conn:
            return repo.get_job(conn, job_id)

    def _cancel_at_backend(self, adapter: BackendAdapter, external_id: str) -> None:
        try:
            adapter.cancel(external_id)
        except BackendError as exc:
            log.warning("cancel at backend failed", extra={"backend": adapter.name,
                                                           "error": exc.code})

    def _schedule_poll(self, job: repo.JobRow, token: uuid.UUID, age_s: float) -> Next:
        delay = self.poll_policy.interval(age_s)
        wake = self.clock() + timedelta(seconds=delay + self.poll_policy.grace_s)
        with self.engine.begin() as tx:
            if not repo.set_wake(tx, job.id, token, wake):
                return DONE  # the sweeper gave the job a new chain; this one stops
        return Next(delay)
