"""Submissions whose answer was lost: the provider's word on them, acted on.

An open attempt with no external id was sent, or may have been, and no answer came back (the
call raised ``OutcomeUnknown``, its worker died, or the sweeper revived its chain). The
provider is asked what it created under the attempt's idempotency key where its protocol can
say (``lookup``); what its answer, or its catalogue guarantee, allows is decided in
``orchestrator.domain.reconcile``: adopt what it created, repeat the request with the same key,
wait for the first request's call window to pass, or close the attempt ``uncertain`` with its
possible charge and fail over, never sending the job to that backend again. An attempt whose
backend left the catalogue can no longer be asked: it is uncertain too.

``Reconciler`` does this for a live job's chain, calling back into it (``ports.Chain``) to
submit, adopt a submission or fail over; the conclusion of an ended job's attempt
(``service.conclude``) asks the provider the same way but never sends anything new.
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

from orchestrator.backends.base import BackendAdapter, Submission
from orchestrator.backends.errors import BackendError, LookupUnsupported
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.domain.reconcile import Move, Unanswered, after_lookup_missed, without_lookup
from orchestrator.service.attempts import (
    DONE,
    Closing,
    Next,
    possible_cost,
    reference,
    removed,
    unknown,
)
from orchestrator.service.observe import JobObserver
from orchestrator.service.ports import Chain
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit

# the chain's logger: its records keep the name they had before the chain was split up
log = logging.getLogger("orchestrator.service.runner")


class Reconciler:
    def __init__(self, chain: Chain, engine: Engine, catalogue: Callable[[], Catalogue],
                 adapter: Callable[[str], BackendAdapter], clock: Callable[[], datetime],
                 poll: PollPolicy, observer: JobObserver) -> None:
        self.chain = chain
        self.engine = engine
        self.catalogue = catalogue
        self.adapter = adapter
        self.clock = clock
        self.poll_policy = poll
        self.observe = observer

    @property
    def db(self) -> ConnectionPool[Any]:
        """The engine's autocommit pool, looked up per use (see ``JobRunner.db``)."""
        return autocommit(self.engine)

    def reconcile(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID, *,
                  after_call: bool = False, answered: bool = False) -> Next:
        """A live job's open attempt whose submission went unanswered (no external id): ask
        the provider, then repeat it, wait, or close it uncertain and fail over
        (``domain.reconcile``). ``after_call``: this step's own call just lost its answer,
        so a repeat goes to a later step; ``answered``: its answer came and was unreadable
        (``domain.reconcile.Unanswered.answered``)."""
        adapter = self.adapter(attempt.backend)
        situation = replace(self.unanswered(job, attempt, adapter, live=True),
                            answered=answered)
        move = self.ask_provider(job, attempt, adapter, situation, token)
        if isinstance(move, Next):
            return move
        if isinstance(move, Submission):
            # found again: its latency is the attempt's age, not the lookup's
            return self.chain._submitted(job, attempt, move, token,
                                         attempt.age_s(situation.now) * 1000, found=True)
        if move is Move.UNCERTAIN:
            return self.uncertain(job, attempt, token, unknown(attempt))
        if move is Move.WAIT:
            return self.wake_in(job, token, situation)
        if after_call:  # a repeat, but not in this step: it just failed the same way
            return self.wake_in(job, token, situation, at_most=self.poll_policy.min_s)
        return self._repeat(job, attempt, token)

    def unanswered(self, job: repo.JobRow, attempt: repo.AttemptRow, adapter: BackendAdapter,
                   *, live: bool) -> Unanswered:
        window = timedelta(seconds=adapter.call_window_s)
        patience = max(timedelta(seconds=adapter.backend.timeouts.start_to_close_s), window)
        return Unanswered(adapter.backend.idempotency, live, self.clock(),
                          attempt.last_sent_at + window, attempt.started_at + patience)

    def ask_provider(self, job: repo.JobRow, attempt: repo.AttemptRow,
                     adapter: BackendAdapter, situation: Unanswered, token: uuid.UUID
                     ) -> Submission | Move | Next:
        """The provider's word on an unanswered submission: what it created under the
        attempt's key (a Submission), or the move its guarantee allows; a Next when it
        cannot be asked right now (asked again at the next step)."""
        if situation.now >= situation.give_up_at:
            return Move.UNCERTAIN
        try:
            found = adapter.lookup(reference(attempt))
        except LookupUnsupported:
            return without_lookup(situation)
        except BackendError as exc:
            log.warning("looking a submission up failed", extra={
                "job_id": str(job.id), "backend": attempt.backend, "error": exc.code})
            return self.wake_in(job, token, situation, at_most=self.poll_policy.min_s)
        return found if found is not None else after_lookup_missed(situation)

    def _repeat(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        """Send the attempt's submission again, with its key, once no step else has."""
        now = self.clock()
        with self.db.connection() as conn:
            if not repo.mark_sent(conn, attempt.id, attempt.last_sent_at, now):
                return DONE  # another step repeated or concluded it
            if not repo.set_wake(conn, job.id, token, self.chain._lease_s(attempt.backend)):
                return DONE
        log.info("repeating a submission whose answer was lost", extra={
            "job_id": str(job.id), "backend": attempt.backend, "attempt": attempt.number})
        return self.chain._submit(job, replace(attempt, sent_at=now), token)

    def wake_in(self, job: repo.JobRow, token: uuid.UUID, situation: Unanswered, *,
                at_most: float | None = None) -> Next:
        """The next step when the first request's call window has passed, or sooner: by
        ``at_most``, and by the job's deadline while it is live (its deadline step ends the
        job then, and the attempt is concluded after)."""
        delay = (situation.window_end - situation.now).total_seconds()
        if at_most is not None:
            delay = min(delay, at_most)
        if situation.job_live and job.deadline_at is not None:
            delay = min(delay, (job.deadline_at - situation.now).total_seconds())
        delay = max(self.poll_policy.min_s, delay)
        with self.db.connection() as conn:
            if not repo.set_wake(conn, job.id, token, delay + self.poll_policy.grace_s):
                return DONE
        return Next(delay)

    def uncertain(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID,
                  error: BackendError) -> Next:
        """Nothing can tell what became of the attempt: it may be billed. Its possible
        charge is reported; the backend is not sent the job again; the job fails over."""
        possible = possible_cost(self.catalogue(), job, attempt.backend)
        self.observe.uncertain(job, attempt, error.code, possible)
        return self.chain._failover(job, attempt, token,
                                    Closing("uncertain", Outcome.BACKEND_FAULT, None, error,
                                            possible))

    def backend_removed(self, job: repo.JobRow, attempt: repo.AttemptRow,
                        token: uuid.UUID) -> Next:
        """The attempt's backend left the catalogue: nothing here can ask it any more."""
        return self.uncertain(job, attempt, token, removed(attempt))
