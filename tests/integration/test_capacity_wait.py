"""A job that finds every backend of its plan full waits in the queue for a slot: accepted at
the door, never more attempts in flight than a backend's ``max_concurrency``, run when a slot
frees, failed only by its own deadline."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg import OperationalError
from sqlalchemy import create_engine

from orchestrator.bootstrap import Container
from orchestrator.domain import breaker
from orchestrator.domain.breaker import BreakerPolicy, BreakerStatus
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.health.store import HealthStore
from orchestrator.ledger.budgets import set_budget
from orchestrator.ledger.service import utcnow
from orchestrator.service.runner import JobRunner
from orchestrator.store import jobs as repo

from .e2e_support import E2E_CATALOGUE, Rig, run_chain
from .ledger_helpers import hold_status

TENANT = "acme"


class RecordingEnqueue:
    """The chain's next steps, recorded instead of sent (this process drives the runner)."""

    def __init__(self) -> None:
        self.resumed: list[tuple[uuid.UUID, uuid.UUID, str]] = []

    def start(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
              backend: str | None = None) -> None:
        pass

    def poll(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
             countdown_s: float) -> None:
        pass

    def resume(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
               countdown_s: float = 0.0) -> None:
        self.resumed.append((job_id, token, priority))


@dataclass
class Capped:
    """The rig with vid-cheap and vid-mid each limited to one job in flight."""

    rig: Rig
    container: Container
    catalogue_file: Path
    woken: RecordingEnqueue

    def submit(self, **spec: Any) -> repo.JobRow:
        job, created = self.container.submitter.submit(TENANT, JobSpec.model_validate({
            "kind": "video", "tier": "draft",
            "input": {"prompt": "a lighthouse", "duration_s": 4, "resolution": "480p"},
            **spec}))
        assert created
        return job

    def run(self, job: repo.JobRow, timeout: float = 30.0) -> None:
        """The job's chain to its end in this process, as the worker's tasks would."""
        assert job.chain_token is not None
        run_chain(self.container.runner, job.id, job.chain_token, timeout)

    def held(self, job_id: uuid.UUID) -> str:
        return hold_status(self.rig.engine, job_id)

    def in_flight(self, backend: str) -> int:
        return self.container.health.snapshot([backend])[backend].in_flight


@pytest.fixture()
def capped(rig: Rig, tmp_path: Path) -> Iterator[Capped]:
    catalogue = {**E2E_CATALOGUE, "backends": [
        {**b, "max_concurrency": 1} for b in E2E_CATALOGUE["backends"]
        if b["name"] in ("vid-cheap", "vid-mid")]}
    path = tmp_path / "capped.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    settings = rig.container.settings.model_copy(update={"backends_file": path})
    woken = RecordingEnqueue()
    container = Container(settings, enqueue=woken)
    with rig.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=10**12,
                   now=datetime.now(UTC))
    for name in ("vid-cheap", "vid-mid"):
        rig.control(name, duration_ms=200)
    try:
        yield Capped(rig, container, path, woken)
    finally:
        container.engine.dispose()


def test_a_job_that_finds_every_backend_full_goes_back_to_the_queue_until_a_slot_frees(
    capped: Capped,
) -> None:
    first, second, third = capped.submit(), capped.submit(), capped.submit()
    runner = capped.container.runner
    for job in (first, second):  # one slot on each backend: both now taken
        assert job.chain_token is not None
        assert not runner.advance(job.id, job.chain_token).done
    assert [a.backend for a in capped.rig.attempts(second.id)] == ["vid-mid"]

    assert third.chain_token is not None
    wait = runner.advance(third.id, third.chain_token)
    assert wait.resume and wait.poll_in_s is not None and 0 < wait.poll_in_s <= 1.2
    waiting = capped.rig.job(third.id)
    assert waiting.status == "queued" and waiting.started_at is None
    assert capped.rig.attempts(third.id) == []
    assert waiting.wake_at is not None and waiting.wake_at > datetime.now(UTC)
    assert capped.held(third.id) == "held"

    capped.run(first)  # its attempt closes: the slot it frees wakes the waiting job
    assert capped.woken.resumed == [(third.id, third.chain_token, "normal")]
    step = runner.advance(third.id, third.chain_token, resume=True)
    assert not step.done and not step.resume  # it has the slot: polling now
    assert [a.backend for a in capped.rig.attempts(third.id)] == ["vid-cheap"]
    # a second wake (its own timer) finds it no longer waiting and does nothing
    assert runner.advance(third.id, third.chain_token, resume=True).done
    assert len(capped.rig.attempts(third.id)) == 1

    capped.run(third)
    done = capped.rig.job(third.id)
    assert done.status == "succeeded" and done.backend == "vid-cheap"
    assert capped.held(third.id) == "settled"
    capped.run(second)


