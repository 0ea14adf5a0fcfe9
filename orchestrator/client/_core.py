"""What ``Client`` and ``AsyncClient`` share, free of I/O: configuration from the environment,
the retry policy, and one ``Call`` per API operation (method, path, body, how to parse the
answer, whether a retry is safe). The two clients only differ in how they run a ``Call``."""

from __future__ import annotations

import math
import os
import random
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote as _quote

import httpx
import httpx_sse
from pydantic import ValidationError

from orchestrator.client.errors import (
    ApiConnectionError,
    ApiError,
    InvalidRequest,
    RateLimited,
    ServerError,
    Unavailable,
    WaitTimeout,
)
from orchestrator.client.models import (
    ApiKey,
    Backend,
    Budget,
    DeliveryPage,
    Job,
    JobEvent,
    JobResult,
    Page,
    Quote,
    WebhookDelivery,
)

T = TypeVar("T")

USER_AGENT = "orchestrator-sdk/0.1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
RETRY_STATUSES = frozenset({500, 502, 503, 504})


def resolve_base_url(base_url: str | None) -> str:
    """``base_url``, else ``ORCH_API_URL``, without its trailing slash; ValueError when
    neither gives one, or when it is not an http(s) URL with a host (``127.0.0.1:8000``
    has no scheme), said at once rather than by the first request, and never quoted: a URL
    may carry a password."""
    url = base_url or os.environ.get("ORCH_API_URL")
    if not url:
        raise ValueError("no API URL: pass base_url= or set ORCH_API_URL")
    if not is_api_url(url):
        where = "base_url" if base_url else "ORCH_API_URL"
        raise ValueError(f"{where} is not an http(s) URL with a host, such as "
                         "http://127.0.0.1:8000 (no spaces or control characters)")
    if has_credentials(url):
        where = "base_url" if base_url else "ORCH_API_URL"
        raise ValueError(f"{where} {CREDENTIALS_IN_URL}; give the key as api_key")
    return url.rstrip("/")


# httpx sends a URL's user:password as Basic authentication, which replaces the Bearer key
# (every call a 401), and its INFO log of each request quotes the password
CREDENTIALS_IN_URL = ("carries a user name or password, which would be sent in place of "
                      "the API key (the API takes only its key)")


def has_credentials(url: str) -> bool:
    """Whether ``url`` (one ``is_api_url`` accepts) carries ``user[:password]@``."""
    return bool(httpx.URL(url).userinfo)


def is_api_url(url: str) -> bool:
    """Whether httpx reads ``url`` as an http(s) URL with a host (and a port in range):
    ``127.0.0.1:8000`` has no scheme (httpx would take ``127.0.0.1`` for one)."""
    try:
        parsed = httpx.URL(url)
        return parsed.scheme in ("http", "https") and bool(parsed.host) and (
            parsed.port is None or 0 < parsed.port < 65536)
    except httpx.InvalidURL:
        return False


# What an API key may hold: printable ASCII, no space. A key read from a file with its
# newline, or one with a space or a non-ASCII character, cannot be sent in a header: httpx
# would refuse it at every request with a message that quotes the whole header, key included.
API_KEY = re.compile(r"[\x21-\x7e]+")
NOT_A_KEY = ("a space, a control character (a newline read with it from a file?) or a "
             "non-ASCII character")


def resolve_api_key(api_key: str | None) -> str | None:
    """``api_key``, else ``ORCH_API_KEY``, else None (no ``Authorization``: the API's 401);
    ValueError, never quoting the key, for one that a header cannot carry."""
    key = api_key or os.environ.get("ORCH_API_KEY") or None
    if key is not None and not API_KEY.fullmatch(key):
        where = "api_key" if api_key else "ORCH_API_KEY"
        raise ValueError(f"{where} is not an API key: it has {NOT_A_KEY}")
    return key


