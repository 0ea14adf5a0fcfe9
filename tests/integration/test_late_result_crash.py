"""A cancelled job whose provider finished anyway keeps the output it is charged for, even
when the step that concludes its attempt dies: the conclusion and the kept result are one
statement, so a step that died before it leaves the attempt open and the next one keeps
both, and one that died after it left both.

The chain runs in this process (as the worker's tasks would run it), on real PostgreSQL and
Redis, against the simulator over real HTTP. The failure is injected just before the ending
(where the output is prepared and its files written) or just after it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.store import jobs as repo

from .e2e_support import Rig, run_chain
from .test_e2e_execution import TENANT, budget, video

BACKEND = "vid-cheap"


class Crash(Exception):
    """The step's process dying between the conclusion and the kept result."""


def hold_status(rig: Rig, job_id: uuid.UUID) -> str:
    with rig.engine.connect() as conn:
        return str(conn.execute(text("SELECT status FROM holds WHERE job_id = :j"),
                                {"j": job_id}).scalar_one())


@pytest.mark.parametrize("dies", ["before the ending", "after the ending"])
def test_a_step_that_dies_around_a_late_results_ending_leaves_output_and_charge_together(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, dies: str) -> None:
    budget(rig)
    rig.control(BACKEND, duration_ms=1000, ignore_cancel=True)
    runner = rig.container.runner
    job_id = rig.submit(video(duration=4))
    token = rig.job(job_id).chain_token
    assert token is not None
    runner.advance(job_id, token)  # the create
    (attempt,) = rig.attempts(job_id)
    assert attempt.external_id is not None and attempt.outcome is None

    cancelled = runner.cancel(job_id, TENANT)  # the provider goes on all the same
    assert cancelled is not None and cancelled.status == "cancelled"
    assert rig.attempts(job_id)[0].outcome is None and hold_status(rig, job_id) == "held"

    def crash(*_: Any, **__: Any) -> Any:
        raise Crash

    endings = runner.endings
    monkeypatch.setattr(endings, "result_of" if dies == "before the ending"
                        else "attempt_closed", crash)
    # steps until the provider has finished and one concludes the attempt, dying there
    with pytest.raises(Crash):
        run_chain(runner, job_id, token)
    (attempt,) = rig.attempts(job_id)
    job = rig.job(job_id)
    if dies == "before the ending":
        assert attempt.outcome is None, "the attempt was closed without its output"
        assert hold_status(rig, job_id) == "held" and job.result is None
        assert rig.ledger()[0] == 0
    else:
        assert attempt.outcome == "succeeded" and job.result is not None

    monkeypatch.undo()
    run_chain(runner, job_id, token)  # the next step, as the task's retry would run it
    (attempt,) = rig.attempts(job_id)
    job = rig.job(job_id)
    (bill,) = [int(b["cost_micros"]) for b in rig.provider(BACKEND)["bills"]
               if b["reference"] == f"{job_id}:1"]
    assert job.status == "cancelled" and attempt.outcome == "succeeded"
    assert job.cost_micros == attempt.cost_micros == bill == 180_000  # 4 s x $0.03 x 1.5
    assert job.result is not None
    assert str(job.result["output"]).endswith(f"/{attempt.external_id}.mp4")
    assert hold_status(rig, job_id) != "held" and rig.ledger() == (bill, 0)


def test_a_job_cancelled_between_the_success_and_its_ending_keeps_its_output_through_a_crash(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel lands after the provider's success was read and before the chain ends the
    job: the ending closes the attempt succeeded and charges it. The step dies right after
    that statement; nothing later looks at the closed attempt, so the output must already be
    the job's."""
    budget(rig)
    rig.control(BACKEND, duration_ms=300, ignore_cancel=True)
    runner = rig.container.runner
    job_id = rig.submit(video(duration=4))
    token = rig.job(job_id).chain_token
    assert token is not None
    endings = runner.endings
    result_of = endings.result_of
    cancels: list[str] = []

    def cancel_then_result(job: repo.JobRow, res: Any) -> dict[str, Any]:
        # the provider's stop fails, so the cancel leaves the attempt to the chain's ending
        rig.control(BACKEND, mode="down")
        cancelled = runner.cancel(job_id, TENANT)
        rig.control(BACKEND, mode="up")
        cancels.append(cancelled.status if cancelled is not None else "none")
        return result_of(job, res)

    def crash(*_: Any, **__: Any) -> None:
        raise Crash

    monkeypatch.setattr(endings, "result_of", cancel_then_result)
    monkeypatch.setattr(endings, "attempt_closed", crash)
    with pytest.raises(Crash):
        run_chain(runner, job_id, token)
    assert cancels == ["cancelled"]
    monkeypatch.undo()

    (attempt,) = rig.attempts(job_id)
    job = rig.job(job_id)
    (bill,) = [int(b["cost_micros"]) for b in rig.provider(BACKEND)["bills"]
               if b["reference"] == f"{job_id}:1"]
    assert job.status == "cancelled" and attempt.outcome == "succeeded"
    assert job.cost_micros == bill == 180_000 and rig.ledger() == (bill, 0)
    assert job.result is not None, "charged for the output, which was lost"
    assert str(job.result["output"]).endswith(f"/{attempt.external_id}.mp4")
