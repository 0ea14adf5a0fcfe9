"""SlotWaits: a released slot's waiter gets a resume step; a bad entry or a failed send never
breaks the step that released the slot."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from orchestrator.domain.breaker import BreakerState
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.service.slots import SlotWaits


class Health:
    def __init__(self, waiter: str | None) -> None:
        self.waiter = waiter
        self.stopped: list[tuple[tuple[str, ...], str]] = []

    def record_and_wake(self, name: str, outcome: Outcome, **kw: Any
                        ) -> tuple[BreakerState, str | None]:
        return BreakerState(), self.waiter

    def stop_waiting(self, names: Iterable[str], member: str) -> None:
        self.stopped.append((tuple(names), member))


class Enqueue:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.resumed: list[tuple[uuid.UUID, uuid.UUID, str]] = []

    def resume(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
               countdown_s: float = 0.0) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.resumed.append((job_id, token, priority))


def slots(health: Health, enqueue: Enqueue) -> SlotWaits:
    return SlotWaits(health, enqueue, PollPolicy(), lambda: ("a", "b"))  # type: ignore[arg-type]


def test_the_woken_job_gets_a_resume_step_on_its_priority() -> None:
    job, token = uuid.uuid4(), uuid.uuid4()
    enqueue = Enqueue()
    slots(Health(f"{job} {token} high"), enqueue).released("a", Outcome.SUCCESS, slot="s")
    assert enqueue.resumed == [(job, token, "high")]


@pytest.mark.parametrize("waiter", ["not-a-member", "x y z", "a b c d"])
def test_a_bad_waiting_entry_is_logged_and_the_step_goes_on(
    waiter: str, caplog: pytest.LogCaptureFixture
) -> None:
    enqueue = Enqueue()
    with caplog.at_level(logging.WARNING, logger="orchestrator.service.slots"):
        slots(Health(waiter), enqueue).released("a", Outcome.SUCCESS, slot="s")
    assert enqueue.resumed == []
    assert "waking a job waiting for a slot failed" in caplog.text


def test_a_failed_send_is_logged_and_the_step_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.service.slots"):
        slots(Health(f"{uuid.uuid4()} {uuid.uuid4()} normal"), Enqueue(fail=True)).released(
            "a", Outcome.SUCCESS, slot="s")
    assert "waking a job waiting for a slot failed" in caplog.text


def test_stop_waiting_leaves_every_catalogued_backends_list() -> None:
    health, job, token = Health(None), uuid.uuid4(), uuid.uuid4()
    slots(health, Enqueue()).stop_waiting(job, token, "low")
    assert health.stopped == [(("a", "b"), f"{job} {token} low")]
