"""Cloud Monitoring sink: one background thread writes the recorder's series to Cloud
Monitoring (``CreateTimeSeries``), never blocking or failing the code that records.

Rules it keeps: each series is written at most every :data:`MIN_SPACING_S` seconds (by the
injectable ``clock``; the thread's wake-up interval is separate and may be shorter in tests);
at most 200 series per request; descriptors are created once per process; a series the API
would refuse whatever the moment (a non-finite value, an integer beyond INT64, a label value
over 1,024 characters) is left out and counted, never sent to fail its whole request at every
flush; only transient gRPC errors are retried, within a bounded deadline, and a write only
when the service was not reached (UNAVAILABLE: CreateTimeSeries is not idempotent); a failed
write's series are all sent again at the next due flush, with new points (the API writes
the valid series of a request it answers INVALID_ARGUMENT); every failed request is logged
(status code only) and counted in ``exporter/failures{sink="cloud_monitoring"}``. An unchanged
series is re-sent every ``resend_unchanged_s``, a gauge only until it has not been set for
:data:`GAUGE_STALE_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from orchestrator.metrics import gcm_convert as conv
from orchestrator.metrics.catalogue import EXPORTER_FAILURES, MetricDef
from orchestrator.metrics.clients import (
    is_retryable_write,
    is_transient,
    metric_client,
    status_code,
)
from orchestrator.metrics.freshness import GAUGE_STALE_S, GaugeFreshness
from orchestrator.metrics.recorder import Clock, Point, Recorder

log = logging.getLogger("orchestrator.metrics.gcm")

MIN_SPACING_S = 10.0
MAX_SERIES_PER_REQUEST = 200
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class FlushResult:
    written: int = 0  # series accepted
    requests: int = 0  # CreateTimeSeries requests that succeeded
    failed_requests: int = 0
    not_due: int = 0  # series skipped: written less than MIN_SPACING_S ago, or unchanged


class CloudMonitoringSink:
    name = "cloud_monitoring"

    def __init__(
        self, project: str, *, endpoint: str | None = None,
        client_factory: Callable[[], Any] | None = None, resource: conv.GenericTask | None = None,
        job: str = "orchestrator", flush_interval_s: float = MIN_SPACING_S,
        clock: Clock = time.time, request_timeout_s: float = 10.0, flush_deadline_s: float = 30.0,
        max_attempts: int = 3, resend_unchanged_s: float = 60.0,
        batch_size: int = MAX_SERIES_PER_REQUEST, gauge_stale_s: float = GAUGE_STALE_S,
    ) -> None:
        self.project = project
        self._client_factory = client_factory or (lambda: metric_client(endpoint))
        self._client: Any = None
        self.resource = resource or conv.GenericTask(project_id=project, job=job)
        self._resource_pb = self.resource.pb()
        self._interval = flush_interval_s
        self._clock = clock
        self._timeout = request_timeout_s
        self._deadline = flush_deadline_s
        self._attempts = max_attempts
        self._resend = max(resend_unchanged_s, MIN_SPACING_S)
        self._batch = max(1, min(batch_size, MAX_SERIES_PER_REQUEST))
        self._fresh = GaugeFreshness(max(gauge_stale_s, self._resend))
        self._recorder: Recorder | None = None
        self._state: dict[SeriesKey, tuple[float, int]] = {}  # key -> (last attempt, version)
        self._unwritable: set[tuple[str, str]] = set()  # (metric, reason) already logged
        self._skipped: set[SeriesKey] = set()  # series whose current value is unwritable
        self._created: set[str] = set()
        self._templates: dict[SeriesKey, Any] = {}
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log = -1e18
        self._failing = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, recorder: Recorder) -> None:
        """Attach to ``recorder`` and start the one flush thread."""
        self._recorder = recorder
        self._stop.clear()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="orch-metrics-gcm", daemon=True)
        self._thread.start()

    def attach(self, recorder: Recorder) -> None:
        """Attach without a thread (call :meth:`flush_once` yourself: tests, benches)."""
        self._recorder = recorder

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after one last flush, waiting at most ``timeout_s``; then close the
        channel (which also cancels a call still hanging in an abandoned flush)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("cloud monitoring exporter still busy at close; abandoning it")
        self._closed = True
        transport = getattr(self._client, "transport", None)
        if transport is not None:
            try:
                transport.close()
            except Exception:  # best effort
                log.debug("closing the monitoring channel failed", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._guarded_flush()
        self._guarded_flush()

    def _guarded_flush(self) -> None:
        try:
            self.flush_once()
        except Exception as exc:  # never let the thread die
            self._failed("error", exc, "flush")

    # -- flushing ---------------------------------------------------------------------------
    def flush_once(self) -> FlushResult:
        """Write every due series; returns what happened. Never raises for export errors."""
        result = FlushResult()
        rec = self._recorder
        if rec is None:
            return result
        with self._flush_lock:
            now = self._clock()
            due = self._due(rec.snapshot(), now, result)
            if not due:
                return result
            deadline = time.monotonic() + self._deadline
            client = self._get_client()
            if client is None:
                return result
            self._ensure_descriptors(client, {p.metric.name: p.metric for p in due}, deadline)
            for batch in conv.batches(due, self._batch):
                pts: list[Point] = list(batch)  # type: ignore[arg-type]
                for p in pts:
                    old = self._state.get(p.key)
                    self._state[p.key] = (now, old[1] if old else -1)
                if time.monotonic() >= deadline:
                    result.failed_requests += 1
                    self._failed("DEADLINE", None, f"{len(pts)} series")
                    continue
                request = self._request(pts, now)
                try:
                    self._call(client.create_time_series, request, deadline,
                               retry_on=is_retryable_write)
                except Exception as exc:
                    result.failed_requests += 1
                    self._failed(_reason(exc), exc, f"{len(pts)} series")
                    continue
                result.requests += 1
                result.written += len(pts)
                for p in pts:
                    self._state[p.key] = (now, p.version)
            if result.failed_requests == 0 and self._failing:
                self._failing = False
                log.info("cloud monitoring export recovered")
        return result

    def _request(self, points: list[Point], now: float) -> Any:
        request = conv.CreateTimeSeriesRequestPb(name=f"projects/{self.project}")
        for p in points:
            tpl = self._templates.get(p.key)
            if tpl is None:
                tpl = self._templates[p.key] = conv.series_template(p, self._resource_pb)
            ts = request.time_series.add()
            ts.CopyFrom(tpl)
            conv.add_point(ts, p, now)
        return request

    def _due(self, points: list[Point], now: float, result: FlushResult) -> list[Point]:
        due: list[Point] = []
        for p in points:
            if p.version == 0:
                continue
            if not self._fresh.fresh(p, now):
                result.not_due += 1
                continue
            st = self._state.get(p.key)
            if st is not None:
                age = now - st[0]
                if age < MIN_SPACING_S or (p.version == st[1] and age < self._resend):
                    result.not_due += 1
                    continue
                if p.version == st[1] and p.key in self._skipped:
                    continue  # still the value the API cannot take
            reason = conv.unwritable(p)
            if reason is not None:
                self._skip(p, reason, now)
                continue
            self._skipped.discard(p.key)
            due.append(p)
        return due

    def _skip(self, p: Point, reason: str, now: float) -> None:
        """Leave out a series the API would refuse at every flush (it would also fail the
        request it is in); counted once per value, logged once per metric and reason (no
        label values: they may name a tenant)."""
        self._state[p.key] = (now, p.version)
        self._skipped.add(p.key)
        if self._recorder is not None:
            self._recorder.counter(EXPORTER_FAILURES, 1, sink=self.name, reason=reason)
        if (p.metric.name, reason) not in self._unwritable:
            self._unwritable.add((p.metric.name, reason))
            log.warning("cloud monitoring export: a series of %s left out (%s)",
                        p.metric.name, reason)

    def _get_client(self) -> Any:
        if self._closed:
            return None
        if self._client is None:
            try:
                self._client = self._client_factory()
            except Exception as exc:
                self._failed("client", exc, "client setup")
                return None
        return self._client

    def _ensure_descriptors(self, client: Any, metrics: dict[str, MetricDef],
                            deadline: float) -> None:
        for name, metric in metrics.items():
            if name in self._created or time.monotonic() >= deadline:
                continue
            try:
                self._call(client.create_metric_descriptor, {
                    "name": f"projects/{self.project}",
                    "metric_descriptor": conv.descriptor_pb(self.project, metric),
                }, deadline)
            except gexc.AlreadyExists:
                pass
            except Exception as exc:
                self._failed(_reason(exc), exc, f"metric descriptor {metric.name}")
                if is_transient(exc):
                    return  # the service is down or slow: don't spend the deadline here
                continue
            self._created.add(name)

    def _call(self, method: Callable[..., Any], request: Any, deadline: float,
              retry_on: Callable[[BaseException], bool] = is_transient) -> Any:
        def attempt() -> Any:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise gexc.DeadlineExceeded("flush deadline reached")  # type: ignore[no-untyped-call]
            return method(request=request, timeout=min(self._timeout, remaining))

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts) | stop_after_delay(
                max(0.0, deadline - time.monotonic())),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
            retry=retry_if_exception(retry_on), reraise=True,
        )
        return retrying(attempt)

    def _failed(self, reason: str, exc: BaseException | None, what: str) -> None:
        """Count a failure; log it (status code and what was lost, never payloads) on the
        first failure and then at most once a minute while failures go on."""
        if self._recorder is not None:
            self._recorder.counter(EXPORTER_FAILURES, 1, sink=self.name, reason=reason)
        now = time.monotonic()
        if not self._failing or now - self._last_log >= 60.0:
            self._failing = True
            self._last_log = now
            log.warning("cloud monitoring export failed (%s, %s): %s not written; will retry",
                        reason, type(exc).__name__ if exc else "-", what)


def _reason(exc: BaseException) -> str:
    code = status_code(exc)
    return code.name if code is not None else type(exc).__name__