def headers(api_key: str | None) -> dict[str, str]:
    h = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    return h


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``retries`` retries after the first try; exponential backoff with jitter
    (``base * 2**n``, capped at ``cap``, times a factor in [0.5, 1]); the ``Retry-After`` of a
    429 or a 503 ``unavailable`` is honoured as given, unless it is longer than
    ``max_retry_after`` (then the error is raised)."""

    retries: int = DEFAULT_RETRIES
    base: float = 0.5
    cap: float = 8.0
    max_retry_after: float = 60.0
    rng: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, error: ApiError) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``; None = give up."""
        if attempt >= self.retries:
            return None
        if isinstance(error, RateLimited | Unavailable) and error.retry_after is not None:
            wait: float = error.retry_after
            return wait if wait <= self.max_retry_after else None
        return min(self.cap, self.base * 2.0**attempt) * (0.5 + self.rng() / 2)


# The least time a try under a deadline is given, even once the deadline has passed: the
# first poll of a wait() whose time ran out on the event stream still looks at the job once.
LAST_LOOK_S = 1.0


def try_timeout(configured: httpx.Timeout, deadline: float | None, now: float) -> httpx.Timeout:
    """One try's timeout: the client's, each phase capped by the time left to ``deadline``
    (at least LAST_LOOK_S), so that a try started before it cannot run 30 s past it."""
    if deadline is None:
        return configured
    cap = max(deadline - now, LAST_LOOK_S)

    def capped(phase: float | None) -> float:
        return cap if phase is None else min(phase, cap)

    return httpx.Timeout(connect=capped(configured.connect), read=capped(configured.read),
                         write=capped(configured.write), pool=capped(configured.pool))


def pause_before_retry(delay: float | None, deadline: float | None, now: float
                       ) -> float | None:
    """The policy's ``delay`` before a retry, cut short at ``deadline`` (after such a pause,
    ``deadline_passed``: the caller gives up); None (give up now) past the deadline."""
    if delay is None or deadline is None:
        return delay
    left = deadline - now
    return None if left <= 0 else min(delay, left)


