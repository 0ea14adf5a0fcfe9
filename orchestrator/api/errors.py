"""The error envelope ``{"error": {"code", "message", "details"}}`` and the code → HTTP status map.

    invalid_request       422   malformed body, query or path; an input field no backend that
                                could run the job accepts (``details.field`` names the field)
    unauthorized          401   no, malformed, unknown or revoked API key (answered before the
                                body is read; ``WWW-Authenticate: Bearer``)
    forbidden             403   an admin route called with a tenant key
    not_found             404   no such job, or another tenant's job; unknown route
    conflict              409   same Idempotency-Key with another body; a hold already final
    budget_exceeded       402   a covering budget cannot hold the job's worst case (a tenant
                                key sees the remaining amount of its own budgets only)
    no_eligible_backend   422   routing left no candidate: the job *as asked* cannot run
                                (kind/tier/max_cost/pinned backend); the reasons are in details
    rate_limited          429   per-tenant request rate, or failed authentications per client
                                address, exceeded (``Retry-After`` header)
    payload_too_large     413   request body above the configured limit
    request_timeout       408   the body (or the request head) did not arrive in time
    headers_too_large     431   request line and headers above the configured limit
    method_not_allowed    405
    unsupported_media_type 415  a body that fails validation sent as another Content-Type
                                than JSON (a form, text/plain), or with none; a body with a
                                Content-Encoding (``Accept-Encoding: identity``; .encoding)
    bad_request           400   a request the HTTP parser refuses, or HTTP/1.1 without exactly
                                one Host (.protocol; the connection is closed)
    http_version_not_supported 505  a request line of another HTTP version than 1.0 or 1.1
    not_ready             503   /readyz: database or Redis unreachable
    secret_key_missing    503   a channel secret must be stored and no ORCH_SECRET_KEY (or key
                                file) is configured: nothing is stored in plain text
    secret_unreadable     409   a stored secret (the tenant's webhook secret) was sealed with a
                                key this server does not have (a backup restored without the
                                old ``secret.key``/``ORCH_SECRET_KEY``): restore that key, or
                                set a new secret (``PUT /v1/webhooks``)
    unavailable           503   PostgreSQL or Redis cannot be reached now (``details.dependency``
                                names which), the API is at its connection limit, or this
                                process at its event streams' (``ORCH_API_MAX_STREAMS``);
                                always with ``Retry-After`` (orchestrator.outage)
    not_ready_yet         409   a job's result asked for before the job succeeded, or of a job
                                that failed, or was cancelled with no output (one cancelled or
                                failed by its deadline whose provider finished anyway has it)
    result_expired        410   a result dropped after ``ORCH_RESULT_RETENTION_DAYS``
    internal_error        500   anything else; no details, never a stack trace
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api.bodies import DuplicateName
from orchestrator.api.paths import STREAM_PATHS, flat_routes
from orchestrator.api.principal import principal_of, sees_budget
from orchestrator.domain.money import format_usd, micros_to_usd
from orchestrator.errors import BudgetExceeded, OrchestratorError, RequestError, Unavailable
from orchestrator.outage import TRANSIENT, unavailable

log = logging.getLogger("orchestrator.api")

STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "budget_exceeded": 402,
    "no_eligible_backend": 422,
    "rate_limited": 429,
    "payload_too_large": 413,
    "request_timeout": 408,
    "headers_too_large": 431,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "bad_request": 400,
    "http_version_not_supported": 505,
    "not_ready": 503,
    "secret_key_missing": 503,
    "secret_unreadable": 409,
    "unavailable": 503,
    "not_ready_yet": 409,
    "result_expired": 410,
}


class Unauthorized(RequestError):
    code = "unauthorized"


class Forbidden(RequestError):
    code = "forbidden"


class RateLimited(RequestError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, limit: int, window_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s, limit=limit, window_s=window_s)
        self.retry_after_s = retry_after_s


class StreamsFull(RequestError):
    """This process holds ``ORCH_API_MAX_STREAMS`` event streams: retry in a second."""

    code = "unavailable"
    retry_after_s = 1


class ResultNotReady(RequestError):
    """``GET /v1/jobs/{id}/result`` of a job that has no result: not succeeded (yet), failed,
    or cancelled or failed by its deadline with no output from its provider."""

    code = "not_ready_yet"


class ResultExpired(RequestError):
    """The result was dropped by the retention sweeper (``ORCH_RESULT_RETENTION_DAYS``)."""

    code = "result_expired"


class BodyRefused(StarletteHTTPException):
    """A body limit's 408 or 413, raised from ``receive`` by the middleware (FastAPI re-raises
    HTTPExceptions met while reading the body): answered with ``details`` and
    ``Connection: close``, as the rest of the body is not read."""

    def __init__(self, status_code: int, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(status_code, message, headers={"Connection": "close"})
        self.details = details


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def envelope_bytes(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The envelope as a body sent below the app (the protocol, ASGI middleware): compact
    JSON, as the app's JSONResponse writes it."""
    return json.dumps(envelope(code, message, details), separators=(",", ":")).encode()


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(envelope(code, message, details), status_code=status, headers=headers)


