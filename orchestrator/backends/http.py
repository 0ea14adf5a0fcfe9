"""What every HTTP adapter shares: the transport seam, timeouts, auth, retries, error mapping
(``orchestrator.backends.answers``) and cost.

The one transport seam is the ``httpx.BaseTransport`` an adapter is given: tests pass an
``httpx.MockTransport``; production shares one ``Http11Transport`` (orchestrator.backends.
transport); without one, an adapter makes its own. Requests go straight to the transport's
wire (``Wire.exchange``: bytes in, a ``Reply`` out): an adapter builds every URL and header
itself and follows no redirect, so an ``httpx.Client`` around it only added CPU to every
call. Transient errors are retried
inside one call by tenacity (exponential backoff with full jitter, Retry-After honoured, bounded
by attempts and total time); whatever is left is raised to the caller.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeGuard

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_random_exponential,
)

from orchestrator import metrics
from orchestrator.backends.answers import GATEWAY_STATUSES, error_for
from orchestrator.backends.base import PollResult, Submission
from orchestrator.backends.errors import (
    BackendError,
    BackendFault,
    JobFault,
    LookupUnsupported,
    OutcomeUnknown,
    TransientError,
)
from orchestrator.backends.transport import Http11Transport, Reply, target, wire_for
from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.money import usd_to_micros
from orchestrator.domain.pricing import Usage, actual_micros
from orchestrator.metrics.catalogue import JOB_RETRIES

log = logging.getLogger("orchestrator.backends")

USER_AGENT = b"orchestrator"
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries of transient errors. ``attempts`` counts the first try.

    A Retry-After longer than ``max_retry_after_s`` is not slept on: the TransientError (with
    ``retry_after_s``) goes straight to the caller, which can reschedule instead of blocking.
    ``sleep`` and ``clock`` are the time seam (tests record the waits instead of taking them;
    a fake clock advanced by the fake sleep keeps the ``total_s`` budget exact).
    """

    attempts: int = 4
    initial_s: float = 0.25
    max_wait_s: float = 4.0
    total_s: float = 20.0
    max_retry_after_s: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


NO_RETRY = RetryPolicy(attempts=1)


# Above any real bill for one job ($1e9), and well inside PostgreSQL's bigint micro-USD: a
# figure beyond it is an unreadable answer, not a charge that could not be stored.
MAX_BILL_MICROS = 10**15


def is_provider_id(value: Any) -> TypeGuard[str]:
    """A provider's id for its work that we can store (``attempts.external_id`` holds 200
    characters) and send back: a non-empty string without control characters."""
    return (isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable())