def deadline_passed(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def out_of_time(error: ApiError, deadline: float, now: float) -> bool:
    """Whether ``error`` ended a call only for want of time: the deadline has passed, and the
    SDK would have tried again with time left (a 404 is an answer, not a timeout)."""
    return now >= deadline and is_retryable(error, idempotent=True, sent=True)


def wait_timeout(job_id: str, timeout: float, last: Job | None, cause: ApiError
                 ) -> WaitTimeout:
    """wait()'s error when its time ran out on a poll that failed; raise it from ``cause``."""
    seen = "never seen" if last is None else f"still {last.status}"
    return WaitTimeout(f"job {job_id} {seen} after {timeout:g}s; the last poll failed: {cause}",
                       job=last)


def is_retryable(error: ApiError, *, idempotent: bool, sent: bool) -> bool:
    """A 429 and a request that never reached the server are always safe to resend; 5xx and
    broken responses only when the call is idempotent (GET/PUT, a quote, or a submission that
    carries its Idempotency-Key)."""
    if isinstance(error, RateLimited):
        return True
    if isinstance(error, ApiConnectionError):
        return idempotent or not sent
    return (idempotent and isinstance(error, ServerError) and error.status in RETRY_STATUSES
            and error.code not in SETTINGS_TO_FIX)


# 5xx codes that no wait cures (the API sends them without Retry-After): a server setting
# to fix, so the same request is refused again
SETTINGS_TO_FIX = frozenset({"secret_key_missing"})

# What a gateway or the API answers while the API is down or restarting (a 500 is a fault,
# not an outage)
OUTAGE_STATUSES = frozenset({502, 503, 504})


def is_outage(error: ApiError) -> bool:
    """Whether ``error`` says the API cannot answer for now (unreachable, a gateway's or its
    own 502/503/504, a 429) rather than anything about the job: the job runs on meanwhile, so
    a wait() whose poll fails so, its retries spent, polls on until its timeout instead of
    ending long before it (an API restart outlasts a poll's few seconds of retries)."""
    if isinstance(error, RateLimited | ApiConnectionError):
        return True
    return (isinstance(error, ServerError) and error.status in OUTAGE_STATUSES
            and error.code not in SETTINGS_TO_FIX)


def pause_after_poll(id: str, timeout: float, polled: Job | ApiError, interval: float,
                     remaining: float) -> float:
    """The pause before wait()'s next poll, for both clients. After a live job: the poll
    interval, or WaitTimeout once no time is left. After an outage: the interval, or the
    ``Retry-After`` the API asked for when longer; never past the deadline (past it, the
    next poll's failure is the WaitTimeout)."""
    if isinstance(polled, Job):
        if remaining <= 0:
            raise WaitTimeout(f"job {id} still {polled.status} after {timeout:g}s", job=polled)
        return min(interval, remaining)
    asked = (polled.retry_after if isinstance(polled, RateLimited | Unavailable)
             and polled.retry_after is not None else 0.0)
    return max(0.0, min(max(interval, asked), remaining))


def connection_error(exc: httpx.RequestError, base_url: str) -> tuple[ApiConnectionError, bool]:
    """The SDK error for a request that got no usable answer (a transport failure, or an
    answer httpx could not read, such as a broken gzip body: a DecodingError is no
    TransportError), chained to ``exc``; and whether the request may have been sent."""
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    reason = str(exc) or type(exc).__name__
    what = "cannot reach" if isinstance(exc, httpx.TransportError) else "no readable answer from"
    error = ApiConnectionError(f"{what} {origin(base_url)}: {reason}")
    error.__cause__ = exc  # raised later, outside the except block that caught exc
    return error, sent


def origin(base_url: str) -> str:
    """``scheme://host[:port]`` of the API: what an error may name (the base URL itself may
    carry credentials, in its user info or its query, and the caller's app logs errors)."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        return "the API"
    host = f"[{url.host}]" if ":" in url.host else url.host  # IPv6, as a URL writes it
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    idempotent: bool = True
    binary: bool = False  # ``parse`` takes the body's bytes, not its JSON


def raised_from(call: Call[Any], error: ApiError) -> None:
    """Mark ``error`` as the outcome of ``call``: a submission's gets its Idempotency-Key, as
    the SDK made one up and the job may exist even so (an answer lost, a 5xx after the
    commit), so the caller can resubmit with it without making a second job."""
    if call.headers is not None and "Idempotency-Key" in call.headers:
        error.idempotency_key = call.headers["Idempotency-Key"]


def parse_response(call: Call[T], response: httpx.Response) -> T:
    if call.binary:
        return call.parse(response.content)
    try:
        data = response.json()
    except ValueError:
        raise ApiError(f"{call.method} {call.path}: the server sent no JSON",
                       status=response.status_code, code="invalid_response") from None
    try:
        return call.parse(data)
    except (ValueError, KeyError, TypeError) as exc:  # a pydantic ValidationError is one
        raise ApiError(f"{call.method} {call.path}: unexpected response shape "
                       f"({shape_problem(exc)}); is the API URL right?",
                       status=response.status_code, code="invalid_response") from None


def shape_problem(exc: Exception) -> str:
    """What is wrong with an answer's shape, by the place in it (written as the API writes
    a field: ``items[0].id``), never quoting it (a job's metadata and result are the
    tenant's data; pydantic's message shows the input)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if errors:
            loc = "".join(f"[{p}]" if isinstance(p, int) and i else f".{p}" if i else str(p)
                          for i, p in enumerate(errors[0]["loc"])) or "the answer"
            more = f", and {len(errors) - 1} more" if len(errors) > 1 else ""
            return f"{loc}: {errors[0]['msg']}{more}"
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}" if exc.args else "a field is missing"
    return type(exc).__name__