def log_outage(down: Unavailable, cause: BaseException) -> None:
    log.warning("%s unavailable: %s", down.dependency, type(cause).__name__,
                extra={"dependency": down.dependency, "error": type(cause).__name__})


def unavailable_response(down: Unavailable, cause: BaseException) -> JSONResponse:
    """503 ``unavailable`` with ``Retry-After``; only the cause's type is logged (a driver's
    message may quote a statement's parameters)."""
    log_outage(down, cause)
    return error_response(503, down.code, down.message, dict(down.details),
                          {"Retry-After": str(down.retry_after_s)})


def _budget_refusal(exc: BudgetExceeded, shown: bool) -> tuple[str, dict[str, Any]]:
    """The 402's message and details. ``shown`` False (a tenant refused by a budget it may not
    see, e.g. ``global``): the budget is named, but not what remains of it."""
    d = exc.details
    start = d.get("period_start")
    message = exc.message if shown else (
        f"budget {exc.scope} ({exc.period} from {start}) cannot hold this job's worst case "
        f"of {format_usd(exc.requested_micros)}")
    return message, {
        "budget": {"scope": exc.scope, "period": exc.period, "period_start": start},
        "scope": exc.scope,
        "period": exc.period,
        "period_start": start,
        "remaining_usd": micros_to_usd(exc.remaining_micros) if shown else None,
        "requested_usd": micros_to_usd(exc.requested_micros),
    }


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """A field's path as the documented ones read: names joined by dots, a list's items by
    their index in brackets (``channels[1].type``, never ``channels.1.type``)."""
    parts = list(loc)
    body = bool(parts) and parts[0] == "body"
    if body:
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int) and path:
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or ("body" if body else "")


# pydantic names Python's types; a client sent JSON, which has objects and lists (arrays)
_JSON_TYPES = {
    "dict_type": "Input should be a valid object",
    "model_type": "Input should be a valid object",
    "model_attributes_type": "Input should be a valid object",
    "tuple_type": "Input should be a valid list",
}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """One readable line naming the first bad field, and every field's error (never the
    submitted value: it may hold a prompt)."""
    items = []
    for e in errors:
        msg = _JSON_TYPES.get(str(e.get("type")))
        msg = msg or str(e.get("msg", "invalid")).removeprefix("Value error, ")
        field = _field(e.get("loc", ()))
        if e.get("type") == "json_invalid":  # its loc is ("body", <character offset>)
            field, msg = "body", "not valid JSON"
        # a model-level check that names its own field, or a field's naming a member or item
        if ": " in msg and (field == "body" or msg.startswith((f"{field}.", f"{field}["))):
            field, msg = msg.split(": ", 1)
        items.append({"field": field, "message": msg})
    if not items:
        return "invalid request", []
    first = items[0]
    return f"{first['field']}: {first['message']}", items


