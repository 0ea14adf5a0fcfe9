"""The chain's side of the result cache: a job that waits for an identical one in flight
(its ``cache_leader``; see ``service.cache``).

Any step of a live follower's chain (a claim, or a step that finds it running: a duplicate,
or a chain the sweeper revived) asks the leader first:

* still live: the follower goes back to ``queued`` and waits; the leader's end wakes it
  (``ResultCache.wake``), else its own timer of ``ORCH_POLL_MAX_S``;
* succeeded: the follower takes its result at $0 (``cached_from`` set, then one ledger
  statement ends it succeeded with cost 0: its hold is released, a settle entry of 0);
* failed, cancelled or gone, or succeeded but its result since dropped by the retention
  sweeper: the link is cleared and the follower runs itself on its own hold, like any job.
  A hit admitted on a hold and estimate of 0 (its result vanished before it was served)
  first raises both to its plan's worst case, so budgets apply to its run as to any job's
  and a provider's answer without a bill is charged its worst case, not 0; a budget that
  cannot take it fails it ``budget_exceeded`` (``Refused``), charged nothing.

Two steps racing do no harm: the requeue and the unlink are guarded by status and link, so
only one wins; an ending already made is not made again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from orchestrator.domain.polling import PollPolicy
from orchestrator.domain.routing import RoutePlan
from orchestrator.errors import BudgetExceeded, HoldNotActive, HoldNotFound
from orchestrator.ledger import Ledger
from orchestrator.service.attempts import DONE, Next
from orchestrator.service.cache import ResultCache, record_saved
from orchestrator.service.observe import JobObserver
from orchestrator.store import jobs as repo
from orchestrator.store.statement import Conn


@dataclass(frozen=True, slots=True)
class Refused:
    """The job must run itself and a budget cannot hold its worst case: fail it."""

    message: str


class Follower:
    def __init__(self, ledger: Ledger, observer: JobObserver, poll: PollPolicy,
                 clock: Callable[[], datetime]) -> None:
        self.ledger = ledger
        self.observe = observer
        self.poll = poll
        self.clock = clock

    def check(self, conn: Conn, job: repo.JobRow, token: uuid.UUID
              ) -> Next | repo.JobRow | Refused | None:
        """For a live follower held by the chain ``token``: ``Next`` (it waits, or another
        step has it), the succeeded leader whose result it takes (``adopt``, after the
        connection's work), ``Refused`` (it must run itself and its budget cannot hold
        that), or None: it runs itself now."""
        assert job.cache_leader is not None
        leader = repo.get_job(conn, job.cache_leader)
        if leader is not None and not leader.is_final:
            delay = self.poll.max_s
            if job.status == "running" and not repo.requeue(
                    conn, job.id, token, delay + self.poll.grace_s):
                return DONE
            if job.status == "queued" and not repo.set_wake(
                    conn, job.id, token, delay + self.poll.grace_s):
                return DONE
            return Next(delay)
        # a succeeded leader whose result retention dropped has nothing to hand out: a job
        # ended succeeded with no result would have lost what it asked for
        if leader is not None and leader.status == "succeeded" and leader.result is not None:
            if not ResultCache.adopt(conn, job.id, token, leader.id):
                return DONE
            return leader
        refused = self._cover(job)
        if refused is not None:
            return refused
        return None if ResultCache.unlink(conn, job.id, token) else DONE

    def _cover(self, job: repo.JobRow) -> Next | Refused | None:
        """Before a job admitted below its worst case (a hit's hold of 0) runs itself: its
        hold and its estimate raised to its plan's worst case, in one transaction, as a
        fresh job of its request is admitted (an unpriced ending is charged up to its
        estimate: ``service.attempts.unpriced_charge``). None: covered."""
        worst = RoutePlan.from_quote(job.route or {}).worst_case_micros
        if job.estimated_cost_micros >= worst:
            return None  # a follower: admitted on its own worst case
        try:
            self.ledger.raise_hold(job.id, worst, estimate=True)
        except BudgetExceeded as exc:
            return Refused(f"its cached result is no longer kept, and {exc.message}")
        except (HoldNotActive, HoldNotFound):
            return DONE  # it ended meanwhile
        return None

    def adopt(self, job: repo.JobRow, leader: repo.JobRow) -> Next:
        """End the follower succeeded with ``leader``'s result, at $0."""
        now = self.clock()
        end = self.ledger.end_job(job.id, "succeeded", now, backend=leader.backend,
                                  result=leader.result)
        if end is not None and end.ended:
            self.observe.job_finished(job, "succeeded", backend=leader.backend,
                                      charged_micros=end.charged_micros, now=now)
            record_saved(job.kind, leader.cost_micros or 0)
        return DONE