def _field(name: str, kind: type[T]) -> Callable[[Any], T]:
    """Parse an answer ``{name: <kind>, ...}`` into that value; TypeError for another type
    (a bool is no int)."""

    def parse(data: Any) -> T:
        value = data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"{name} is no {kind.__name__}")
        return value

    return parse


def _path_id(job_id: str) -> str:
    if not str(job_id):
        raise ValueError("job id must not be empty")
    return _quote(str(job_id), safe="")


def job_body(
    *, kind: str, input: Mapping[str, Any], tier: str | None, strategy: str | None,
    max_cost_usd: float | None, backend: str | None, deadline_s: int | None,
    priority: str | None, webhook_url: str | None, metadata: Mapping[str, Any] | None,
    webhook_events: Sequence[str] | None = None, cache: bool | None = None,
) -> dict[str, Any]:
    """The CONTRACT job body; unset fields are left out so the server's defaults apply."""
    body: dict[str, Any] = {"kind": kind, "input": dict(input)}
    optional = {"tier": tier, "strategy": strategy, "max_cost_usd": max_cost_usd,
                "backend": backend, "deadline_s": deadline_s, "priority": priority,
                "webhook_url": webhook_url, "cache": cache,
                "webhook_events": list(webhook_events) if webhook_events is not None else None,
                "metadata": dict(metadata) if metadata is not None else None}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _unwrap(data: Any, key: str) -> Any:
    return data[key] if isinstance(data, dict) and key in data else data


# What the API takes as an Idempotency-Key (orchestrator/api/routes_jobs.py): 1 to 200
# visible ASCII characters. Checked before sending, as httpx cannot even encode a non-ASCII
# header (UnicodeEncodeError) and the API would refuse the rest.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


def check_idempotency_key(key: str) -> str:
    """``key`` if the API takes it; else InvalidRequest, as the API would answer."""
    if not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest(
            "idempotency_key: 1 to 200 printable ASCII characters, no spaces",
            details={"field": "header.Idempotency-Key"})
    return key


