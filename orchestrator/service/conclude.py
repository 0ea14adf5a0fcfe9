"""A job's end while an attempt may still be billed: a cancel, its deadline, and the conclusion
of the attempt that outlived it.

A cancel ends the job at once, and a deadline step fails it; either way an attempt that may be
running at the provider keeps the job's hold. The provider is asked to stop it (again at each
look that finds it still running: a first ask may not have reached it), and the chain goes on
looking at it: adopting a finished one (charged in full; a cancelled job keeps its output
as its result), charging what a stopped one billed, or,
when a submission's answer was lost, asking the provider what it created (``service.reconcile``,
never sending anything new for an ended job). Only that conclusion finishes the hold, so what
the provider billed is what the ledger charges; an attempt nothing can tell about any more is
closed ``uncertain`` with its possible charge.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool
from sqlalchemy import Engine

from orchestrator.backends.base import BackendAdapter, PollResult, Submission
from orchestrator.backends.errors import BackendError, TransientError
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.domain.reconcile import Move
from orchestrator.ledger import Ledger
from orchestrator.service.attempts import (
    DONE,
    Closing,
    Next,
    closing_of,
    possible_cost,
    removed,
    unknown,
)
from orchestrator.service.endings import Endings
from orchestrator.service.observe import JobObserver
from orchestrator.service.ports import Chain
from orchestrator.service.reconcile import Reconciler
from orchestrator.service.slots import SlotWaits
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit

# the chain's logger: its records keep the name they had before the chain was split up
log = logging.getLogger("orchestrator.service.runner")


class Concluder:
    def __init__(self, chain: Chain, *, reconciler: Reconciler, endings: Endings,
                 engine: Engine, ledger: Ledger, catalogue: Callable[[], Catalogue],
                 adapter: Callable[[str], BackendAdapter], clock: Callable[[], datetime],
                 poll: PollPolicy, observer: JobObserver, slots: SlotWaits) -> None:
        self.chain = chain
        self.reconciler = reconciler
        self.endings = endings
        self.engine = engine
        self.ledger = ledger
        self.catalogue = catalogue
        self.adapter = adapter
        self.clock = clock
        self.poll_policy = poll
        self.observe = observer
        self.slots = slots

    @property
    def db(self) -> ConnectionPool[Any]:
        """The engine's autocommit pool, looked up per use (see ``JobRunner.db``)."""
        return autocommit(self.engine)

    def deadline(self, job: repo.JobRow, open_: repo.AttemptRow | None,
                 token: uuid.UUID) -> Next:
        """The job's deadline passed. A running attempt is looked at once more first: a
        finished one is adopted (succeeded, charged), a billed one charged; only then is it
        asked to stop, and the job fails, its hold kept until the attempt concludes."""
        message = f"the job did not finish within its deadline of {job.spec.get('deadline_s')} s"
        if open_ is None:
            self.endings.fail(job, "deadline_exceeded", message)
            return DONE
        adapter = self.adapter(open_.backend)
        timeout = TransientError("the job's deadline passed", code="deadline_exceeded",
                                 backend=open_.backend)
        if open_.external_id is not None:
            res = self._peek(adapter, open_.external_id)
            # an adopted success's latency is the attempt's age: 0 would look instant to routing
            if res is not None and res.status == "succeeded":
                self.endings.succeed(job, open_, res, open_.age_s(self.clock()) * 1000)
                return DONE
            if res is None or not res.done:
                res = self.cancel_at_backend(adapter, open_)
                if res is not None and res.status == "succeeded":  # it finished meanwhile
                    self.endings.succeed(job, open_, res, open_.age_s(self.clock()) * 1000)
                    return DONE
            if res is not None and res.done:
                closing = closing_of(self.catalogue(), job, open_, res)
                if res.status == "cancelled":
                    closing = replace(closing, status="timeout", error=timeout)
                self.endings.fail(job, "deadline_exceeded", message, backend=open_.backend,
                                  closing=(open_, closing))
                return DONE
            delay = self.chain._poll_delay(open_, 0.0)
        else:  # its call may still be running: the attempt concludes once it cannot be
            situation = self.reconciler.unanswered(job, open_, adapter, live=False)
            delay = max(self.poll_policy.min_s,
                        (situation.window_end - situation.now).total_seconds())
        end = self.endings.fail(job, "deadline_exceeded", message, backend=open_.backend,
                                conclude_in_s=delay + self.poll_policy.grace_s)
        return Next(delay) if end is not None and end.pending else DONE

    def conclude(self, job: repo.JobRow, attempt: repo.AttemptRow | None,
                 token: uuid.UUID) -> Next:
        """The job ended (a cancel, its deadline) while ``attempt`` could still be billed.
        Learn what the provider did with it, asking it to stop where it still runs; then its
        bill settles the hold. Nothing new is ever sent for an ended job."""
        if attempt is None:  # closed by a step that did not finish the hold
            self.endings.end_concluded(job, None, None)
            return DONE
        if attempt.backend not in self.catalogue():
            self.endings.end_concluded(job, attempt, Closing(
                "uncertain", Outcome.BACKEND_FAULT, None, removed(attempt),
                possible_cost(self.catalogue(), job, attempt.backend)))
            return DONE
        adapter = self.adapter(attempt.backend)
        if attempt.external_id is None:
            situation = self.reconciler.unanswered(job, attempt, adapter, live=False)
            move = self.reconciler.ask_provider(job, attempt, adapter, situation, token)
            if isinstance(move, Next):
                return move
            if isinstance(move, Submission) and not self._record(job, attempt, move):
                move = Move.UNCERTAIN  # another attempt's work: never adopted or paid as this
            if isinstance(move, Submission):
                attempt = replace(attempt, external_id=move.external_id)
            elif move is Move.WAIT:
                return self.reconciler.wake_in(job, token, situation)
            elif move is Move.NOT_CREATED:
                self.endings.end_concluded(job, attempt,
                                           Closing("cancelled", Outcome.CANCELLED, 0))
                return DONE
            else:
                self.endings.end_concluded(job, attempt, Closing(
                    "uncertain", Outcome.BACKEND_FAULT, None, unknown(attempt),
                    possible_cost(self.catalogue(), job, attempt.backend)))
                return DONE
        assert attempt.external_id is not None
        res = self._peek(adapter, attempt.external_id)
        # Asked to stop, and the provider says it runs on: that ask may never have reached
        # it (a cancel refused while it was down), so ask again; a provider that does not
        # answer is asked once, its stop then bounded by the wait below.
        if (res is None or not res.done) and (attempt.cancel_requested_at is None
                                               or res is not None):
            res = self.cancel_at_backend(adapter, attempt) or res
            if attempt.cancel_requested_at is None:  # the first ask starts that bound
                attempt = replace(attempt, cancel_requested_at=self.clock())
        if res is not None and res.done:
            self.endings.end_concluded(job, attempt,
                                       closing_of(self.catalogue(), job, attempt, res), res)
            return DONE
        asked = attempt.cancel_requested_at
        if asked is not None and self.clock() - asked > timedelta(
                seconds=self.poll_policy.grace_s + adapter.call_window_s):
            self.endings.end_concluded(job, attempt, Closing(
                "uncertain", Outcome.BACKEND_FAULT, None, unknown(attempt),
                possible_cost(self.catalogue(), job, attempt.backend)))
            return DONE
        delay = self.chain._poll_delay(attempt, attempt.age_s(self.clock()))
        with self.db.connection() as conn:
            if not repo.set_wake(conn, job.id, token, delay + self.poll_policy.grace_s):
                return DONE
        return Next(delay)

    def cancel(self, job_id: uuid.UUID, tenant: str | None = None) -> repo.JobRow | None:
        """Cancel a live job now. Its final status comes at once; its hold is released in
        the same statement unless an attempt may still be billed: then the provider is asked
        to stop it, and the attempt's conclusion (what the provider billed, in full or in
        part) settles the hold; a success (the stop's own answer may say so) leaves its output
        as the job's result. Returns the job (None: not found / not the tenant's)."""
        now = self.clock()
        with self.db.connection() as conn:
            job = repo.get_job(conn, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                # before reading its attempts: another tenant's job costs what a missing
                # one does, so the answer's time does not tell that it exists
                return None
            attempts = repo.attempts(conn, job_id)
        if job.is_final:
            return job
        running = next((a for a in attempts if a.outcome is None), None)
        end = self.ledger.end_job(job_id, "cancelled", now, error_code="cancelled",
                                  error_message="cancelled by request",
                                  conclude_in_s=self._conclude_in_s(running))
        if end is not None and end.ended:
            with self.db.connection() as conn:
                # after the ending: no attempt opens once the job has left running
                attempts = repo.attempts(conn, job_id)
            open_ = next((a for a in attempts if a.outcome is None), None)
            if open_ is None and job.chain_token is not None:  # it may have waited for a slot
                self.slots.stop_waiting(job.id, job.chain_token, job.priority)
            backend = open_.backend if open_ else job.backend
            self.observe.job_finished(job, "cancelled", now=now, backend=backend,
                                      charged_micros=self.endings.charged(job, end, backend))
            self.endings.notify_ended(job)  # its cache followers run themselves
            if (open_ is not None and open_.external_id is not None
                    and open_.backend in self.catalogue()):
                answer = self.cancel_at_backend(self.adapter(open_.backend), open_)
                if answer is not None and answer.done:
                    with self.db.connection() as conn:
                        ended = repo.get_job(conn, job_id)
                    if ended is not None:
                        self.endings.end_concluded(
                            ended, open_, closing_of(self.catalogue(), ended, open_, answer),
                            answer)
        with self.db.connection() as conn:
            return repo.get_job(conn, job_id)

    def _conclude_in_s(self, attempt: repo.AttemptRow | None) -> float:
        """When the chain should look at an attempt its job's ending left open: at its next
        poll, or once its call (perhaps still running) must have ended."""
        grace = self.poll_policy.grace_s
        if attempt is None or attempt.backend not in self.catalogue():
            return grace
        if attempt.external_id is not None:
            return self.poll_policy.min_s + grace
        return self.adapter(attempt.backend).call_window_s + grace

    def cancel_at_backend(self, adapter: BackendAdapter, attempt: repo.AttemptRow
                          ) -> PollResult | None:
        """Ask the provider to stop the attempt's work; where it stands after that, when the
        protocol says (None: it cannot cancel, or the call failed)."""
        assert attempt.external_id is not None
        with self.db.connection() as conn:
            repo.mark_cancel_requested(conn, attempt.id, self.clock())
        try:
            return adapter.cancel(attempt.external_id)
        except BackendError as exc:
            log.warning("cancel at backend failed", extra={
                "job_id": str(attempt.job_id), "attempt": attempt.number,
                "backend": adapter.name, "error": exc.code})
            return None

    def _record(self, job: repo.JobRow, attempt: repo.AttemptRow, found: Submission) -> bool:
        """The id a lookup found, as the attempt's; False (nothing written) when another
        attempt on the backend holds it."""
        with self.db.connection() as conn:
            own = repo.record_own_external_id(conn, attempt.id, attempt.backend,
                                              found.external_id)
        if not own:
            log.warning("the provider named another attempt's work as this one's", extra={
                "job_id": str(job.id), "backend": attempt.backend,
                "error": "external_id_held", "lookup": True})
        return own

    @staticmethod
    def _peek(adapter: BackendAdapter, external_id: str) -> PollResult | None:
        """One poll whose failure means only that we do not know yet."""
        try:
            return adapter.poll(external_id)
        except BackendError:
            return None