def test_a_job_that_got_its_slot_leaves_every_waiting_list(capped: Capped) -> None:
    """Waiting, a job is listed on every full backend; once a freed slot on one of them
    wakes it and it runs, the other's freed slot wakes the next waiting job, not it."""
    busy = [capped.submit(), capped.submit()]
    runner = capped.container.runner
    for job in busy:
        assert job.chain_token is not None
        runner.advance(job.id, job.chain_token)
    early, late = capped.submit(), capped.submit()
    for job in (early, late):
        assert job.chain_token is not None
        assert runner.advance(job.id, job.chain_token).resume  # both wait on both backends

    capped.run(busy[0])  # frees vid-cheap: wakes the earlier job
    assert [w[0] for w in capped.woken.resumed] == [early.id]
    assert early.chain_token is not None
    assert not runner.advance(early.id, early.chain_token, resume=True).resume  # runs
    capped.run(busy[1])  # frees vid-mid: the earlier job is no longer listed there
    assert [w[0] for w in capped.woken.resumed] == [early.id, late.id]
    assert late.chain_token is not None
    capped.run(early)
    assert not runner.advance(late.id, late.chain_token, resume=True).resume
    capped.run(late)
    assert {capped.rig.job(j.id).status for j in (*busy, early, late)} == {"succeeded"}


def test_a_job_waiting_for_a_slot_fails_at_its_deadline_and_its_hold_is_released(
    capped: Capped,
) -> None:
    busy = [capped.submit(), capped.submit()]
    runner = capped.container.runner
    for job in busy:
        assert job.chain_token is not None
        runner.advance(job.id, job.chain_token)
    late = capped.submit(deadline_s=1)
    assert late.chain_token is not None and late.deadline_at is not None
    past = late.deadline_at + timedelta(seconds=0.05)
    assert not runner.advance(late.id, late.chain_token).done  # waiting
    capped.rig.wait_for("the deadline to pass", lambda: datetime.now(UTC) > past, timeout=10)
    assert runner.advance(late.id, late.chain_token).done
    failed = capped.rig.job(late.id)
    assert (failed.status, failed.error_code) == ("failed", "deadline_exceeded")
    assert capped.held(late.id) == "released"
    for job in busy:
        capped.run(job)


def test_a_real_worker_runs_a_burst_one_at_a_time_per_backend_and_loses_none(
    capped: Capped,
) -> None:
    """Eight jobs on two backends of one slot each, through Celery: all accepted, all
    succeed, one attempt each (no job turned away, none run past a full backend). The
    waiting jobs' own timers are set to a minute or more, so finishing well within that
    shows each freed slot woke a waiting job."""
    def created() -> int:
        return sum(capped.rig.counters(b)["created"] for b in ("vid-cheap", "vid-mid"))

    before = created()
    capped.rig.start_worker(env_extra={"ORCH_BACKENDS_FILE": str(capped.catalogue_file),
                                       "ORCH_POLL_MAX_S": "75"})  # timers: 60 to 90 s
    jobs = [capped.submit() for _ in range(8)]
    for job in jobs:
        assert job.chain_token is not None
        capped.rig.container.enqueue.start(job.id, job.chain_token, "normal")
    done = capped.rig.wait_final([j.id for j in jobs], timeout=50)
    assert {j.status for j in done} == {"succeeded"}
    assert all(len(capped.rig.attempts(j.id)) == 1 for j in jobs)
    assert created() - before == 8  # one submission per job


# -- the start step's short way: a slot on the plan's first backend, then the claim and the
# -- checkpoint in one statement ------------------------------------------------------------

def test_a_start_naming_the_first_backend_claims_and_checkpoints_there(capped: Capped) -> None:
    job = capped.submit()
    assert job.chain_token is not None
    step = capped.container.runner.advance(job.id, job.chain_token, backend="vid-cheap")
    assert not step.done and not step.resume  # submitted: it polls now
    running = capped.rig.job(job.id)
    assert running.status == "running" and running.started_at is not None
    [attempt] = capped.rig.attempts(job.id)
    assert (attempt.number, attempt.backend) == (1, "vid-cheap")
    assert attempt.slot is not None and attempt.external_id is not None
    assert capped.in_flight("vid-cheap") == 1
    capped.run(job)
    assert capped.rig.job(job.id).status == "succeeded"
    assert capped.held(job.id) == "settled"
    assert capped.in_flight("vid-cheap") == 0