class HttpAdapter(ABC):
    """Base of the protocol adapters. Subclasses implement submit/poll/cancel."""

    synchronous = False

    def __init__(
        self,
        backend: BackendSpec,
        transport: httpx.BaseTransport | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.backend = backend
        self._owns_transport = transport is None
        self._transport = transport if transport is not None else Http11Transport()
        self._wire = wire_for(self._transport)
        self._retry = retry or RetryPolicy()
        t = backend.timeouts
        self._timeouts: dict[str, float | None] = {
            **httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.read_s,
                            pool=t.connect_s).as_dict(),
            "total": t.read_s,  # once connected, the whole exchange (see transport)
        }
        # OpenAI's SDKs take a base URL ending in /v1, and a gateway's may carry a query
        # (?api-version=): both are read as meant, not as /v1/v1/… or a query before the
        # path; a fragment is never sent
        base, _, self._base_query = backend.base_url.partition("#")[0].partition("?")
        self._base = base.rstrip("/")
        self._base_has_v1 = self._base.endswith("/v1")
        # in-flight repeats of a submission are safe only where the provider joins them
        self._replay_inflight = backend.idempotency == "inflight"

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def call_window_s(self) -> float:
        """The longest one call can take, its in-call retries included: no try starts once
        the retry budget (``total_s``) is spent, and a try takes at most its connect and
        read timeouts (the transport bounds the whole exchange by ``read_s``). The job
        chain's lease on a call in flight is this plus grace."""
        t = self.backend.timeouts
        return self._retry.total_s + t.connect_s + t.read_s

    def lookup(self, reference: str) -> Submission | None:
        """The submission made with idempotency key ``reference`` (None: the provider has
        none). Raises LookupUnsupported where the protocol cannot look it up."""
        raise LookupUnsupported(f"{self.name}: the {self.backend.protocol} protocol cannot "
                                "look a submission up by its reference",
                                backend=self.name)

    def close(self) -> None:
        if self._owns_transport:
            self._transport.close()

    @abstractmethod
    def submit(self, spec: JobSpec, idempotency_key: str) -> Submission: ...

    @abstractmethod
    def poll(self, external_id: str) -> PollResult: ...

    @abstractmethod
    def cancel(self, external_id: str) -> PollResult | None: ...

    # -- HTTP -------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        """``base_url`` + ``path`` (which starts ``/v1/``), with the base's query after it."""
        if self._base_has_v1 and path.startswith("/v1/"):
            path = path[3:]
        url = self._base + path
        if self._base_query:
            url += ("&" if "?" in path else "?") + self._base_query
        return url

    def _headers(self, idempotency_key: str | None, has_body: bool) -> list[tuple[bytes, bytes]]:
        # identity: a body we cannot decode would make a paid answer unreadable (gzip
        # and deflate sent all the same are inflated: Reply.body)
        headers = [(b"Accept", b"application/json"), (b"Accept-Encoding", b"identity"),
                   (b"User-Agent", USER_AGENT)]
        key = self.backend.api_key()  # read per call from the environment; never logged
        if key:
            key = key.strip()  # a secret file's trailing newline
            if not _TOKEN_CHARS.fullmatch(key):  # a control character would split the head
                raise BackendFault(
                    f"{self.name}: the API key in {self.backend.api_key_env} has characters "
                    "an HTTP header cannot carry", code="backend_auth", backend=self.name)
            headers.append((b"Authorization", b"Bearer " + key.encode("ascii")))
        if idempotency_key:
            headers.append((b"Idempotency-Key", idempotency_key.encode("latin-1")))
        if has_body:
            headers.append((b"Content-Type", b"application/json"))
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        creates: bool = False,
        call: str | None = None,
    ) -> dict[str, Any]:
        """One logical call: retried while transient, then the parsed JSON object or an error.

        ``creates``: the call may create paid work (a submission). Once such a request may
        have reached the provider (sent, then no answer), it is repeated only where the
        provider joins in-flight repeats of a key; elsewhere the call raises OutcomeUnknown.
        ``call`` names it in the logs (``create``, ``poll``, ``cancel``, ``lookup``; default
        ``create`` or the method): a refused cancel must not read as a refused job.
        """
        call = call or ("create" if creates else method)
        to = target(self._url(path))
        # as httpx encodes ``json=``
        body = b"" if json is None else jsonlib.dumps(
            json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
        headers = self._headers(idempotency_key, json is not None)
        policy = self._retry

        def once() -> dict[str, Any]:
            try:
                resp = self._wire.exchange(method, to, headers, body, self._timeouts)
            except httpx.TimeoutException as exc:
                raise TransientError(
                    f"{self.name}: no answer within the timeout",
                    code="backend_timeout", backend=self.name, delivered=_sent(exc),
                ) from None
            except httpx.TransportError as exc:
                raise TransientError(
                    f"{self.name}: connection failed ({type(exc).__name__})",
                    code="backend_connection", backend=self.name, delivered=_sent(exc),
                ) from None
            try:
                return self._parse(resp, creates)
            except TransientError as exc:
                # a gateway's 502 or 504 says nothing of the provider behind it, which may
                # have taken the request and go on working, and billing, after the gateway
                # gave up: for a create, the answer is lost
                if creates and exc.status_code in GATEWAY_STATUSES:
                    exc.delivered = True
                raise
            except JobFault as exc:
                # 409 to a create: the provider knows its Idempotency-Key (a request with it
                # is under way, or done and not replayed). The work may exist: the attempt is
                # reconciled as one whose answer was lost (looked up where the protocol can;
                # else waited for and asked again, or closed uncertain with its possible
                # charge), never failed as the job's fault after the provider billed it.
                if creates and exc.status_code == 409:
                    raise TransientError(
                        f"{self.name}: the idempotency key is already in use (HTTP 409)",
                        code="idempotency_conflict", backend=self.name, status_code=409,
                        delivered=True) from None
                raise

        unsafe_repeat = creates and not self._replay_inflight

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, TransientError) and not (
                unsafe_repeat and exc.delivered) and (
                exc.retry_after_s is None or exc.retry_after_s <= policy.max_retry_after_s
            )

        started = policy.clock()
        # The first try runs outside tenacity: nearly every call succeeds at once, and setting
        # up the retry loop cost about a tenth of a call's CPU. A first failure that may be
        # retried goes into the loop as its first attempt, so waits, stops and the attempt
        # count are exactly tenacity's.
        try:
            return once()
        except BackendError as exc:
            if not retryable(exc):
                return self._failed(call, exc, 1, creates)
            first: list[BackendError] = [exc]

        def attempt() -> dict[str, Any]:
            if first:
                raise first.pop()
            return once()

        backoff = wait_random_exponential(multiplier=policy.initial_s, max=policy.max_wait_s)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            # a Retry-After of 0, or an HTTP date already past (a date has whole seconds: a
            # limit lifting within the second is written as this second), says no more than
            # "again": the backoff, not every try spent at once on a limit still in force
            if isinstance(exc, TransientError) and exc.retry_after_s:
                return exc.retry_after_s
            return float(backoff(state))

        def stop(state: RetryCallState) -> bool:
            """Out of attempts, or the next wait would end past the total time budget."""
            if state.attempt_number >= policy.attempts:
                return True
            return policy.clock() - started + (state.upcoming_sleep or 0.0) > policy.total_s

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "backend call retrying backend=%s call=%s code=%s attempt=%d wait_s=%.3f",
                self.name, call, getattr(exc, "code", "?"), state.attempt_number,
                state.upcoming_sleep,
            )
            metrics.counter(JOB_RETRIES, backend=self.name, reason=getattr(exc, "code", "unknown"))

        retrying = Retrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(retryable),
            sleep=policy.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except BackendError as exc:
            tries = int(retrying.statistics.get("attempt_number", 1))
            return self._failed(call, exc, tries, creates)

    def _failed(self, call: str, exc: BackendError, attempts: int,
                creates: bool = False) -> NoReturn:
        if creates and isinstance(exc, TransientError) and exc.delivered:
            exc = OutcomeUnknown(
                f"{self.name}: the submission was sent and its answer lost ({exc.code})",
                backend=self.name, cause=exc.code,
            )
        elif creates and exc.code == "malformed_response":
            exc = self.unreadable_creation(exc)
        exc.attempts = attempts
        log.warning(
            "backend call failed backend=%s call=%s code=%s attempts=%d",
            self.name, call, exc.code, exc.attempts,
        )
        raise exc

    def _parse(self, resp: Reply, creates: bool = False) -> dict[str, Any]:
        status = resp.status_code
        if 200 <= status < 300:
            try:
                body = resp.json()
            except (ValueError, RecursionError):  # RecursionError: nested beyond reading
                raise self.malformed("the answer is not JSON", status) from None
            if not isinstance(body, dict):
                raise self.malformed("the answer is not a JSON object", status)
            return body
        raise self._error_for(resp, creates)

    def unreadable_creation(self, fault: BackendError) -> OutcomeUnknown:
        """A create the provider accepted (2xx) with an answer we cannot read: the work may
        exist, and be billed, whatever the answer says, so the chain asks the provider
        (reconciliation) instead of failing over as if nothing had been made."""
        return OutcomeUnknown(
            f"{fault.message} (the submission was accepted: the work may exist)",
            backend=self.name, cause=fault.code)

    def malformed(self, what: str, status_code: int | None = None) -> BackendFault:
        return BackendFault(
            f"{self.name}: malformed response: {what}",
            code="malformed_response", backend=self.name, status_code=status_code,
        )

    def _error_for(self, resp: Reply, creates: bool = False) -> BackendError:
        return error_for(resp, self.name, creates=creates,
                         max_retry_after_s=self._retry.max_retry_after_s)

    # -- cost -------------------------------------------------------------------------------

    def price(self, usage: Usage) -> int | None:
        """The catalogue's price of the ``usage`` a provider reported; None when it cannot be
        priced (a quantity the price model needs is missing, a resolution or size the backend
        does not list). A price beyond any real bill is an unreadable answer (malformed)."""
        try:
            computed = actual_micros(self.backend, usage)
        except (ValueError, KeyError, TypeError):  # NotPriceable is a ValueError
            return None
        if computed > MAX_BILL_MICROS:
            raise self.malformed("usage is out of range")
        return computed

    def cost(self, usage: Usage | None, reported_usd: Any, *, lenient: bool = False
             ) -> tuple[int | None, int | None]:
        """(actual cost, the provider's own figure): the actual cost is the catalogue's price
        of ``usage``, else the provider's figure, else None. Usage that cannot be priced is a
        malformed answer; ``lenient``: it is passed over, as if none had been reported."""
        reported: int | None = None
        if isinstance(reported_usd, int | float | str) and not isinstance(reported_usd, bool):
            try:
                reported = usd_to_micros(reported_usd)
            except ValueError:
                raise self.malformed("cost_usd is not a number") from None
            if reported < 0:
                raise self.malformed("cost_usd is negative")
            if reported > MAX_BILL_MICROS:
                raise self.malformed("cost_usd is out of range")
        elif reported_usd is not None:
            raise self.malformed("cost_usd is not a number")
        computed = None if usage is None else self.price(usage)
        if computed is None:
            if usage is not None and not lenient:
                raise self.malformed("usage cannot be priced")
            return reported, reported
        if reported is not None and computed != reported:
            log.warning(
                "backend cost mismatch backend=%s computed_micros=%d reported_micros=%d",
                self.name, computed, reported,
            )
        return computed, reported


def _sent(exc: httpx.TransportError) -> bool:
    """Whether the request may have reached the provider whole before ``exc``."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
                          | httpx.WriteError | httpx.WriteTimeout | httpx.UnsupportedProtocol)