def check_finite(value: Any, field: str = "") -> None:
    """InvalidRequest naming the field, as the API would answer, for a NaN or an infinity
    anywhere in a body: JSON has no such number, so httpx refuses the body with a ValueError
    that says neither which field nor that nothing was sent."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{field or 'body'}: {value} is no JSON number (NaN and "
                             "Infinity cannot be sent)", details={"field": field or "body"})
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_finite(item, f"{field}[{i}]")


def submit(body: dict[str, Any], idempotency_key: str | None) -> Call[Job]:
    key = str(uuid.uuid4()) if idempotency_key is None else check_idempotency_key(
        idempotency_key)
    check_finite(body)
    return Call("POST", "/v1/jobs", Job.model_validate, json=body,
                headers={"Idempotency-Key": key}, idempotent=True)


def quote(body: dict[str, Any]) -> Call[Quote]:
    check_finite(body)
    return Call("POST", "/v1/quotes", Quote.model_validate, json=body)


def get(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{_path_id(job_id)}", Job.model_validate)


def list_jobs(status: str | None, limit: int | None, cursor: str | None) -> Call[Page]:
    params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items()
              if v is not None}
    return Call("GET", "/v1/jobs", Page.model_validate, params=params)


def cancel(job_id: str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{_path_id(job_id)}/cancel", Job.model_validate,
                idempotent=False)


def backends() -> Call[list[Backend]]:
    return Call("GET", "/v1/backends",
                lambda d: [Backend.model_validate(b) for b in d["backends"]])


def budgets() -> Call[list[Budget]]:
    return Call("GET", "/v1/budgets", lambda d: [Budget.model_validate(b) for b in d["budgets"]])


def webhook_secret(tenant: str | None) -> Call[str]:
    return Call("GET", "/v1/webhooks/secret", _field("secret", str),
                params=None if tenant is None else {"tenant": tenant})


def webhook_deliveries(status: str | None, job_id: str | None, limit: int | None,
                       cursor: str | None, tenant: str | None) -> Call[DeliveryPage]:
    params = {k: v for k, v in {"status": status, "job_id": job_id, "limit": limit,
                                "cursor": cursor, "tenant": tenant}.items() if v is not None}
    return Call("GET", "/v1/webhooks/deliveries", DeliveryPage.model_validate,
                params=params or None)


def redeliver(delivery_id: int, tenant: str | None) -> Call[WebhookDelivery]:
    # not retried: a repeat after a lost answer is a 409 (pending) or a second send
    return Call("POST", f"/v1/webhooks/deliveries/{int(delivery_id)}/redeliver",
                WebhookDelivery.model_validate,
                params=None if tenant is None else {"tenant": tenant}, idempotent=False)


def redeliver_failed(job_id: str | None, tenant: str | None) -> Call[int]:
    params = {k: v for k, v in {"job_id": job_id, "tenant": tenant}.items() if v is not None}
    return Call("POST", "/v1/webhooks/deliveries/redeliver-failed",
                _field("requeued", int), params=params or None, idempotent=False)


def create_key(tenant: str, admin: bool) -> Call[ApiKey]:
    return Call("POST", "/v1/keys", ApiKey.model_validate,
                json={"tenant": tenant, "admin": admin}, idempotent=False)


def set_budget(
    scope: str, period: str, limit_usd: float, alert_thresholds: list[float] | None,
    channels: list[dict[str, Any]] | None, forecast_thresholds: list[float] | None = None,
) -> Call[Budget]:
    body: dict[str, Any] = {"scope": scope, "period": period, "limit_usd": limit_usd}
    if alert_thresholds is not None:
        body["alert_thresholds"] = list(alert_thresholds)
    if channels is not None:
        body["channels"] = list(channels)
    if forecast_thresholds is not None:
        body["forecast_thresholds"] = list(forecast_thresholds)
    check_finite(body)
    return Call("PUT", "/v1/budgets", lambda d: Budget.model_validate(_unwrap(d, "budget")),
                json=body)


def result(job_id: str) -> Call[JobResult]:
    return Call("GET", f"/v1/jobs/{_path_id(job_id)}/result", JobResult.model_validate)


_FILE_PATH = re.compile(r"/v1/jobs/[^/?#]+/result/files/[0-9]+")


def result_file(path: str) -> Call[bytes]:
    if not _FILE_PATH.fullmatch(path):
        raise ValueError("not a result file's path (/v1/jobs/<id>/result/files/<n>, as a "
                         "result names it)")
    return Call("GET", path, bytes, binary=True)


TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})
STREAM_READ_TIMEOUT_S = 60.0  # the server sends a comment at least every ORCH_EVENTS_PING_S
# Connections in a row that bring no new event before a job's stream is given up: each
# clean end is retried at once, each cut (a transport error) after a pause that doubles.
STREAM_TRIES = 3
STREAM_RETRY_PAUSE_S = 0.25


def stream_deadline_passed() -> httpx.ReadTimeout:
    return httpx.ReadTimeout("no terminal event in time")


class StreamResume:
    """Where one job's event stream stands across its connections, for both clients: the
    last ``seq`` seen (the next connection's ``Last-Event-ID``), the deadline, and how many
    connections in a row brought nothing new."""

    def __init__(self, after: int, timeout: float | None, clock: Callable[[], float]) -> None:
        self.last, self.tries, self._clock = after, 0, clock
        self._stop = None if timeout is None else clock() + check_seconds("timeout", timeout)
        # the terminal event came: a stream the server ends now has nothing more (one still
        # open waits for the late job.charged of an attempt running when the job ended)
        self.past_terminal = False

    def left(self) -> float | None:
        """Seconds to the deadline (None: no deadline)."""
        return None if self._stop is None else self._stop - self._clock()

    def connecting(self) -> float:
        """Count a new connection and give its read timeout; ReadTimeout past the deadline."""
        left = self.left()
        if left is not None and left <= 0:
            raise stream_deadline_passed()
        self.tries += 1
        return STREAM_READ_TIMEOUT_S if left is None else left

    def seen(self, event: JobEvent) -> None:
        self.last, self.tries = event.seq, 0
        self.past_terminal = self.past_terminal or event.is_terminal

    def cut(self, exc: httpx.TransportError) -> float:
        """The connection broke: the pause before the next one; raises ReadTimeout past the
        deadline, and ``exc`` after the last try."""
        left = self.left()
        if left is not None and left <= 0:
            raise stream_deadline_passed() from None
        if self.tries >= STREAM_TRIES:
            raise exc
        return float(STREAM_RETRY_PAUSE_S * 2 ** (self.tries - 1))

    @property
    def given_up(self) -> bool:
        """After a clean end: as many connections in a row as allowed brought nothing."""
        return self.tries >= STREAM_TRIES


def events_path(job_id: str) -> str:
    return f"/v1/jobs/{_path_id(job_id)}/events"


def stream_headers(last_seq: int) -> dict[str, str]:
    return {"Accept": "text/event-stream", **({"Last-Event-ID": str(last_seq)} if last_seq
                                               else {})}


def is_event_stream(response: httpx.Response) -> bool:
    """Whether a 2xx answer to a stream request is an event stream (what httpx-sse checks
    before reading one)."""
    return "text/event-stream" in response.headers.get("content-type", "").partition(";")[0]


def not_an_event_stream(job_id: str, response: httpx.Response) -> ApiError:
    """The error for a 2xx answer to a stream request that is no event stream (a wrong URL, a
    proxy's page), as for any answer that is not the API's: ``invalid_response``, never
    quoting it. httpx-sse's own SSEError is an httpx.TransportError, which reads as a cut
    connection: retried, and then taken for an outage."""
    return ApiError(f"GET {events_path(job_id)}: the server sent no event stream; is the API "
                    "URL right?", status=response.status_code, code="invalid_response")


STREAM_CONNECT_TIMEOUT_S = 10.0


def stream_timeout(remaining_s: float) -> httpx.Timeout:
    """One stream connection's timeouts: each phase (connecting, sending, waiting for the
    pool, each read) within the time left, so that a connection that cannot be set up does
    not hold a wait() or an events() 10 s past its deadline."""
    left = max(0.05, min(remaining_s, STREAM_READ_TIMEOUT_S))
    return httpx.Timeout(min(STREAM_CONNECT_TIMEOUT_S, left), read=left)


def is_event(sse: httpx_sse.ServerSentEvent) -> bool:
    """Whether a message of a job's stream carries an event. A message without data is
    none: httpx-sse hands one over for every keep-alive comment once the stream has given
    an ``id:`` (it keeps the last id, as the SSE spec says, but dispatches without data,
    which the spec does not), so every ping after the first event would otherwise end the
    iteration with a ValidationError."""
    return bool(sse.data)


def parse_event(data: str) -> JobEvent:
    return JobEvent.model_validate_json(data)


def check_seconds(name: str, value: float, *, above_zero: bool = False) -> float:
    """``value`` if it is a finite number of seconds, not below 0 (above 0 with
    ``above_zero``); ValueError naming ``name`` otherwise: a NaN deadline is never reached,
    so a wait on it would never end."""
    ok = math.isfinite(value) and (value > 0 if above_zero else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number of seconds "
                         f"{'above' if above_zero else 'of at least'} 0, not {value!r}")
    return value


def wait_deadline(now: float, timeout: float, poll_interval: float,
                  max_poll_interval: float) -> float:
    """wait()'s deadline; its arguments checked first (``check_seconds``)."""
    check_seconds("timeout", timeout)
    check_seconds("poll_interval", poll_interval, above_zero=True)
    check_seconds("max_poll_interval", max_poll_interval, above_zero=True)
    return now + timeout


def next_poll_interval(current: float, cap: float) -> float:
    return min(cap, current * 1.5)