def test_a_start_whose_first_backend_is_full_goes_the_long_way(capped: Capped) -> None:
    busy, job = capped.submit(), capped.submit()
    runner = capped.container.runner
    assert busy.chain_token is not None and job.chain_token is not None
    runner.advance(busy.id, busy.chain_token, backend="vid-cheap")  # its only slot
    step = runner.advance(job.id, job.chain_token, backend="vid-cheap")
    assert not step.done and not step.resume
    assert [a.backend for a in capped.rig.attempts(job.id)] == ["vid-mid"]  # next in the plan
    assert (capped.in_flight("vid-cheap"), capped.in_flight("vid-mid")) == (1, 1)
    for j in (busy, job):
        capped.run(j)
        assert capped.rig.job(j.id).status == "succeeded"


def test_a_start_with_nothing_to_claim_gives_its_slot_back(capped: Capped) -> None:
    """A start delivered again after its job ended: the slot it took is returned and no
    attempt is opened."""
    job = capped.submit()
    assert job.chain_token is not None
    runner = capped.container.runner
    runner.advance(job.id, job.chain_token, backend="vid-cheap")
    capped.run(job)
    assert capped.in_flight("vid-cheap") == 0
    assert runner.advance(job.id, job.chain_token, backend="vid-cheap").done
    assert capped.in_flight("vid-cheap") == 0
    assert len(capped.rig.attempts(job.id)) == 1
    assert capped.rig.job(job.id).status == "succeeded"


def test_a_start_that_cannot_reach_postgresql_keeps_no_slot_and_no_probe(
        capped: Capped) -> None:
    """A start message retried while PostgreSQL is down (Celery retries it, for as long as
    the outage lasts) takes its ticket in Redis before the database fails it: the slot, and
    the probe of a half-open breaker, are given back each time, or the backend would look
    full (and its probe taken) long after the database returned."""
    job = capped.submit()
    assert job.chain_token is not None
    c = capped.container
    trip = HealthStore(c.health.redis, prefix=c.health.prefix,
                       policy=BreakerPolicy(cooldown_base_s=0.5, cooldown_cap_s=0.5))
    for _ in range(3):
        trip.record("vid-cheap", Outcome.BACKEND_FAULT)
    capped.rig.wait_for("the cooldown to end", lambda: breaker.refusal(
        c.health.breaker("vid-cheap"), time.time()) is None, timeout=10)
    down = create_engine("postgresql+psycopg://orch@127.0.0.1:1/orch")  # nothing listens
    try:
        dead = JobRunner(down, c.ledger, c.catalogue, c.health, c.adapter, utcnow,
                         c.runner.poll_policy)
        for _ in range(2):  # the task's retries
            with pytest.raises(OperationalError):
                dead.advance(job.id, job.chain_token, backend="vid-cheap")
    finally:
        down.dispose()
    assert capped.in_flight("vid-cheap") == 0
    assert breaker.refusal(c.health.breaker("vid-cheap"), time.time()) is None  # no probe
    step = c.runner.advance(job.id, job.chain_token, backend="vid-cheap")  # it is back
    assert not step.done and not step.resume
    [attempt] = capped.rig.attempts(job.id)
    assert attempt.backend == "vid-cheap" and attempt.probe
    capped.run(job)
    assert capped.rig.job(job.id).status == "succeeded"
    assert c.health.breaker("vid-cheap").status is BreakerStatus.CLOSED
    assert capped.in_flight("vid-cheap") == 0


def test_a_start_past_the_deadline_fails_the_job_and_keeps_no_slot(capped: Capped) -> None:
    job = capped.submit(deadline_s=1)
    assert job.chain_token is not None and job.deadline_at is not None
    past = job.deadline_at + timedelta(seconds=0.05)
    capped.rig.wait_for("the deadline to pass", lambda: datetime.now(UTC) > past, timeout=10)
    assert capped.container.runner.advance(job.id, job.chain_token, backend="vid-cheap").done
    failed = capped.rig.job(job.id)
    assert (failed.status, failed.error_code) == ("failed", "deadline_exceeded")
    assert capped.rig.attempts(job.id) == []
    assert capped.held(job.id) == "released"
    assert capped.in_flight("vid-cheap") == 0


def test_a_start_naming_a_backend_no_longer_in_the_catalogue_goes_the_long_way(
    capped: Capped,
) -> None:
    job = capped.submit()
    assert job.chain_token is not None
    step = capped.container.runner.advance(job.id, job.chain_token, backend="vid-gone")
    assert not step.done
    assert [a.backend for a in capped.rig.attempts(job.id)] == ["vid-cheap"]
    capped.run(job)
