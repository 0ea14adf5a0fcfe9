"""What to do with an attempt whose submission may have reached the provider but whose answer
never reached us (pure): the provider's word decides, never our own bookkeeping.

Such an attempt is open with no external id: its call raised ``OutcomeUnknown`` (sent, then
the connection broke or no answer came), or the worker making it died, or the sweeper revived
its chain. The chain first asks the provider where the protocol can (``lookup`` by the
attempt's idempotency key); then, or when it cannot ask:

    REPEAT       send the same request again with the same key: the provider answers it from
                 the first (``inflight``; ``completed`` once the first must have finished), or
                 the lookup showed that nothing was created
    WAIT         not yet: the first request may still be running at the provider; look again
                 at ``window_end`` (its call window after it was last sent)
    UNCERTAIN    nothing can tell: close the attempt ``uncertain`` with its possible charge,
                 never send it to that backend again, and fail over (at once, without a
                 lookup, when the provider answered 2xx and we could not read it: a repeat
                 would be answered the same way, or made and billed again)
    NOT_CREATED  the lookup shows the provider created nothing, and the job has ended: close
                 the attempt at no cost

A job that has ended (a cancel, its deadline) is never sent anything new: a repeat could
create paid work nobody wants any more. Past ``give_up_at`` every attempt is UNCERTAIN, so no
chain reconciles forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Move(StrEnum):
    REPEAT = "repeat"
    WAIT = "wait"
    UNCERTAIN = "uncertain"
    NOT_CREATED = "not_created"


@dataclass(frozen=True, slots=True)
class Unanswered:
    """An attempt whose submission went unanswered, as the chain finds it at ``now``."""

    idempotency: str  # the backend's catalogue guarantee: inflight | completed | none
    job_live: bool
    now: datetime
    window_end: datetime  # the first request cannot still be running after this
    give_up_at: datetime
    # the provider answered 2xx and the answer could not be read: it took the request, and
    # would answer a repeat the same way (inflight, completed) or make and bill it again
    answered: bool = False

    @property
    def may_still_run(self) -> bool:
        return self.now < self.window_end


def without_lookup(a: Unanswered) -> Move:
    """The provider cannot be asked: what its guarantee for a repeated key allows."""
    if a.now >= a.give_up_at or a.answered:
        return Move.UNCERTAIN
    if not a.job_live:
        return Move.WAIT if a.may_still_run else Move.UNCERTAIN
    if a.idempotency == "inflight":
        return Move.REPEAT
    if a.idempotency == "completed":
        return Move.WAIT if a.may_still_run else Move.REPEAT
    return Move.UNCERTAIN


def after_lookup_missed(a: Unanswered) -> Move:
    """The provider lists nothing under the attempt's key."""
    if a.now >= a.give_up_at:
        return Move.UNCERTAIN
    if a.may_still_run:  # a request still on its way may yet create it
        return Move.WAIT
    return Move.REPEAT if a.job_live else Move.NOT_CREATED
