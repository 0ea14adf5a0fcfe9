"""The asynchronous SDK client: the same methods as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
import httpx_sse

from orchestrator.client import _core
from orchestrator.client.errors import ApiError, error_from_response
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
log = logging.getLogger("orchestrator.client")


class AsyncClient:
    """An asyncio client of the orchestrator HTTP API (the same methods as ``Client``).

    ``base_url`` and ``api_key`` default to ``ORCH_API_URL`` and ``ORCH_API_KEY``. 429s (after
    their ``Retry-After``), 5xx and connection errors are retried up to ``retries`` times with
    backoff; a submission always carries an ``Idempotency-Key`` (a fresh uuid4 unless given), so
    a retried submission never creates a second job. ``sleep`` and ``clock`` are injectable.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = _core.DEFAULT_TIMEOUT,
        retries: int = _core.DEFAULT_RETRIES,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_policy: _core.RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = _core.resolve_base_url(base_url)
        self._policy = retry_policy or _core.RetryPolicy(retries=retries)
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_core.headers(_core.resolve_api_key(api_key)),
            timeout=timeout, transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _core.Call[T], deadline: float | None = None) -> T:
        try:
            return await self._tries(call, deadline)
        except ApiError as exc:
            _core.raised_from(call, exc)
            raise

    async def _tries(self, call: _core.Call[T], deadline: float | None) -> T:
        """The call's tries, under the retry policy, until it succeeds or an error is final;
        with a ``deadline`` (clock time) no try or pause runs past it."""
        attempt = 0
        while True:
            error: ApiError
            timeout = _core.try_timeout(self._http.timeout, deadline, self._clock())
            try:
                response = await self._http.request(call.method, call.path, json=call.json,
                                                    params=call.params, headers=call.headers,
                                                    timeout=timeout)
            except httpx.RequestError as exc:  # not only TransportError: DecodingError too
                error, sent = _core.connection_error(exc, self.base_url)
                status = "no response"
            else:
                if response.is_success:
                    return _core.parse_response(call, response)
                error, sent = error_from_response(response), True
                status = str(response.status_code)
            retry = _core.is_retryable(error, idempotent=call.idempotent, sent=sent)
            delay = _core.pause_before_retry(
                self._policy.delay(attempt, error) if retry else None, deadline, self._clock())
            log.debug("%s %s -> %s (try %d)%s", call.method, call.path, status, attempt + 1,
                      "" if delay is None else f"; retrying in {delay:.2f}s")
            if delay is None:
                raise error
            await self._sleep(delay)
            if _core.deadline_passed(deadline, self._clock()):
                raise error  # the pause was cut short at the deadline: no time for a try
            attempt += 1

    # -- jobs ---------------------------------------------------------------------------------

    async def submit(
        self, *, kind: str, input: Mapping[str, Any], tier: str | None = None,
        strategy: str | None = None, max_cost_usd: float | None = None,
        backend: str | None = None, deadline_s: int | None = None, priority: str | None = None,
        webhook_url: str | None = None, metadata: Mapping[str, Any] | None = None,
        cache: bool | None = None,
        idempotency_key: str | None = None, webhook_events: Sequence[str] | None = None,
    ) -> Job:
        """Submit a job (202). Raises BudgetExceeded, InvalidRequest, NoEligibleBackend, ..."""
        body = _core.job_body(kind=kind, input=input, tier=tier, strategy=strategy,
                              max_cost_usd=max_cost_usd, backend=backend, deadline_s=deadline_s,
                              priority=priority, webhook_url=webhook_url, metadata=metadata,
                              webhook_events=webhook_events, cache=cache)
        return await self._run(_core.submit(body, idempotency_key))

    async def quote(
        self, *, kind: str, input: Mapping[str, Any], tier: str | None = None,
        strategy: str | None = None, max_cost_usd: float | None = None,
        backend: str | None = None, deadline_s: int | None = None, priority: str | None = None,
        webhook_url: str | None = None, metadata: Mapping[str, Any] | None = None,
        cache: bool | None = None, webhook_events: Sequence[str] | None = None,
    ) -> Quote:
        """Dry-run routing for a job body (the same arguments as ``submit`` but the
        idempotency key): ranked candidates and exclusions, no side effects."""
        body = _core.job_body(kind=kind, input=input, tier=tier, strategy=strategy,
                              max_cost_usd=max_cost_usd, backend=backend, deadline_s=deadline_s,
                              priority=priority, webhook_url=webhook_url, metadata=metadata,
                              webhook_events=webhook_events, cache=cache)
        return await self._run(_core.quote(body))

    async def get(self, id: str) -> Job:
        return await self._run(_core.get(id))

    async def list(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        """One page of own jobs, newest first; pass ``page.next_cursor`` for the next one."""
        return await self._run(_core.list_jobs(status, limit, cursor))

    async def iter_jobs(
        self, status: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[Job]:
        """Every own job (newest first), fetching pages as needed."""
        cursor: str | None = None
        while True:
            page = await self.list(status=status, limit=page_size, cursor=cursor)
            for job in page.items:
                yield job
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    async def cancel(self, id: str) -> Job:
        return await self._run(_core.cancel(id))

    async def wait(
        self, id: str, timeout: float = 600, poll_interval: float = 1.0,
        max_poll_interval: float = 15.0, stream: bool = True,
    ) -> Job:
        """As ``Client.wait``: follows the job's event stream, polls when it cannot be had.
        Raises WaitTimeout."""
        deadline = _core.wait_deadline(self._clock(), timeout, poll_interval,
                                       max_poll_interval)
        if stream:
            job = await self._wait_streaming(id, deadline)
            if job is not None:
                return job
        interval = poll_interval
        last: Job | None = None
        while True:
            polled = await self._poll(id, deadline, timeout, last)
            if isinstance(polled, Job):
                if polled.is_final:
                    return polled
                last = polled
            await self._sleep(_core.pause_after_poll(id, timeout, polled, interval,
                                                 deadline - self._clock()))
            interval = _core.next_poll_interval(interval, max_poll_interval)

    async def _poll(self, id: str, deadline: float, timeout: float, last: Job | None
                    ) -> Job | ApiError:
        """One poll of wait(), its tries bounded by the deadline: the job, or the error of a
        poll that failed with an outage (``_core.is_outage``) while time is left; WaitTimeout
        (with the last job seen, from the poll's error) when it failed for want of time."""
        try:
            return await self._run(_core.get(id), deadline)
        except ApiError as exc:
            if _core.out_of_time(exc, deadline, self._clock()):
                raise _core.wait_timeout(id, timeout, last, exc) from exc
            if not _core.is_outage(exc):
                raise
            log.debug("polling %s: %s; polling on", id, exc.code)
            return exc

    async def _wait_streaming(self, id: str, deadline: float) -> Job | None:
        try:
            async for event in self.events(id, timeout=deadline - self._clock()):
                if event.is_terminal:
                    return await self._run(_core.get(id), deadline)
        except (httpx.RequestError, httpx_sse.SSEError, ApiError, ValueError) as exc:
            log.debug("event stream of %s unavailable (%s); polling", id, type(exc).__name__)
        return None

    async def events(self, id: str, after: int = 0, timeout: float | None = None
                     ) -> AsyncIterator[JobEvent]:
        """As ``Client.events``: the job's events until the server ends the stream after
        its terminal one (and a late ``job.charged``)."""
        resume = _core.StreamResume(after, timeout, self._clock)
        while True:
            read_s = resume.connecting()
            try:
                async with httpx_sse.aconnect_sse(
                    self._http, "GET", _core.events_path(id),
                    headers=_core.stream_headers(resume.last),
                    timeout=_core.stream_timeout(read_s),
                ) as source:
                    if source.response.status_code == 204:
                        return  # resumed after the terminal event: nothing more comes
                    if not source.response.is_success:
                        await source.response.aread()
                        raise error_from_response(source.response)
                    if not _core.is_event_stream(source.response):
                        raise _core.not_an_event_stream(id, source.response)
                    async with contextlib.aclosing(source.aiter_sse()) as messages:
                        while True:
                            try:
                                # keep-alive comments restart httpx's read timeout: bound
                                # the wait for each message by what is left
                                async with asyncio.timeout(resume.left()):
                                    sse = await anext(messages)
                            except StopAsyncIteration:
                                break
                            except TimeoutError:
                                raise _core.stream_deadline_passed() from None
                            if not _core.is_event(sse):
                                continue
                            event = _core.parse_event(sse.data)
                            resume.seen(event)
                            yield event
                    if resume.past_terminal:
                        return  # the server ended it: nothing more comes
            except httpx.TransportError as exc:
                await self._sleep(resume.cut(exc))
                continue
            if resume.given_up:
                return

    async def result(self, id: str) -> JobResult:
        return await self._run(_core.result(id))

    async def result_file(self, path: str) -> bytes:
        """The bytes of a file a result names by path (``/v1/jobs/{id}/result/files/{n}``: an
        image the provider sent inline)."""
        return await self._run(_core.result_file(path))

    # -- catalogue, budgets, admin -------------------------------------------------------------

    async def backends(self) -> builtins.list[Backend]:
        return await self._run(_core.backends())

    async def budgets(self) -> builtins.list[Budget]:
        return await self._run(_core.budgets())

    async def webhook_secret(self, tenant: str | None = None) -> str:
        """The secret that signs this tenant's webhooks (made now if it had none), to verify
        ``X-Orchestrator-Signature`` with; ``tenant``: admin keys, another tenant's."""
        return await self._run(_core.webhook_secret(tenant))

    async def webhook_deliveries(
        self, status: str | None = None, job_id: str | None = None,
        limit: int | None = None, cursor: str | None = None, tenant: str | None = None,
    ) -> DeliveryPage:
        """One page of webhook deliveries, newest first (``status``: pending, delivered or
        failed); ``next_cursor`` as ``cursor`` gives the next (older) page."""
        return await self._run(_core.webhook_deliveries(status, job_id, limit, cursor, tenant))

    async def redeliver(self, delivery_id: int, tenant: str | None = None) -> WebhookDelivery:
        """Queue a failed (or delivered) webhook delivery again; :class:`Conflict` if it is
        pending already. Not retried by the SDK: a repeat could send it twice."""
        return await self._run(_core.redeliver(delivery_id, tenant))

    async def redeliver_failed(self, job_id: str | None = None, tenant: str | None = None) -> int:
        """Queue every failed webhook delivery (of one job, if given) again; how many."""
        return await self._run(_core.redeliver_failed(job_id, tenant))

    async def create_key(self, tenant: str, admin: bool = False) -> ApiKey:
        """Admin: a new API key for ``tenant`` (the key is in the answer only)."""
        return await self._run(_core.create_key(tenant, admin))

    async def set_budget(
        self, scope: str, period: str, limit_usd: float,
        alert_thresholds: builtins.list[float] | None = None,
        channels: builtins.list[dict[str, Any]] | None = None,
        forecast_thresholds: builtins.list[float] | None = None,
    ) -> Budget:
        """Admin: create or update a budget. ``alert_thresholds``, ``channels`` or
        ``forecast_thresholds`` None: the budget keeps its own (a new one: 0.5/0.8/1.0,
        none, none). ``forecast_thresholds`` (opt-in, e.g. ``[1.0]``): alert when the
        run-rate forecast of the period's spend passes these fractions of the limit."""
        call = _core.set_budget(scope, period, limit_usd, alert_thresholds, channels,
                                forecast_thresholds)
        return await self._run(call)


__all__ = ["ApiError", "AsyncClient"]
