"""Jobs waiting for a backend's concurrency slot.

A job whose every remaining backend is full joins those backends' waiting lists in the health
store (oldest job first) and goes back to sleep. A step that releases a slot records its
outcome and takes the longest-waiting job off that backend's list in one Redis round trip,
then sends it a resume step (which does nothing if the job has found a slot meanwhile). The
job's own timer (``PollPolicy.slot_wait``) covers a wake lost to a crash or a slot that expired
instead of being released.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Iterable

from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.service.ports import EnqueuePort, HealthPort
from orchestrator.store import jobs as repo

log = logging.getLogger(__name__)


class SlotWaits:
    def __init__(self, health: HealthPort, enqueue: EnqueuePort | None, poll: PollPolicy,
                 backends: Callable[[], Iterable[str]]) -> None:
        self.health = health
        self.enqueue = enqueue  # None: released slots wake nobody (the timers still do)
        self.poll = poll
        self.backends = backends  # every catalogued backend's name

    def wait(self, job: repo.JobRow, token: uuid.UUID, full: tuple[str, ...]) -> float:
        """Queue the job (its chain ``token``) on the waiting list of each backend in
        ``full``; returns how long it sleeps if no released slot wakes it first."""
        self.health.wait_for_slot(full, _member(job.id, token, job.priority),
                                  job.created_at.timestamp())
        log.debug("every backend left is full; waiting for a slot",
                  extra={"job_id": str(job.id), "backends": list(full)})
        return self.poll.slot_wait(random.random())

    def stop_waiting(self, job_id: uuid.UUID, token: uuid.UUID, priority: str) -> None:
        """The job got a slot (or ended) after waiting: off every waiting list, so a slot
        freed later wakes a job that still waits rather than this one."""
        self.health.stop_waiting(self.backends(), _member(job_id, token, priority))

    def released(self, backend: str, outcome: Outcome, *, latency_ms: float | None = None,
                 probe: bool = False, slot: str | None = None) -> None:
        """Record an outcome that gives an attempt's slot back, and wake the job that has
        waited longest for a slot of that backend."""
        _, waiter = self.health.record_and_wake(
            backend, outcome, latency_ms=latency_ms, probe=probe, slot=slot,
            wake=self.enqueue is not None)
        if waiter is None or self.enqueue is None:
            return
        try:
            job_id, token, priority = waiter.split(" ")
            self.enqueue.resume(uuid.UUID(job_id), uuid.UUID(token), priority)
        except Exception as exc:  # the step that freed the slot goes on; timers wake jobs
            log.warning("waking a job waiting for a slot failed",
                        extra={"waiter": waiter[:80], "error": type(exc).__name__})


def _member(job_id: uuid.UUID, token: uuid.UUID, priority: str) -> str:
    return f"{job_id} {token} {priority}"