def unreadable_body(cause: BaseException | None) -> str:
    """What was wrong with a body FastAPI could not read as JSON (its 400 carries the
    reader's error as ``__cause__``): nested beyond what the reader follows, an integer
    beyond Python's limit on digits, an object naming a field twice, or bytes that are not
    UTF-8."""
    if isinstance(cause, RecursionError):
        return "JSON nested too deeply"
    if isinstance(cause, DuplicateName):
        return str(cause)
    if isinstance(cause, ValueError) and "digits" in str(cause):
        # "Exceeds the limit (4300 digits) for integer string conversion"
        return f"a number has too many digits (at most {sys.get_int_max_str_digits()})"
    return "not readable as UTF-8 JSON"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the envelope."""

    @app.exception_handler(OrchestratorError)
    async def _orchestrator(request: Request, exc: OrchestratorError) -> JSONResponse:
        status = STATUS_BY_CODE.get(exc.code)
        if status is None:
            log.error("unhandled orchestrator error", extra={"error": type(exc).__name__,
                                                             "code": exc.code})
            return error_response(500, "internal_error", "internal error")
        headers = None
        message, details = exc.message, dict(exc.details)
        if isinstance(exc, BudgetExceeded):
            p = principal_of(request.scope)
            message, details = _budget_refusal(exc, p is not None and sees_budget(p, exc.scope))
        if isinstance(exc, RateLimited | Unavailable | StreamsFull):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(status, exc.code, message, details, headers)

    async def _outage(_: Request, exc: Exception) -> JSONResponse:
        down = unavailable(exc)
        assert down is not None  # registered for TRANSIENT only
        return unavailable_response(down, exc)

    for cls in TRANSIENT:  # PostgreSQL or Redis down: 503, never 500
        app.add_exception_handler(cls, _outage)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        sent = request.headers.get("content-type")
        media = (sent or "").split(";")[0].strip().lower()
        about_body = [e for e in exc.errors() if tuple(e.get("loc", ()))[:1] == ("body",)]
        # a body sent without a Content-Type is not read as JSON: said so, unless there was
        # no body at all (that is a missing field)
        unread = sent is not None or any(e.get("type") != "missing" for e in about_body)
        if about_body and unread and not (media == "application/json"
                                          or media.endswith("+json")):
            # a form or text/plain body (curl -d sends a form): name that, not a field
            what = f"not {media[:60] or 'empty'}" if sent is not None else "and none was sent"
            return error_response(415, "unsupported_media_type",
                                  f"the body must be JSON (Content-Type: application/json), "
                                  f"{what}", {"field": "body"})
        message, items = validation_message(list(exc.errors()))
        details: dict[str, Any] = {"errors": items}
        if items:  # the first bad field, as an input field refused at the door names it
            details = {"field": items[0]["field"], **details}
        return error_response(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:  # Starlette's Allow names the first matching route's only
            return error_response(405, "method_not_allowed", "method not allowed", None,
                                  {"Allow": _allow(request, exc)})
        if exc.status_code == 400:  # FastAPI: a body it could not decode
            problem = unreadable_body(exc.__cause__)
            return error_response(422, "invalid_request", f"body: {problem}", {
                "field": "body", "errors": [{"field": "body", "message": problem}]})
        if exc.status_code == 404 and _slashed(request):
            return error_response(404, "not_found", "not found: the API's paths have no "
                                  "trailing slash (send it without)")
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
                403: "forbidden", 408: "request_timeout",
                413: "payload_too_large"}.get(exc.status_code, "http_error")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        details = exc.details if isinstance(exc, BodyRefused) else None
        return error_response(exc.status_code, code, message, details,
                              dict(exc.headers) if exc.headers else None)


def _slashed(request: Request) -> bool:
    """Whether the path is a route's with a slash added (``/v1/jobs/``): no redirect is made
    (its Location would come from the client's Host header), but the 404 says why."""
    path = request.scope["path"]
    return len(path) > 1 and path.endswith("/") and bool(_allowed(request, path.rstrip("/")))


def _allowed(request: Request, path: str | None = None) -> list[str]:
    """Every method some route of the request's path (or ``path``) answers (RFC 9110
    §15.5.6), HEAD with GET (``middleware.HeadAsGet``)."""
    path = request.scope["path"] if path is None else path
    methods: set[str] = set()
    for route in flat_routes(request.scope["router"].routes):
        if isinstance(route, APIRoute) and route.path_regex.fullmatch(path):
            methods |= route.methods or set()
    if "GET" in methods and not STREAM_PATHS.fullmatch(path):
        methods.add("HEAD")
    return sorted(methods)


def _allow(request: Request, exc: StarletteHTTPException) -> str:
    """The ``Allow`` of a 405: the API routes' methods, else what the refusing app said (the
    console's static files)."""
    return ", ".join(_allowed(request)) or (exc.headers or {}).get("Allow", "GET, HEAD")
