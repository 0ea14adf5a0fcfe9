"""What the chain does with a submission whose answer was lost (domain.reconcile)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain.reconcile import Move, Unanswered, after_lookup_missed, without_lookup

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def unanswered(idempotency: str, *, at_s: float, live: bool = True) -> Unanswered:
    """Sent at T0 with a 100 s call window; given up on after 600 s."""
    return Unanswered(idempotency, live, T0 + timedelta(seconds=at_s),
                      T0 + timedelta(seconds=100), T0 + timedelta(seconds=600))


@pytest.mark.parametrize(("idempotency", "at_s", "move"), [
    ("inflight", 1, Move.REPEAT),  # the provider joins the first request, even now
    ("inflight", 200, Move.REPEAT),
    ("completed", 1, Move.WAIT),  # a repeat while the first may run would be paid twice
    ("completed", 100, Move.REPEAT),
    ("none", 1, Move.UNCERTAIN),  # every repeat is paid: never sent again
    ("none", 200, Move.UNCERTAIN),
    ("inflight", 600, Move.UNCERTAIN),  # nobody reconciles forever
    ("completed", 601, Move.UNCERTAIN),
])
def test_without_a_lookup_the_providers_guarantee_decides(
    idempotency: str, at_s: float, move: Move,
) -> None:
    assert without_lookup(unanswered(idempotency, at_s=at_s)) is move


@pytest.mark.parametrize("idempotency", ["inflight", "completed", "none"])
def test_an_ended_job_is_never_sent_anything_again(idempotency: str) -> None:
    assert without_lookup(unanswered(idempotency, at_s=1, live=False)) is Move.WAIT
    assert without_lookup(unanswered(idempotency, at_s=150, live=False)) is Move.UNCERTAIN
    assert after_lookup_missed(unanswered(idempotency, at_s=150, live=False)) is (
        Move.NOT_CREATED)


def test_a_lookup_that_finds_nothing_is_believed_once_the_request_cannot_arrive() -> None:
    assert after_lookup_missed(unanswered("none", at_s=10)) is Move.WAIT
    assert after_lookup_missed(unanswered("none", at_s=100)) is Move.REPEAT
    assert after_lookup_missed(unanswered("none", at_s=700)) is Move.UNCERTAIN


@pytest.mark.parametrize("idempotency", ["inflight", "completed", "none"])
def test_an_unreadable_answer_is_never_repeated_without_a_lookup(idempotency: str) -> None:
    """The provider took the request (2xx): a repeat gets the same unreadable answer or is
    made and billed again, so without a lookup the attempt is uncertain at once."""
    for at_s in (1, 150):
        garbled = replace(unanswered(idempotency, at_s=at_s), answered=True)
        assert without_lookup(garbled) is Move.UNCERTAIN
    # a lookup that finds nothing still says nothing was made (a proxy's error page)
    missed = replace(unanswered(idempotency, at_s=150), answered=True)
    assert after_lookup_missed(missed) is Move.REPEAT
