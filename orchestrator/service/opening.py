"""Which backend a job asks next (DESIGN §3, §4), or how long it waits before it asks again.

``Opener.open_next`` takes a breaker ticket and a concurrency slot on the plan's next untried
backend and writes its attempt row: the checkpoint before any backend call. When no backend
takes the job, the job waits rather than fails, never past its deadline: for a slot
(``Opened.full``, ``service.slots``), for a breaker that refused it (``breaker_wait``), or,
once every backend of the plan was tried, for the rate limit of one that only turned it away
(``rate_limit_wait``).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from datetime import datetime

from orchestrator.backends.base import BackendAdapter
from orchestrator.backends.errors import BackendError
from orchestrator.domain.breaker import Refusal
from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.domain.routing import RoutePlan
from orchestrator.health.store import Ticket
from orchestrator.service import attempts as steps
from orchestrator.service.attempts import Opened, turned_away
from orchestrator.service.ports import HealthPort
from orchestrator.service.slots import SlotWaits
from orchestrator.store import jobs as repo
from orchestrator.store.statement import Conn

log = logging.getLogger(__name__)


class Opener:
    def __init__(
        self, *, catalogue: Callable[[], Catalogue], health: HealthPort,
        adapter: Callable[[str], BackendAdapter], clock: Callable[[], datetime],
        poll: PollPolicy, slots: SlotWaits,
    ) -> None:
        self.catalogue = catalogue
        self.health = health
        self.adapter = adapter
        self.clock = clock
        self.poll_policy = poll
        self.slots = slots

    def acquire(self, backend: BackendSpec) -> Ticket:
        """A breaker ticket and concurrency slot on ``backend``, leased for its longest
        attempt plus the chain's grace."""
        return self.health.acquire(
            backend.name, max_concurrency=backend.max_concurrency,
            lease_s=backend.timeouts.start_to_close_s + self.poll_policy.grace_s,
        )

    def give_back(self, name: str, ticket: Ticket) -> None:
        """Return an admitted ticket no attempt was written for, because the database
        failed: its slot, and its probe (if it was one) for the next caller. A failure to
        return it is logged, not raised over the database's: the leases end it in time."""
        try:
            self.slots.released(name, Outcome.CANCELLED, probe=ticket.probe, slot=ticket.slot)
        except Exception as exc:
            log.warning("giving back a breaker ticket failed", extra={
                "backend": name, "error": type(exc).__name__})

    def lease_s(self, backend: str) -> float:
        """How far the chain's wake moves when a call to ``backend`` starts: the longest the
        call can take, and grace. The sweeper revives no chain while its call may run."""
        return self.adapter(backend).call_window_s + self.poll_policy.grace_s

    def untried(self, plan: RoutePlan, attempts: list[repo.AttemptRow]) -> list[str]:
        """The plan's backends, in its order, still in the catalogue and never tried for the
        job. A backend tried once is not tried again, whatever became of that attempt (an
        uncertain one above all), unless it only turned the job away (``open_next``)."""
        tried = {a.backend for a in attempts}
        cat = self.catalogue()
        return [name for name in plan.backends if name not in tried and name in cat]

    def open_next(
        self, conn: Conn, job: repo.JobRow, attempts: list[repo.AttemptRow], token: uuid.UUID,
    ) -> Opened:
        """Take a breaker ticket for the next untried backend of the plan and write its
        attempt row (the checkpoint before any backend call), if the chain holding
        ``token`` still runs the job. With none left, a backend whose every attempt it turned
        away for its rate limit (nothing made) is asked again."""
        plan = RoutePlan.from_quote(job.route or {})
        cat = self.catalogue()
        candidates = self.untried(plan, attempts)
        if not candidates:
            # a backend that only turned the job away for its rate limit, the one asked
            # longest ago first: each is asked in turn, not the plan's first for ever
            last_asked = {a.backend: a.started_at for a in attempts}
            candidates = sorted(
                (name for name in plan.backends if name in cat and all(
                    turned_away(a) for a in attempts if a.backend == name)),
                key=last_asked.__getitem__)
        refused: list[str] = []
        full: list[str] = []
        blocked_until: float | None = None
        for name in candidates:
            ticket = self.acquire(cat.get(name))
            if not ticket.allowed:
                refused.append(f"{name}: {ticket.refusal}")
                if ticket.refusal is Refusal.AT_CAPACITY:
                    full.append(name)
                elif ticket.retry_at is not None:
                    blocked_until = (ticket.retry_at if blocked_until is None
                                     else min(blocked_until, ticket.retry_at))
                continue
            attempt = repo.open_attempt(
                conn, job.id, token, len(attempts) + 1, name, self.clock(),
                lease_s=self.lease_s(name), slot=ticket.slot, probe=ticket.probe,
            )
            if attempt is None:  # a duplicate step opened it first (let it run), or it ended
                self.slots.released(name, Outcome.CANCELLED, probe=ticket.probe, slot=ticket.slot)
                return Opened(duplicate=True)
            return Opened(attempt=attempt)
        return Opened(refused=tuple(refused), full=tuple(full), blocked_until=blocked_until)

    def breaker_wait(self, job: repo.JobRow, opened: Opened, now: datetime) -> float | None:
        """How long a job that no backend took waits for a breaker that refused it (open, or
        half-open with its probe in flight): the backend's outage may end well within the
        job's deadline, and failing the job would lose it. Never past the deadline, which
        then ends the wait. None: no breaker refused it (or its deadline has come)."""
        if opened.blocked_until is None:
            return None
        left = job.until_deadline(now)
        if left == 0:
            return None
        wait = self.poll_policy.breaker_wait(opened.blocked_until - now.timestamp(),
                                             random.random())
        log.debug("every backend left refused by its breaker; waiting", extra={
            "job_id": str(job.id), "wait_s": round(wait, 3)})
        return wait if left is None else min(wait, left)

    def rate_limit_wait(self, job: repo.JobRow, closed: repo.AttemptRow,
                        attempts: list[repo.AttemptRow], error: BackendError | None
                        ) -> float | None:
        """How long a job waits after ``closed`` (as its close wrote it) when every backend of
        the plan was tried and this one only turned the job away for its rate limit: it is
        asked again once its limit allows (or the job's deadline ends the wait), not failed
        over to nothing or failed at once. None: the job fails over (or ends)."""
        plan = RoutePlan.from_quote(job.route or {})
        if not turned_away(closed) or self.untried(plan, attempts):
            return None
        return job.within_deadline(
            steps.rate_limit_wait(error, sum(map(turned_away, attempts))), self.clock())
