"""What can go wrong when talking to a backend, part of the one error tree.

    OrchestratorError            (orchestrator.errors)
    └── BackendError             a backend call did not give a usable answer
        ├── TransientError       worth retrying: 429, 408, 5xx, timeouts, connection errors
        ├── BackendFault         the backend misbehaved: malformed answer, auth, 404, other 4xx
        └── JobFault             the job itself was refused: invalid input, content policy

Stable codes (``exc.code``):

    TransientError  rate_limited (429, ``retry_after_s`` from Retry-After), backend_timeout,
                    backend_connection, backend_unavailable (502/503/504), backend_server_error
                    (500 and other 5xx)
    BackendFault    malformed_response, backend_auth (401/403), backend_not_found (404),
                    backend_rejected (other 4xx), prediction_failed (a prediction ended
                    ``failed`` without a job-fault code), poll_unsupported
    JobFault        invalid_input (400/422), content_policy

``strike`` says whether the error counts towards the backend's three-strike breaker (DESIGN §4):
true for everything that is the backend's fault; false for ``JobFault`` and for ``rate_limited``
(the backend is healthy, only busy).

Messages and ``details`` are safe to show and log: they carry the backend name, HTTP status,
the provider's error code and offending parameter name — never a prompt, a provider's free-text
message (which may echo the prompt) or an API key.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import OrchestratorError


class BackendError(OrchestratorError):
    code = "backend_error"
    strike = True

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class TransientError(BackendError):
    """Retryable; raised to the caller once the in-call retries are spent."""

    code = "backend_unavailable"

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, **kwargs: Any
    ) -> None:
        if retry_after_s is not None:
            kwargs["retry_after_s"] = retry_after_s
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s
        self.strike = self.code != "rate_limited"


class BackendFault(BackendError):
    """Not retryable on this backend, but another backend may well do the job."""

    code = "malformed_response"


class JobFault(BackendError):
    """The job is at fault: failing over would only be refused again. Not a strike."""

    code = "invalid_input"
    strike = False
