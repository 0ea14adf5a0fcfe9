"""The job chain (DESIGN §3): claim → route → submit → checkpoint → poll … → settle / fail over.

``JobRunner.advance`` is the one step every task runs. It reads the job and its attempts from
PostgreSQL, does at most one backend call's worth of work, and says what should happen next
(``Next.done``, or ``Next.poll_in_s``: the seconds until the next step). A redelivered or
duplicated step is harmless: transitions are guarded, an attempt row is written before its
backend call (moving the chain's wake past the longest that call can take: its lease) and its
external id right after, and a step carrying an old chain token does nothing.

This module is the chain's own steps: the claim, the next attempt (or a wait), the
submission, and failing over. JobRunner builds and shares what it hands off, each a small
class in its own module:

* ``service.opening`` (``Opener``): the next attempt on the plan's next untried backend that
  its breaker and a slot let through, or how long the job waits for a slot, a breaker or a
  rate limit.
* ``service.watch`` (``Watcher``): polling a running attempt, and stopping one that runs
  past its ``start_to_close``.
* ``service.endings`` (``Endings``): the one ledger statement that ends a job or closes an
  attempt, and what it tells the breaker, the slot waits and the observer.
* ``service.reconcile`` (``Reconciler``): every paid call ends in the provider's word
  (``orchestrator.domain.reconcile``): a submission whose answer was lost is looked up,
  repeated where the provider's guarantee makes that safe, or closed ``uncertain`` and failed
  over.
* ``service.conclude`` (``Concluder``): a cancel or a deadline while an attempt runs keeps the
  job's hold until that attempt concludes, so what the provider billed is what the ledger
  charges.

They pass the values of ``service.attempts`` around, and call the chain back through
``ports.Chain``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool
from sqlalchemy import Engine

from orchestrator.backends.base import BackendAdapter, PollResult, Submission
from orchestrator.backends.errors import BackendError, JobFault, OutcomeUnknown
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.errors import BudgetExceeded
from orchestrator.ledger import Ledger
from orchestrator.service.attempts import (
    DONE,
    Closing,
    Next,
    Opened,
    billed,
    closing_of,
    failure,
    reference,
    unknown,
)
from orchestrator.service.cache import ResultCache
from orchestrator.service.conclude import Concluder
from orchestrator.service.endings import Endings
from orchestrator.service.failover_hold import cover_failover
from orchestrator.service.follow import Follower, Refused
from orchestrator.service.observe import JobObserver
from orchestrator.service.opening import Opener
from orchestrator.service.ports import EnqueuePort, HealthPort
from orchestrator.service.reconcile import Reconciler
from orchestrator.service.slots import SlotWaits
from orchestrator.service.watch import Watcher
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit

__all__ = ["DONE", "JobRunner", "Next"]

log = logging.getLogger(__name__)


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
        cache: ResultCache | None = None,
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
        self.opener = Opener(catalogue=catalogue, health=health, adapter=adapter, clock=clock,
                             poll=poll, slots=self.slots)
        self.endings = Endings(engine, ledger, catalogue, self.slots, self.observe, clock,
                               on_end=cache.wake if cache is not None else None)
        self.follower = Follower(ledger, self.observe, poll, clock)
        self.reconciler = Reconciler(self, engine, catalogue, adapter, clock, poll,
                                     self.observe)
        self.concluder = Concluder(
            self, reconciler=self.reconciler, endings=self.endings, engine=engine,
            ledger=ledger, catalogue=catalogue, adapter=adapter, clock=clock, poll=poll,
            observer=self.observe, slots=self.slots)
        self.watcher = Watcher(
            self, engine=engine, catalogue=catalogue, adapter=adapter, clock=clock, poll=poll,
            observer=self.observe, concluder=self.concluder, reconciler=self.reconciler)

    @property
    def db(self) -> ConnectionPool[Any]:
        """Every step's statements stand alone and commit on their own (a claim, a checkpoint,
        an ending): no BEGIN and COMMIT round trips, nothing locked between them. (Looked up
        per use: an engine disposed and used again gets a new pool.)"""
        return autocommit(self.engine)

    def cancel(self, job_id: uuid.UUID, tenant: str | None = None) -> repo.JobRow | None:
        """Cancel a live job now (``Concluder.cancel``: its hold is kept while an attempt may
        still be billed). Returns the job (None: not found / not the tenant's)."""
        return self.concluder.cancel(job_id, tenant)

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
        ticket = self.opener.acquire(cat.get(name))
        if not ticket.allowed:
            return None
        try:
            with self.db.connection() as conn:
                found = repo.claim_and_open(conn, job_id, token, self.clock(), name,
                                            lease_s=self._lease_s(name), slot=ticket.slot,
                                            probe=ticket.probe)
        except BaseException:
            # PostgreSQL down: the task is retried for as long as that lasts, each try
            # taking a ticket in Redis first. Kept, each would hold a slot for the whole
            # attempt's lease and a half-open breaker's probe for its lease.
            self.opener.give_back(name, ticket)
            raise
        if found is None:
            self.slots.released(name, Outcome.CANCELLED, probe=ticket.probe, slot=ticket.slot)
            return None
        job, attempt = found
        self.observe.job_started(job)
        return self._submit(job, attempt, token)

    def _lease_s(self, backend: str) -> float:
        return self.opener.lease_s(backend)

    def _step(self, job_id: uuid.UUID, token: uuid.UUID, resume: bool) -> Next:
        now = self.clock()
        opened: Opened | None = None
        attempts: list[repo.AttemptRow] = []  # a queued job has no attempts yet
        leader: repo.JobRow | None = None
        refused: Refused | None = None
        with self.db.connection() as conn:
            found = repo.claim_or_get(conn, job_id, token, now)
            if found is None:
                return DONE
            current, claimed_now = found
            if (current.cache_leader is not None and current.chain_token == token
                    and not current.is_final and not self._past_deadline(current, now)):
                # it waits for an identical job in flight (service.follow)
                verdict = self.follower.check(conn, current, token)
                if isinstance(verdict, Next):
                    return verdict
                if isinstance(verdict, Refused):
                    refused = verdict
                elif verdict is not None:
                    leader = verdict
                else:  # it runs itself: as it is now (unlinked, its estimate raised)
                    current = repo.get_job(conn, job_id) or current
                current = replace(current, cache_leader=None)
            # a follower taking its leader's result is ended below, off this connection
            claimed = current if claimed_now and leader is None and refused is None else None
            if claimed is not None:
                job = claimed
                if not self._past_deadline(job, now):
                    # its first attempt is checkpointed before any backend call
                    opened = self.opener.open_next(conn, job, attempts, token)
                    if opened.full:  # back to the queue until a slot frees
                        delay = self.slots.wait(job, token, opened.full)
                        repo.requeue(conn, job_id, token, delay + self.poll_policy.grace_s)
                        return Next(delay, resume=True)
                    wait = self.opener.breaker_wait(job, opened, now)
                    if wait is not None:  # back to the queue until a breaker lets it by
                        repo.requeue(conn, job_id, token, wait + self.poll_policy.grace_s)
                        return Next(wait)
            elif leader is None and refused is None:
                if current.chain_token != token or (current.is_final and current.wake_at is None):
                    return DONE
                job, attempts = current, repo.attempts(conn, job_id)
        if leader is not None:
            return self.follower.adopt(current, leader)
        if refused is not None:  # a hit left to run itself, and no budget for it
            self.endings.fail(current, BudgetExceeded.code, refused.message)
            return DONE
        if claimed is not None:
            self.observe.job_started(claimed)
        if opened is not None:  # committed: now the backend may be called
            return self._start(job, attempts, opened, token)
        open_ = next((a for a in attempts if a.outcome is None), None)
        if open_ is not None and open_.probe and open_.backend in self.catalogue():
            # the breaker's probe runs on: no other caller probes until it reports (a
            # probe job may run far longer than the lease meant for a probe gone silent)
            self.health.renew_probe(open_.backend, open_.slot)
        if job.is_final:  # it ended (a cancel, its deadline) while an attempt could be billed
            return self.concluder.conclude(job, open_, token)
        if resume and open_ is not None:
            return DONE  # no longer waiting: its own chain runs it
        if open_ is not None and open_.backend not in self.catalogue():
            return self.reconciler.backend_removed(job, open_, token)
        if self._past_deadline(job, now):
            return self.concluder.deadline(job, open_, token)
        if open_ is None:
            return self._next_attempt(job, attempts, token, resume=resume)
        if open_.external_id is None:
            return self.reconciler.reconcile(job, open_, token)
        return self.watcher.look(job, open_, token)

    @staticmethod
    def _past_deadline(job: repo.JobRow, now: datetime) -> bool:
        return job.deadline_at is not None and now >= job.deadline_at

    # -- attempts ------------------------------------------------------------------------------
    def _next_attempt(
        self, job: repo.JobRow, attempts: list[repo.AttemptRow], token: uuid.UUID,
        *, resume: bool = False,
    ) -> Next:
        refused = cover_failover(self.ledger, self.opener, job, attempts)
        if refused is not None:  # a budget cannot take the failover's worst case
            self.endings.fail(job, BudgetExceeded.code, refused, backend=attempts[-1].backend)
            return DONE
        with self.db.connection() as conn:
            opened = self.opener.open_next(conn, job, attempts, token)
            if opened.full:  # failing over, but every backend left is full: wait for a slot
                delay = self.slots.wait(job, token, opened.full)
                if not repo.set_wake(conn, job.id, token, delay + self.poll_policy.grace_s):
                    return DONE
                return Next(delay, resume=True)
            wait = self.opener.breaker_wait(job, opened, self.clock())
            if wait is not None:
                if not repo.set_wake(conn, job.id, token, wait + self.poll_policy.grace_s):
                    return DONE
                return Next(wait)
        if opened.duplicate and resume:
            return DONE  # woken twice: the other step opened the attempt and runs it
        return self._start(job, attempts, opened, token)

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
            code = "backend_removed" if last.error_code == "backend_removed" else (
                "all_backends_failed")
            message = f"every backend in the plan failed; last: {last.backend}: " + (
                f"{last.error_code}") + (
                f"; not tried: {'; '.join(opened.refused)}" if opened.refused else "")
        else:
            code, message = "no_eligible_backend", (
                "no backend in the plan would take the job"
                + (f" ({'; '.join(opened.refused)})" if opened.refused else "")
            )
        self.endings.fail(job, code, message, backend=last.backend if last else None)
        return DONE

    def _submit(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        adapter = self.adapter(attempt.backend)
        spec = JobSpec.model_validate(job.spec)
        started = time.monotonic()
        try:
            sub = adapter.submit(spec, idempotency_key=reference(attempt))
        except OutcomeUnknown as exc:
            log.warning("submission answer lost; asking the provider", extra={
                "job_id": str(job.id), "backend": attempt.backend, "error": exc.code,
                "cause": exc.details.get("cause")})
            return self.reconciler.reconcile(
                job, attempt, token, after_call=True,
                answered=exc.details.get("cause") == "malformed_response")
        except BackendError as exc:
            return self._attempt_failed(job, attempt, exc, token)
        return self._submitted(job, attempt, sub, token, (time.monotonic() - started) * 1000)

    def _submitted(self, job: repo.JobRow, attempt: repo.AttemptRow, sub: Submission,
                   token: uuid.UUID, latency_ms: float, *, found: bool = False) -> Next:
        """The provider named the attempt's work (a submission's answer, or, ``found``, a
        lookup): record its external id, then conclude it if it is done, or poll it."""
        res = sub.result
        if found and res is not None and res.done:
            # a lookup's finished prediction is adopted by the ending's own statement: asked
            # first whether it is another attempt's (a create's finished answer is not: a
            # synchronous provider may repeat an id)
            with self.db.connection() as conn:
                held = repo.external_id_held(conn, attempt.id, attempt.backend,
                                             sub.external_id)
            if held:
                return self._held_elsewhere(job, attempt, token, found=True)
        if res is not None and res.status == "succeeded":
            # its external id, the attempt's close and the settle are one statement
            self.endings.succeed(job, attempt, res, latency_ms, external_id=sub.external_id)
            return DONE
        if res is None or not res.done:  # running: the next step polls it
            delay = self.watcher.by_deadline(job, self._poll_delay(attempt, 0.0))
            with self.db.connection() as conn:
                checkpoint = repo.record_external_id_and_wake(
                    conn, attempt.id, attempt.backend, sub.external_id, job.id, token,
                    delay + self.poll_policy.grace_s)
            if not checkpoint.recorded:
                return self._held_elsewhere(job, attempt, token, found=found)
            if checkpoint.alive:
                return Next(delay)
        else:
            with self.db.connection() as conn:
                repo.record_external_id(conn, attempt.id, sub.external_id)
        with self.db.connection() as conn:
            current = repo.get_job(conn, job.id)
        if current is None:
            return DONE
        known = replace(attempt, external_id=sub.external_id)
        if current.is_final:  # it ended (a cancel, its deadline) while we were submitting
            if res is not None and res.done:  # a synchronous call's failure, billed
                self.endings.end_concluded(current, known,
                                           closing_of(self.catalogue(), current, known, res))
                return DONE
            return self.concluder.conclude(current, known, token)
        if res is None or not res.done or current.chain_token != token:
            return DONE  # the sweeper gave the job a new chain, which will poll it
        return self._concluded(job, known, res, token, latency_ms)

    def _held_elsewhere(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID,
                        *, found: bool) -> Next:
        """The provider named, as this attempt's, work another attempt on the backend already
        holds: not ours to poll, deliver or pay for. Its answer is unreadable, as one with no
        id would be: our own work may exist, so the provider is asked (reconciliation); when
        its lookup names the other's work again, nothing can tell, and it is uncertain."""
        log.warning("the provider named another attempt's work as this one's", extra={
            "job_id": str(job.id), "backend": attempt.backend, "error": "external_id_held",
            "lookup": found})
        if found:
            return self.reconciler.uncertain(job, attempt, token, unknown(attempt))
        return self.reconciler.reconcile(job, attempt, token, after_call=True, answered=True)

    def _concluded(
        self, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult, token: uuid.UUID,
        latency_ms: float, *, error: BackendError | None = None,
    ) -> Next:
        if res.status == "succeeded":
            self.endings.succeed(job, attempt, res, latency_ms)
            return DONE
        err = error or failure(attempt, res)
        if res.unpriced:  # billed, with no bill in the answer: its worst case, marked so
            cost = billed(self.catalogue(), job, attempt, res)
            return self._attempt_failed(job, attempt, err, token, cost=cost, possible=cost)
        return self._attempt_failed(job, attempt, err, token, cost=res.cost_micros)

    def _attempt_failed(
        self, job: repo.JobRow, attempt: repo.AttemptRow, exc: BackendError, token: uuid.UUID,
        *, cost: int | None = None, possible: int | None = None,
    ) -> Next:
        if isinstance(exc, JobFault):
            closing = Closing("failed", Outcome.JOB_FAULT, cost, exc, possible=possible)
            self.endings.fail(job, exc.code, exc.message, backend=attempt.backend,
                              closing=(attempt, closing))
            return DONE
        outcome = Outcome.BACKEND_FAULT if exc.strike else Outcome.TRANSIENT
        status = "timeout" if exc.code == "start_to_close_timeout" else "failed"
        return self._failover(job, attempt, token,
                              Closing(status, outcome, cost, exc, possible=possible))

    def _failover(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID,
                  closing: Closing) -> Next:
        self.endings.close(job, attempt, closing)
        with self.db.connection() as conn:
            attempts = repo.attempts(conn, job.id)
            closed = next(a for a in attempts if a.id == attempt.id)  # as the close wrote it
            delay = self.opener.rate_limit_wait(job, closed, attempts, closing.error)
            if delay is not None:
                if not repo.set_wake(conn, job.id, token, delay + self.poll_policy.grace_s):
                    return DONE
                return Next(delay)
        return self._next_attempt(job, attempts, token)

    def _poll_delay(self, attempt: repo.AttemptRow, age_s: float) -> float:
        return self.watcher.delay(attempt, age_s)
