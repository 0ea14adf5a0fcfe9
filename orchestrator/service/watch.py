"""Watching a running attempt (DESIGN §3): poll it, stop it once it runs too long, and
schedule the next look.

``Watcher.look`` is the chain's step for an attempt the provider has named (its external id
is recorded). A finished attempt is handed back to the chain (``Chain._concluded``); one past
its ``start_to_close`` is asked to stop and looked at until the provider says it ended, or
closed ``uncertain`` by the reconciler once the grace after the stop passes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from orchestrator.backends.base import BackendAdapter
from orchestrator.backends.errors import BackendError, TransientError
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.polling import PollPolicy
from orchestrator.service.attempts import DONE, Next, overrun
from orchestrator.service.conclude import Concluder
from orchestrator.service.observe import JobObserver
from orchestrator.service.ports import Chain
from orchestrator.service.reconcile import Reconciler
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit

log = logging.getLogger(__name__)


_PAST_LIMIT_S = 0.01  # a look due at the limit comes just past it, when it stops the run


class Watcher:
    def __init__(
        self, chain: Chain, *, engine: Engine, catalogue: Callable[[], Catalogue],
        adapter: Callable[[str], BackendAdapter], clock: Callable[[], datetime],
        poll: PollPolicy, observer: JobObserver, concluder: Concluder, reconciler: Reconciler,
    ) -> None:
        self.chain = chain
        self.engine = engine
        self.catalogue = catalogue
        self.adapter = adapter
        self.clock = clock
        self.poll_policy = poll
        self.observe = observer
        self.concluder = concluder
        self.reconciler = reconciler

    def look(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        """Look at a running attempt. Past its start_to_close it is looked at once more (a
        finished one is adopted, a billed one charged) before the provider is asked to stop
        it and the job fails over."""
        backend = self.catalogue().get(attempt.backend)
        adapter = self.adapter(attempt.backend)
        age = attempt.age_s(self.clock())
        overran = age > backend.timeouts.start_to_close_s
        assert attempt.external_id is not None
        try:
            res = adapter.poll(attempt.external_id)
        except TransientError as exc:  # the provider is still working; ask again later
            self.observe.retry(attempt.backend, exc.code)
            if overran:
                return self._overran(job, attempt, adapter, token, age)
            return self._schedule(job, attempt, token, age, at_least=exc.retry_after_s)
        except BackendError as exc:
            # The provider named this work and now gives no readable word on it (a 404 for
            # its own id, a malformed answer): failing over at once could leave it running,
            # and billed, while another backend does the job again. Just after the create
            # it is looked at again (some providers take a moment to know a new id); after
            # that it is asked to stop and looked at until the grace passes, then closed
            # uncertain with its possible charge.
            if not overran and age <= self.poll_policy.grace_s:
                return self._schedule(job, attempt, token, age)
            if attempt.cancel_requested_at is None:
                log.warning("poll unreadable; stopping the work", extra={
                    "job_id": str(job.id), "backend": attempt.backend, "error": exc.code})
            return self._overran(job, attempt, adapter, token, age, exc)
        if res.done:
            if attempt.cancel_requested_at is not None and not overran:
                # not our stop: the job ended (a cancel, its deadline) after this step read it,
                # and the provider stopped as asked; that ending concludes the attempt
                with autocommit(self.engine).connection() as conn:
                    current = repo.get_job(conn, job.id)
                if current is not None and current.is_final:
                    return self.concluder.conclude(current, attempt, token)
            # our stop for running too long; else (a stop for unreadable polls, or none) the
            # provider's own ending says why
            stopped = overrun(attempt, backend) if attempt.cancel_requested_at and overran else None
            return self.chain._concluded(job, attempt, res, token, age * 1000, error=stopped)
        if overran:
            return self._overran(job, attempt, adapter, token, age)
        return self._schedule(job, attempt, token, age)

    def delay(self, attempt: repo.AttemptRow, age_s: float) -> float:
        """How long until the attempt, ``age_s`` old, is looked at again."""
        expected = self.catalogue().get(attempt.backend).expected_latency_ms
        return self.poll_policy.interval(age_s, None if expected is None else expected / 1000)

    def by_deadline(self, job: repo.JobRow, delay: float) -> float:
        """``delay``, or less so that the look comes just past a live job's deadline: its
        step stops the run then, not up to a poll interval later, while the provider bills
        the run's time until it is asked to stop."""
        until = None if job.is_final else job.until_deadline(self.clock())
        return delay if until is None else min(delay, until + _PAST_LIMIT_S)

    def _overran(self, job: repo.JobRow, attempt: repo.AttemptRow, adapter: BackendAdapter,
                 token: uuid.UUID, age: float, error: BackendError | None = None) -> Next:
        """Stop an attempt that ran too long (or whose polls ``error``): ask the provider to
        cancel it, conclude it when the answer says it ended, else look again until the
        grace after the cancel passes, then close it uncertain."""
        timeout = error or overrun(attempt, adapter.backend)
        assert attempt.external_id is not None
        now = self.clock()
        limit = attempt.started_at + timedelta(
            seconds=adapter.backend.timeouts.start_to_close_s)
        # an overrun whose last stop was asked before it (for unreadable polls that then
        # recovered) asks again: that grace has long passed
        if attempt.cancel_requested_at is None or (
                error is None and attempt.cancel_requested_at < limit):
            answer = self.concluder.cancel_at_backend(adapter, attempt)
            if answer is not None and answer.done:
                # a failure the provider reports is its own reason, not our stop's
                reason = timeout if error is None or answer.status == "cancelled" else None
                return self.chain._concluded(job, attempt, answer, token, age * 1000,
                                             error=reason)
            return self._schedule(job, attempt, token, age)
        if now - attempt.cancel_requested_at > timedelta(seconds=self.poll_policy.grace_s):
            # asked to stop and never said it did: what it billed cannot be known
            return self.reconciler.uncertain(job, attempt, token, timeout)
        return self._schedule(job, attempt, token, age)

    def _schedule(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID,
                  age_s: float, at_least: float | None = None) -> Next:
        """The next look at a running attempt; ``at_least``: the provider's Retry-After,
        honoured up to the job's deadline (whose step must not come late for it) and up to
        the attempt's start_to_close, when it is looked at once more and stopped: a poll
        answered ``Retry-After: 86400`` must not leave work running, and holding the job's
        money, for a day (nor outlive the provider's links to a finished output)."""
        # the age now, not the look's: the poll before this may have taken seconds
        left = (self.catalogue().get(attempt.backend).timeouts.start_to_close_s
                - attempt.age_s(self.clock()))
        wait = 0.0
        if at_least:
            wait = job.within_deadline(min(at_least, max(0.0, left)), self.clock())
        delay = self.delay(attempt, age_s)
        if left > 0:
            # the look that stops a run comes at its limit, not up to a poll interval later:
            # a provider bills a run's time until it is asked to stop, and the hold covers
            # no more than start_to_close_s of it (a per_compute_second backend's worst case)
            delay = min(delay, left + _PAST_LIMIT_S)
        delay = max(self.by_deadline(job, delay), wait)
        with autocommit(self.engine).connection() as conn:
            if not repo.set_wake(conn, job.id, token, delay + self.poll_policy.grace_s):
                return DONE  # the sweeper gave the job a new chain; this one stops
        return Next(delay)
