"""What can go wrong when talking to a backend, part of the one error tree.

    OrchestratorError            (orchestrator.errors)
    └── BackendError             a backend call did not give a usable answer
        ├── TransientError       worth retrying: 429, 408, 5xx, timeouts, connection errors
        ├── OutcomeUnknown       a submission reached the provider and its answer was lost
        ├── BackendFault         the backend misbehaved: malformed answer, auth, 404, other 4xx
        │   └── LookupUnsupported  the provider cannot find work by our reference
        └── JobFault             the job itself was refused: invalid input, content policy

Stable codes (``exc.code``):

    TransientError  rate_limited (429, ``retry_after_s`` from Retry-After or
                    retry-after-ms, as on a 5xx), backend_timeout, backend_connection,
                    backend_unavailable (502/503/504), backend_server_error (500 and other
                    5xx), idempotency_conflict (409 to a submission: the provider knows its
                    key; delivered)
    BackendFault    malformed_response, backend_auth (401/403), backend_payment_required
                    (402, or a 429 whose code says out of quota or credit),
                    backend_config (a 4xx whose code says the backend's model or a parameter
                    it is sent is wrong: unsupported_parameter, model_not_found, …),
                    backend_redirect (3xx: not followed), backend_not_found (404: an id
                    the backend gave us and lost, or a wrong base URL), prediction_failed (a
                    prediction ended ``failed`` without a job-fault code), unsupported_kind,
                    poll_unsupported
    OutcomeUnknown  outcome_unknown (the request was sent, then the connection broke or no
                    answer came in time, and a repeat could be paid twice: see below)
    JobFault        invalid_input (400/422), content_policy, rejected (any other 4xx)

A TransientError says whether the request was ``delivered``: False when it never reached the
provider whole (no connection, or the connection broke while sending it) or the provider
answered it (429, 408, 500, 503: nothing was done); True when it was sent and no answer came,
or (for a submission) a gateway answered 502, 504, 520 or 524 for a provider that may have
taken it, or the provider answered 409 for its Idempotency-Key. A
delivered submission may have created paid work, so it is repeated within the call only on a
backend that de-duplicates requests still in flight (catalogue ``idempotency: inflight``);
elsewhere the call ends in OutcomeUnknown and the job chain reconciles the attempt with the
provider (``orchestrator.service.reconcile``).

``outcome`` is the domain's ``orchestrator.domain.outcomes.Outcome`` (JobFault: job_fault;
rate_limited: transient; everything else: backend_fault), and ``strike`` is
``outcome.is_strike``: whether the error counts towards the backend's three-strike breaker
(DESIGN §4). The HTTP status classes follow ``outcomes.classify_http`` except 404, which is the
backend's fault here.

Messages and ``details`` are safe to show and log: they carry the backend name, HTTP status,
the provider's error code and offending parameter name — never a prompt, a provider's free-text
message (which may echo the prompt) or an API key.
"""

from __future__ import annotations

from typing import Any

from orchestrator.domain.outcomes import Outcome
from orchestrator.errors import OrchestratorError


class BackendError(OrchestratorError):
    code = "backend_error"
    outcome = Outcome.BACKEND_FAULT

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        backend: str | None = None,
        status_code: int | None = None,
        **details: Any,
    ) -> None:
        if backend is not None:
            details["backend"] = backend
        if status_code is not None:
            details["status_code"] = status_code
        super().__init__(message, **details)
        if code is not None:
            self.code = code
        self.backend = backend
        self.status_code = status_code
        self.attempts = 1

    @property
    def strike(self) -> bool:
        return self.outcome.is_strike

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class TransientError(BackendError):
    """Retryable; raised to the caller once the in-call retries are spent."""

    code = "backend_unavailable"

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, delivered: bool = False,
        **kwargs: Any,
    ) -> None:
        if retry_after_s is not None:
            kwargs["retry_after_s"] = retry_after_s
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        self.delivered = delivered
        if self.code == "rate_limited":
            self.outcome = Outcome.TRANSIENT


class OutcomeUnknown(BackendError):
    """A submission was sent and its answer lost: the provider may have created (and will
    bill) the work. Never repeated blindly; the chain asks the provider what happened."""

    code = "outcome_unknown"


class BackendFault(BackendError):
    """Not retryable on this backend, but another backend may well do the job."""

    code = "malformed_response"


class LookupUnsupported(BackendFault):
    """The protocol (or this provider) cannot find a submission by our reference."""

    code = "lookup_unsupported"


class JobFault(BackendError):
    """The job is at fault: failing over would only be refused again. Not a strike."""

    code = "invalid_input"
    outcome = Outcome.JOB_FAULT
