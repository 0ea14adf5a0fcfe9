"""The SDK's error tree. Every error the SDK raises is an ``ApiError`` (but for what
``events()`` lets through from its stream, as docs/api.md says: ``httpx.TransportError``
after repeated cuts, ``httpx.ReadTimeout`` at its ``timeout``; ``wait()`` turns those into
polling)::

    ApiError                     status, code, message, details, idempotency_key
    ├── InvalidRequest           400/422 invalid_request: the job spec or a parameter is wrong
    ├── Unauthorized             401 unauthorized: missing or unknown API key
    ├── BudgetExceeded           402 budget_exceeded: a budget cannot cover this job
    ├── Forbidden                403 forbidden: the key may not do this (admin only)
    ├── NotFound                 404 not_found: no such job (or not yours)
    ├── Conflict                 409 conflict: idempotency key reused with another body, ...
    │   └── NotReadyYet          409 not_ready_yet: a result asked for before the job succeeded
    │                            (or of one failed, or cancelled with no output)
    ├── ResultExpired            410 result_expired: the result was dropped after retention
    ├── NoEligibleBackend        no_eligible_backend: routing left no candidate
    ├── RateLimited              429 rate_limited: ``retry_after`` seconds (or None)
    ├── ServerError              5xx: the server failed (after the SDK's own retries)
    │   └── Unavailable          503 unavailable: its database or Redis cannot be reached
    │                            now; ``retry_after`` seconds (or None)
    ├── ApiConnectionError       no usable HTTP response: none at all, or one httpx could not
    │                            read (after the SDK's own retries)
    └── WaitTimeout              ``wait()`` gave up; also a ``TimeoutError``; ``job`` = last seen

Errors are built from the API's envelope ``{"error": {"code", "message", "details"}}``; the
``code`` picks the class, the HTTP status is the fallback when the body is not an envelope.
Messages never contain the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from orchestrator.client.retry_after import parse_retry_after

if TYPE_CHECKING:
    from orchestrator.client.models import Job


class ApiError(Exception):
    """Base of every SDK error. ``status`` is the HTTP status (0 when there was no response).
    ``idempotency_key``: on an error from ``submit``, the key the submission was sent with
    (None otherwise); the job may exist all the same, and a resubmission with that key either
    returns it or creates it once."""

    default_code = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.details: dict[str, Any] = details or {}
        self.idempotency_key: str | None = None

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, " \
               f"message={self.message!r})"


class InvalidRequest(ApiError):
    default_code = "invalid_request"


class Unauthorized(ApiError):
    default_code = "unauthorized"


class BudgetExceeded(ApiError):
    default_code = "budget_exceeded"

    @property
    def scope(self) -> str | None:
        v = self.details.get("scope")
        return v if isinstance(v, str) else None

    @property
    def period(self) -> str | None:
        v = self.details.get("period")
        return v if isinstance(v, str) else None

    @property
    def remaining_usd(self) -> float | None:
        v = self.details.get("remaining_usd")
        return float(v) if isinstance(v, int | float) else None

    @property
    def requested_usd(self) -> float | None:
        v = self.details.get("requested_usd")
        return float(v) if isinstance(v, int | float) else None


class Forbidden(ApiError):
    default_code = "forbidden"


class NotFound(ApiError):
    default_code = "not_found"


class Conflict(ApiError):
    default_code = "conflict"


class NoEligibleBackend(ApiError):
    default_code = "no_eligible_backend"


class RateLimited(ApiError):
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(ApiError):
    default_code = "server_error"


class Unavailable(ServerError):
    """503 ``unavailable``: the API's PostgreSQL or Redis is down or restarting (or the API is
    at its connection limit); ``retry_after`` is the server's ``Retry-After``."""

    default_code = "unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ApiConnectionError(ApiError):
    default_code = "connection_error"


class WaitTimeout(ApiError, TimeoutError):
    default_code = "wait_timeout"

    def __init__(self, message: str, *, job: Job | None = None) -> None:
        super().__init__(message)
        self.job = job


class NotReadyYet(Conflict):
    """409 ``not_ready_yet``: ``result()`` of a job that has not succeeded (yet), or that
    failed, or was cancelled before its provider finished; ``details["status"]`` is the job's
    status."""

    default_code = "not_ready_yet"


class ResultExpired(ApiError):
    """410 ``result_expired``: the job had a result, and it was dropped after the
    server's retention (``ORCH_RESULT_RETENTION_DAYS``); its cost stays in the ledger."""

    default_code = "result_expired"


_BY_CODE: dict[str, type[ApiError]] = {
    "invalid_request": InvalidRequest,
    "unauthorized": Unauthorized,
    "budget_exceeded": BudgetExceeded,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "no_eligible_backend": NoEligibleBackend,
    "rate_limited": RateLimited,
    "unavailable": Unavailable,
    "not_ready_yet": NotReadyYet,
    "result_expired": ResultExpired,
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    402: BudgetExceeded,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    410: ResultExpired,
    429: RateLimited,
}


def _envelope(response: httpx.Response) -> tuple[str | None, str | None, dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return None, None, {}
    if not isinstance(body, dict):
        return None, None, {}
    err = body.get("error")
    if isinstance(err, dict):
        code, message, details = err.get("code"), err.get("message"), err.get("details")
        return (code if isinstance(code, str) else None,
                message if isinstance(message, str) else None,
                details if isinstance(details, dict) else {})
    # FastAPI's own {"detail": ...} (e.g. an unrouted path) — keep it readable
    detail = body.get("detail")
    if isinstance(detail, str):
        return None, detail, {}
    return None, None, {}


def _details_retry_after(details: dict[str, Any]) -> float | None:
    """``details.retry_after_s`` (what the server sends), or ``retry_after`` (an alias)."""
    for key in ("retry_after_s", "retry_after"):
        value = details.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


def _redirect(response: httpx.Response) -> str:
    """For a 3xx (the SDK follows no redirect: a POST must not become a GET elsewhere), where
    it points: its origin only, as the rest may carry a token; a proxy sending http to https
    is the usual one."""
    if not response.is_redirect:
        return ""
    try:
        target = response.url.join(response.headers["Location"])
    except (httpx.InvalidURL, KeyError, ValueError):
        return ""
    if target.scheme not in ("http", "https") or not target.host:
        return ""
    host = f"[{target.host}]" if ":" in target.host else target.host
    port = f":{target.port}" if target.port is not None else ""
    return (f": the API URL redirects to {target.scheme}://{host}{port}, and the SDK follows "
            "no redirect (give the URL it redirects to)")


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for a non-2xx response."""
    status = response.status_code
    code, message, details = _envelope(response)
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    if not message:
        message = f"HTTP {status} {response.reason_phrase}".strip() + _redirect(response)
    if cls is RateLimited or cls is Unavailable:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:  # the header was stripped (a proxy): the envelope says it too
            retry_after = _details_retry_after(details)
        return cls(message, retry_after=retry_after, status=status, code=code,
                   details=details)
    return cls(message, status=status, code=code, details=details)
