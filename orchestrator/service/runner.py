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
from typing import Any

from psycopg_pool import ConnectionPool
from sqlalchemy import Engine

from orchestrator.backends.base import BackendAdapter, PollResult
from orchestrator.backends.errors import BackendError, JobFault, TransientError
from orchestrator.domain.breaker import Refusal
from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.domain.routing import RoutePlan
from orchestrator.health.store import Ticket
from orchestrator.ledger import Ledger
from orchestrator.ledger.endings import ClosingAttempt, JobEnd
from orchestrator.service.observe import JobObserver
from orchestrator.service.ports import EnqueuePort, HealthPort
from orchestrator.service.slots import SlotWaits
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit
from orchestrator.store.statement import Conn

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Next:
    poll_in_s: float | None = None  # None: the chain is over
    resume: bool = False  # the job waits for a slot: the next step is a resume (see advance)

    @property
    def done(self) -> bool:
        return self.poll_in_s is None


DONE = Next()


@dataclass(frozen=True, slots=True)
class Opened:
    """What ``_open_next`` did: opened ``attempt``; found it opened by a duplicate step; or
    found no backend that would take the job (``refused`` says why; when ``full`` names
    backends that only lacked a free slot, the job waits for one)."""

    attempt: repo.AttemptRow | None = None
    duplicate: bool = False
    refused: tuple[str, ...] = ()
    full: tuple[str, ...] = ()  # the backends that refused for want of a slot


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
        observer: JobObserver | None = None,
        enqueue: EnqueuePort | None = None,
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.catalogue = catalogue
        self.health = health
        self.adapter = adapter
        self.clock = clock
        self.poll_policy = poll
        self.observe = observer or JobObserver()
        self.slots = SlotWaits(health, enqueue, poll, lambda: self.catalogue().names)

    @property
    def db(self) -> ConnectionPool[Any]:
        """Every step's statements stand alone and commit on their own (a claim, a checkpoint,
        an ending): no BEGIN and COMMIT round trips, nothing locked between them. (Looked up
        per use: an engine disposed and used again gets a new pool.)"""
        return autocommit(self.engine)

    # -- the one step --------------------------------------------------------------------------
    def advance(self, job_id: uuid.UUID, token: uuid.UUID, *, resume: bool = False,
                priority: str = "normal", backend: str | None = None) -> Next:
        """One step. ``resume``: the step wakes a job that waited for a slot; it does nothing
        if the job has left that wait (a freed slot and its own timer can both wake it). A
        resumed job that does not wait again leaves every waiting list (``priority`` is part
        of its entry there). ``backend``: the first choice of the job's plan, named by the
        message that starts the chain (see ``_claim_and_open``)."""
        if backend is not None and not resume:
            started = self._claim_and_open(job_id, token, backend)
            if started is not None:
                return started
        nxt = self._step(job_id, token, resume)
        if resume and not nxt.resume:
            self.slots.stop_waiting(job_id, token, priority)
        return nxt

    def _claim_and_open(self, job_id: uuid.UUID, token: uuid.UUID, name: str) -> Next | None:
        """A start step's short way: a slot on the plan's first backend, then the claim and
        the attempt's checkpoint in one statement, then the backend call. None: take the long
        way (``_step``), because the backend has no slot or no longer exists, or the job was
        not there to claim (a duplicate start, a cancel, its deadline passed). A slot taken
        for nothing is given back first."""
        cat = self.catalogue()
        if name not in cat:
            return None
        ticket = self._acquire(cat.get(name))
        if not ticket.allowed:
            return None
        with self.db.connection() as conn:
            found = repo.claim_and_open(conn, job_id, token, self.clock(), name,
                                        slot=ticket.slot, probe=ticket.probe)
        if found is None:
            self.slots.released(name, Outcome.CANCELLED, probe=ticket.probe, slot=ticket.slot)
            return None
        job, attempt = found
        self.observe.job_started(job)
        return self._submit(job, attempt, token)

    def _acquire(self, backend: BackendSpec) -> Ticket:
        """A breaker ticket and concurrency slot on ``backend``, leased for its longest
        attempt plus the chain's grace."""
        return self.health.acquire(
            backend.name, max_concurrency=backend.max_concurrency,
            lease_s=backend.timeouts.start_to_close_s + self.poll_policy.grace_s,
        )

    def _step(self, job_id: uuid.UUID, token: uuid.UUID, resume: bool) -> Next:
        now = self.clock()
        opened: Opened | None = None
        attempts: list[repo.AttemptRow] = []  # a queued job has no attempts yet
        with self.db.connection() as conn:
            found = repo.claim_or_get(conn, job_id, token, now)
            if found is None:
                return DONE
            current, claimed_now = found
            claimed = current if claimed_now else None
            if claimed is not None:
                job = claimed
                if not self._past_deadline(job, now):
                    # its first attempt is checkpointed before any backend call
                    opened = self._open_next(conn, job, attempts, token)
                    if opened.full:  # back to the queue until a slot frees
                        delay = self.slots.wait(job, token, opened.full)
                        repo.requeue(conn, job_id, token, self._wake_at(delay))
                        return Next(delay, resume=True)
            else:
                if current.is_final or current.chain_token != token:
                    return DONE
                job, attempts = current, repo.attempts(conn, job_id)
        if claimed is not None:
            self.observe.job_started(claimed)
        if opened is not None:  # committed: now the backend may be called
            return self._start(job, attempts, opened, token)
        open_ = next((a for a in attempts if a.outcome is None), None)
        if resume and open_ is not None:
            return DONE  # no longer waiting: its own chain runs it
        if self._past_deadline(job, now):
            return self._deadline(job, open_)
        if open_ is None:
            return self._next_attempt(job, attempts, token, resume=resume)
        if open_.external_id is None:
            return self._submit(job, open_, token)
        return self._poll(job, open_, token)

    @staticmethod
    def _past_deadline(job: repo.JobRow, now: datetime) -> bool:
        return job.deadline_at is not None and now >= job.deadline_at

    # -- attempts ------------------------------------------------------------------------------
    def _next_attempt(
        self, job: repo.JobRow, attempts: list[repo.AttemptRow], token: uuid.UUID,
        *, resume: bool = False,
    ) -> Next:
        with self.db.connection() as conn:
            opened = self._open_next(conn, job, attempts, token)
            if opened.full:  # failing over, but every backend left is full: wait for a slot
                delay = self.slots.wait(job, token, opened.full)
                if not repo.set_wake(conn, job.id, token, self._wake_at(delay)):
                    return DONE
                return Next(delay, resume=True)
        if opened.duplicate and resume:
            return DONE  # woken twice: the other step opened the attempt and runs it
        return self._start(job, attempts, opened, token)

    def _open_next(
        self, conn: Conn, job: repo.JobRow, attempts: list[repo.AttemptRow],
        token: uuid.UUID,
    ) -> Opened:
        """Take a breaker ticket for the next untried backend of the plan and write its
        attempt row (the checkpoint before any backend call), if the chain holding
        ``token`` still runs the job."""
        plan = RoutePlan.from_quote(job.route or {})
        cat = self.catalogue()
        tried = {a.backend for a in attempts}
        refused: list[str] = []
        full: list[str] = []
        for name in plan.backends:
            if name in tried or name not in cat:
                continue
            ticket = self._acquire(cat.get(name))
            if not ticket.allowed:
                refused.append(f"{name}: {ticket.refusal}")
                if ticket.refusal is Refusal.AT_CAPACITY:
                    full.append(name)
                continue
            attempt = repo.open_attempt(
                conn, job.id, token, len(attempts) + 1, name, self.clock(),
                slot=ticket.slot, probe=ticket.probe,
            )
            if attempt is None:  # a duplicate step opened it first (let it run), or it ended
                self.slots.released(name, Outcome.CANCELLED, probe=ticket.probe, slot=ticket.slot)
                return Opened(duplicate=True)
            return Opened(attempt=attempt)
        return Opened(refused=tuple(refused), full=tuple(full))

    def _start(
        self, job: repo.JobRow, attempts: list[repo.AttemptRow], opened: Opened,
        token: uuid.UUID,
    ) -> Next:
        """After the checkpoint committed: call the backend, or end the job if none is left."""
        if opened.attempt is not None:
            if attempts:
                self.observe.failover(job, attempts[-1].backend, opened.attempt.backend,
                                      opened.attempt.number)
            return self._submit(job, opened.attempt, token)
        if opened.duplicate:
            return Next(self.poll_policy.min_s)
        last = attempts[-1] if attempts else None
        if last is not None and last.error_code:
            code, message = "all_backends_failed", (
                f"every backend in the plan failed; last: {last.backend}: {last.error_code}"
            )
        else:
            code, message = "no_eligible_backend", (
                "no backend in the plan would take the job"
                + (f" ({'; '.join(opened.refused)})" if opened.refused else "")
            )
        self._fail(job, code, message, backend=last.backend if last else None)
        return DONE

    def _submit(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        adapter = self.adapter(attempt.backend)
        spec = JobSpec.model_validate(job.spec)
        started = time.monotonic()
        try:
            sub = adapter.submit(spec, idempotency_key=f"{job.id}:{attempt.number}")
        except BackendError as exc:
            return self._attempt_failed(job, attempt, exc, token)
        if sub.result is not None and sub.result.status == "succeeded":
            # synchronous backend: its external id, the attempt's close and the settle are
            # one statement (ledger.end_job)
            latency = (time.monotonic() - started) * 1000
            self._succeed(job, attempt, sub.result, latency, external_id=sub.external_id)
            return DONE
        if sub.result is None:
            # create-then-poll: the external id and the chain's next wake in one statement; the
            # wake is refused if the job was cancelled (or revived) while we were submitting
            delay = self._poll_delay(attempt, 0.0)
            with self.db.connection() as conn:
                alive = repo.record_external_id_and_wake(
                    conn, attempt.id, sub.external_id, job.id, token, self._wake_at(delay))
            if alive:
                return Next(delay)
        else:
            with self.db.connection() as conn:
                repo.record_external_id(conn, attempt.id, sub.external_id)
        with self.db.connection() as conn:
            current = repo.get_job(conn, job.id)
        if current is None or current.is_final:  # cancelled while we were submitting
            self._cancel_at_backend(adapter, sub.external_id)
            self._close(job, attempt, "cancelled", Outcome.CANCELLED)
            return DONE
        if sub.result is None or current.chain_token != token:
            return DONE  # the sweeper gave the job a new chain, which will poll it
        latency = (time.monotonic() - started) * 1000
        return self._concluded(job, attempt, sub.result, token, latency)

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
        except TransientError as exc:  # the provider is still working; ask again later
            self.observe.retry(attempt.backend, exc.code)
            return self._schedule_poll(job, attempt, token, age)
        except BackendError as exc:
            return self._attempt_failed(job, attempt, exc, token)
        if not res.done:
            return self._schedule_poll(job, attempt, token, age)
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
            self._close(job, attempt, "failed", Outcome.JOB_FAULT, exc=exc, cost=cost)
            self._fail(job, exc.code, exc.message, backend=attempt.backend)
            return DONE
        outcome = Outcome.BACKEND_FAULT if exc.strike else Outcome.TRANSIENT
        self._close(job, attempt, "failed", outcome, exc=exc, cost=cost)
        with self.db.connection() as conn:
            attempts = repo.attempts(conn, job.id)
        return self._next_attempt(job, attempts, token)

    # -- endings -------------------------------------------------------------------------------
    def _close(
        self, job: repo.JobRow, attempt: repo.AttemptRow, status: str, outcome: Outcome, *,
        exc: BackendError | None = None, cost: int | None = None, latency_ms: float | None = None,
    ) -> bool:
        now = self.clock()
        with self.db.connection() as conn:
            closed = repo.close_attempt(
                conn, attempt.id, status, now, fault=outcome.value,
                error_code=exc.code if exc else None, error_message=exc.message if exc else None,
                cost_micros=cost,
            )
        if closed:
            self.slots.released(attempt.backend, outcome, latency_ms=latency_ms,
                           probe=attempt.probe, slot=attempt.slot)
            self.observe.attempt_ended(job, attempt, status, fault=outcome.value,
                                       error_code=exc.code if exc else None, cost_micros=cost,
                                       now=now)
        return closed

    def _succeed(
        self, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult, latency_ms: float,
        *, external_id: str | None = None,
    ) -> None:
        now = self.clock()
        cost = res.cost_micros or 0
        end = self.ledger.end_job(
            job.id, "succeeded", now, backend=attempt.backend, result={"output": res.output},
            attempt=ClosingAttempt(attempt.id, "succeeded", Outcome.SUCCESS.value, cost,
                                   external_id))
        if end is None:
            return  # a duplicate step concluded it
        self.slots.released(attempt.backend, Outcome.SUCCESS, latency_ms=latency_ms,
                            probe=attempt.probe, slot=attempt.slot)
        self.observe.attempt_ended(job, attempt, "succeeded", fault=Outcome.SUCCESS.value,
                                   cost_micros=cost, now=now)
        if end.ended:  # else it was cancelled meanwhile: only the attempt was ours to close
            self.observe.job_finished(job, "succeeded", backend=attempt.backend,
                                      charged_micros=self._charged(job, end), now=now)

    def _fail(self, job: repo.JobRow, code: str, message: str, *,
              backend: str | None = None) -> None:
        now = self.clock()
        end = self.ledger.end_job(job.id, "failed", now, error_code=code, error_message=message)
        if end is None or not end.ended:
            return
        self.observe.job_finished(job, "failed", backend=backend,
                                  charged_micros=self._charged(job, end), now=now,
                                  error_code=code)

    @staticmethod
    def _charged(job: repo.JobRow, end: JobEnd) -> int:
        """What the ending charged, after logging why it charged less than the cost."""
        if end.hold_status is not None:
            log.error("hold already %s; job finished without a charge", end.hold_status,
                      extra={"job_id": str(job.id)})
        elif end.charged_micros < end.cost_micros:
            log.error("job cost more than its hold; charging the hold",
                      extra={"job_id": str(job.id), "cost_micros": end.cost_micros,
                             "hold_micros": end.charged_micros})
        return end.charged_micros

    def _deadline(self, job: repo.JobRow, open_: repo.AttemptRow | None) -> Next:
        if open_ is not None:
            if open_.external_id is not None:
                self._cancel_at_backend(self.adapter(open_.backend), open_.external_id)
            exc = TransientError("the job's deadline passed", code="deadline_exceeded",
                                 backend=open_.backend)
            self._close(job, open_, "timeout", Outcome.CANCELLED, exc=exc)
        self._fail(job, "deadline_exceeded",
                   f"the job did not finish within its deadline of {job.spec.get('deadline_s')} s",
                   backend=open_.backend if open_ is not None else None)
        return DONE

    def cancel(self, job_id: uuid.UUID, tenant: str | None = None) -> repo.JobRow | None:
        """Cancel a live job now: final status and hold released in one statement, then the
        backend is asked to stop. Returns the job (None: not found / not the tenant's)."""
        now = self.clock()
        with self.db.connection() as conn:
            job = repo.get_job(conn, job_id)
        if job is None or (tenant is not None and job.tenant != tenant):
            return None
        if job.is_final:
            return job
        end = self.ledger.end_job(job_id, "cancelled", now, error_code="cancelled",
                                  error_message="cancelled by request")
        if end is not None and end.ended:
            with self.db.connection() as conn:
                # after the ending: no attempt opens once the job has left running
                attempts = repo.attempts(conn, job_id)
            open_ = next((a for a in attempts if a.outcome is None), None)
            if open_ is None and job.chain_token is not None:  # it may have waited for a slot
                self.slots.stop_waiting(job.id, job.chain_token, job.priority)
            self.observe.job_finished(job, "cancelled", charged_micros=self._charged(job, end),
                                      now=now, backend=open_.backend if open_ else job.backend)
            if open_ is not None:
                if open_.external_id is not None:
                    self._cancel_at_backend(self.adapter(open_.backend), open_.external_id)
                self._close(job, open_, "cancelled", Outcome.CANCELLED)
        with self.db.connection() as conn:
            return repo.get_job(conn, job_id)

    def _cancel_at_backend(self, adapter: BackendAdapter, external_id: str) -> None:
        try:
            adapter.cancel(external_id)
        except BackendError as exc:
            log.warning("cancel at backend failed", extra={"backend": adapter.name,
                                                           "error": exc.code})

    def _poll_delay(self, attempt: repo.AttemptRow, age_s: float) -> float:
        expected = self.catalogue().get(attempt.backend).expected_latency_ms
        return self.poll_policy.interval(age_s, None if expected is None else expected / 1000)

    def _wake_at(self, delay_s: float) -> datetime:
        return self.clock() + timedelta(seconds=delay_s + self.poll_policy.grace_s)

    def _schedule_poll(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID,
                       age_s: float) -> Next:
        delay = self._poll_delay(attempt, age_s)
        with self.db.connection() as conn:
            if not repo.set_wake(conn, job.id, token, self._wake_at(delay)):
                return DONE  # the sweeper gave the job a new chain; this one stops
        return Next(delay)
