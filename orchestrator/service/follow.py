"""The chain's side of the result cache: a job that waits for an identical one in flight
(its ``cache_leader``; see ``service.cache``).

Any step of a live follower's chain (a claim, or a step that finds it running: a duplicate,
or a chain the sweeper revived) asks the leader first:

* still live: the follower goes back to ``queued`` and waits; the leader's end wakes it
  (``ResultCache.wake``), else its own timer of ``ORCH_POLL_MAX_S``;
* succeeded: the follower takes its result at $0 (``cached_from`` set, then one ledger
  statement ends it succeeded with cost 0: its hold is released, a settle entry of 0);
* failed, cancelled or gone: the link is cleared and the follower runs itself on its own
  hold, like any job.

Two steps racing do no harm: the requeue and the unlink are guarded by status and link, so
only one wins; an ending already made is not made again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from orchestrator.domain.polling import PollPolicy
from orchestrator.ledger import Ledger
from orchestrator.service.attempts import DONE, Next
from orchestrator.service.cache import ResultCache, record_saved
from orchestrator.service.observe import JobObserver
from orchestrator.store import jobs as repo
from orchestrator.store.statement import Conn


class Follower:
    def __init__(self, ledger: Ledger, observer: JobObserver, poll: PollPolicy,
                 clock: Callable[[], datetime]) -> None:
        self.ledger = ledger
        self.observe = observer
        self.poll = poll
        self.clock = clock

    def check(self, conn: Conn, job: repo.JobRow, token: uuid.UUID
              ) -> Next | repo.JobRow | None:
        """For a live follower held by the chain ``token``: ``Next`` (it waits, or another
        step has it), the succeeded leader whose result it takes (``adopt``, after the
        connection's work), or None: it runs itself now."""
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
        if leader is not None and leader.status == "succeeded":
            if not ResultCache.adopt(conn, job.id, token, leader.id):
                return DONE
            return leader
        return None if ResultCache.unlink(conn, job.id, token) else DONE

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
