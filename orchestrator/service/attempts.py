"""The job chain's vocabulary (pure): what a step says should happen next (``Next``), what
opening an attempt found (``Opened``), how an attempt ends (``Closing``), and the helpers that
name an attempt's key at the provider, its errors, its bill and its worst case.

Shared by the chain (``service.runner``), the reconciliation of unanswered submissions
(``service.reconcile``), the conclusion of attempts that outlived their job's end
(``service.conclude``) and the ledger endings (``service.endings``). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.backends.base import PollResult
from orchestrator.backends.errors import BackendError, TransientError
from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.pricing import NotPriceable, estimate_micros
from orchestrator.ledger.endings import ClosingAttempt
from orchestrator.store import jobs as repo


@dataclass(frozen=True, slots=True)
class Next:
    poll_in_s: float | None = None  # None: the chain is over
    resume: bool = False  # the job waits for a slot: the next step is a resume (see advance)

    @property
    def done(self) -> bool:
        return self.poll_in_s is None


DONE = Next()


@dataclass(frozen=True, slots=True)
class Opened:
    """What ``Opener.open_next`` did: opened ``attempt``; found it opened by a duplicate step (or
    the job no longer running); or found no backend that would take the job (``refused``
    says why; when ``full`` names backends that only lacked a free slot, or
    ``blocked_until`` says when a breaker that refused it will let a call through, the job
    waits)."""

    attempt: repo.AttemptRow | None = None
    duplicate: bool = False
    refused: tuple[str, ...] = ()
    full: tuple[str, ...] = ()  # the backends that refused for want of a slot
    blocked_until: float | None = None  # the earliest end of a breaker's refusal (epoch s)


@dataclass(frozen=True, slots=True)
class Closing:
    """How an attempt ends: its row's outcome, the breaker's outcome, the error and cost."""

    status: str  # succeeded | failed | cancelled | timeout | uncertain
    outcome: Outcome
    cost: int | None = None
    error: BackendError | None = None
    # an uncertain attempt's possible charge; or the worst case an unpriced ending is charged
    possible: int | None = None

    def row(self, attempt: repo.AttemptRow, external_id: str | None = None) -> ClosingAttempt:
        return ClosingAttempt(
            attempt.id, self.status, self.outcome.value, self.cost, external_id, self.possible,
            self.error.code if self.error else None, self.error.message if self.error else None)


def reference(attempt: repo.AttemptRow) -> str:
    """The attempt's idempotency key at the provider: the same for every repeat."""
    return f"{attempt.job_id}:{attempt.number}"


def failure(attempt: repo.AttemptRow, res: PollResult) -> BackendError:
    if res.status == "cancelled":
        return TransientError(f"{attempt.backend} cancelled the job",
                              code="cancelled_by_backend", backend=attempt.backend)
    return res.error or TransientError(f"{attempt.backend} reported failure",
                                       code="prediction_failed", backend=attempt.backend)


def billed(cat: Catalogue, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult) -> int:
    """What an ended attempt is charged: the bill read from the provider's answer, or, for a
    billed ending that carried none we can read (``unpriced``: a success, or a refusal),
    its worst case (:func:`unpriced_charge`)."""
    if res.unpriced:
        return unpriced_charge(cat, job, attempt.backend)
    return res.cost_micros or 0


def unpriced_charge(cat: Catalogue, job: repo.JobRow, backend: str) -> int:
    """The charge for work a provider did without saying what it cost: the attempt's worst
    case as the job's route estimated it at admission (what its hold was made of; priced
    now only when the route has no figure), never more than the job's hold. (An earlier
    attempt's bill of the same job may still take the total over it, as any bill can.)"""
    estimate: int | None = None
    for c in (job.route or {}).get("candidates", []):
        micros = c.get("estimated_cost_micros")
        if c.get("backend") == backend and isinstance(micros, int) and micros >= 0:
            estimate = micros
            break
    if estimate is None:
        estimate = possible_cost(cat, job, backend)
    return min(estimate, job.estimated_cost_micros)


def closing_of(cat: Catalogue, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult
               ) -> Closing:
    """An ended job's attempt as the provider last reported it, with its bill. An unpriced
    one's charge is also its ``possible`` cost: the attempt shows it was a worst case."""
    cost = billed(cat, job, attempt, res)
    possible = cost if res.unpriced else None
    if res.status == "succeeded":
        return Closing("succeeded", Outcome.SUCCESS, cost, possible=possible)
    if res.status == "cancelled":
        return Closing("cancelled", Outcome.CANCELLED, res.cost_micros or 0)
    return Closing("failed", Outcome.CANCELLED, cost, failure(attempt, res), possible=possible)


def overrun(attempt: repo.AttemptRow, backend: BackendSpec) -> BackendError:
    return TransientError(
        f"attempt on {attempt.backend} ran past start_to_close "
        f"({backend.timeouts.start_to_close_s:.0f} s)",
        code="start_to_close_timeout", backend=attempt.backend)


def unknown(attempt: repo.AttemptRow) -> BackendError:
    return TransientError(
        f"{attempt.backend}: the submission's answer was lost and the provider cannot say "
        "what became of it", code="outcome_unknown", backend=attempt.backend)


def removed(attempt: repo.AttemptRow) -> BackendError:
    return TransientError(f"{attempt.backend} is no longer in the catalogue",
                          code="backend_removed", backend=attempt.backend)


def possible_cost(cat: Catalogue, job: repo.JobRow, backend: str) -> int:
    """An attempt's worst case on ``backend``: priced now, or as the job's route priced it (a
    backend gone from the catalogue), or the job's own estimate."""
    if backend in cat:
        try:
            return estimate_micros(cat.get(backend), JobSpec.model_validate(job.spec))
        except NotPriceable:
            pass
    for c in (job.route or {}).get("candidates", []):
        if c.get("backend") == backend and c.get("estimated_cost_usd") is not None:
            return round(float(c["estimated_cost_usd"]) * 1_000_000)
    return job.estimated_cost_micros


RATE_LIMIT_BACKOFF_MAX_S = 300.0


def turned_away(attempt: repo.AttemptRow) -> bool:
    """Whether the provider refused the attempt's create for its rate limit (a 429 that
    outlasted the call's own retries): nothing was made, so the backend may be asked again."""
    return (attempt.external_id is None and attempt.outcome == "failed"
            and attempt.error_code == "rate_limited")


def rate_limit_wait(error: BackendError | None, refusals: int) -> float:
    """How long a job whose every backend turned it away waits before asking again: an
    exponential backoff over the number of refusals so far (2, 4, … 300 s), or the provider's
    ``Retry-After`` when that is longer. A limit that lasts costs a job an attempt row every
    5 minutes at most, whatever short Retry-After the provider keeps sending."""
    backoff = min(RATE_LIMIT_BACKOFF_MAX_S, 2.0 ** max(1, refusals))
    after = error.retry_after_s if isinstance(error, TransientError) else None
    return backoff if after is None else max(after, backoff)
