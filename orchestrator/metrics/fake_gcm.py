"""A local fake of the Cloud Monitoring gRPC API, for tests and dev.

google-cloud-monitoring ships no ``*_pb2_grpc`` servicers, so the services are registered as
generic gRPC handlers on the real request/response protobuf classes: the real client talks to
it over plain gRPC exactly as it would to monitoring.googleapis.com (point it there with
``ORCH_GCP_MONITORING_ENDPOINT=127.0.0.1:<port>``). Every request is recorded.

Implemented: MetricService (Create/Get/List MetricDescriptors, CreateTimeSeries),
AlertPolicyService (List/Get/Create/Update), ServiceMonitoringService (Get/Create/Update
Service, List/Get/Create/Update ServiceLevelObjective), DashboardsService (List/Get/Create/
Update Dashboard, with etags: an update carrying a stale etag is ABORTED, as in the real
API). CreateTimeSeries enforces the real API's rules that matter to an exporter (the
``TimeSeries``, ``TimeInterval``, ``LabelDescriptor`` and ``projects.timeSeries.create``
references): <= 200 series per request; per series: exactly one point, at most once per
request, the ``generic_task``/``global`` resource labels, label keys
``[a-zA-Z][a-zA-Z0-9_]*`` (<= 100) and values <= 1024 characters, kind and value type as the
descriptor's (auto-created as GAUGE or CUMULATIVE only), GAUGE start == end (or none),
CUMULATIVE start < end with a start that stays put (or a reset after the last end), finite
values, a consistent distribution, at most one point per 5 s, and with ``clock`` an end time
at most 25 h old and 5 min ahead. Like the real API a request is *partially* applied: the
valid series are written, the others rejected, and the answer is INVALID_ARGUMENT naming
them (``timeSeries[i]``) with a ``CreateTimeSeriesSummary`` in the status details.

Faults: :meth:`FakeMonitoringServer.hang` (handlers never answer until :meth:`release` or
stop), :meth:`FakeMonitoringServer.fail_next` (answer with a gRPC status; with
``after_apply`` the request is applied first, as when a reply is lost after the write).

Run for dev: ``python -m orchestrator.metrics.fake_gcm --port 8086``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import metric_pb2
from google.cloud.monitoring_dashboard_v1 import types as dt
from google.cloud.monitoring_v3 import types as t
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

MAX_SERIES = 200
MIN_SAMPLING_S = 5.0
MAX_PAST_S = 25 * 3600.0
MAX_FUTURE_S = 300.0
MAX_LABEL_VALUE = 1024
LABEL_KEY = re.compile(r"[a-zA-Z][a-zA-Z0-9_]{0,99}")
METRIC_DOMAINS = ("custom.googleapis.com/", "workload.googleapis.com/")
RESOURCE_LABELS = {
    "global": {"project_id"},
    "generic_task": {"project_id", "location", "namespace", "job", "task_id"},
    "generic_node": {"project_id", "location", "namespace", "node_id"},
}
_GAUGE, _DELTA, _CUMULATIVE = 1, 2, 3
_VALUE_TYPE = {"bool_value": 1, "int64_value": 2, "double_value": 3, "string_value": 4,
               "distribution_value": 5}

_M = "google.monitoring.v3.MetricService"
_A = "google.monitoring.v3.AlertPolicyService"
_S = "google.monitoring.v3.ServiceMonitoringService"
_D = "google.monitoring.dashboard.v1.DashboardsService"


@dataclass(frozen=True)
class Recorded:
    method: str  # e.g. "CreateTimeSeries"
    request: Any  # the request protobuf (raw pb2 message)


class FakeMonitoringServer:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_workers: int = 16,
                 clock: Callable[[], float] | None = None) -> None:
        self._host, self._want_port, self._workers = host, port, max_workers
        self._clock = clock  # with it, end times outside [now - 25 h, now + 5 min] are refused
        self._server: grpc.Server | None = None
        self.port = 0
        self._cond = threading.Condition()
        self.requests: list[Recorded] = []
        self.descriptors: dict[str, Any] = {}  # metric type -> MetricDescriptor
        self.series_points: dict[tuple[Any, ...], list[Any]] = {}  # series key -> [Point]
        self.series: dict[tuple[Any, ...], Any] = {}  # series key -> last TimeSeries
        self.rejected: list[tuple[tuple[Any, ...], str]] = []  # (series key, why), in order
        self.policies: dict[str, Any] = {}
        self.services: dict[str, Any] = {}
        self.slos: dict[str, Any] = {}
        self.dashboards: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._hang = threading.Event()
        self._release = threading.Event()
        self._faults: dict[str, list[tuple[grpc.StatusCode, bool]]] = {}

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self.port}"

    def start(self) -> FakeMonitoringServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers))
        server.add_generic_rpc_handlers(self._handlers())
        self.port = server.add_insecure_port(f"{self._host}:{self._want_port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> FakeMonitoringServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and inspection --------------------------------------------------------------
    def hang(self) -> None:
        """From now on every call is recorded and then never answered (until release/stop)."""
        self._release.clear()
        self._hang.set()

    def release(self) -> None:
        self._hang.clear()
        self._release.set()

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1, *,
                  after_apply: bool = False) -> None:
        """Answer the next ``times`` calls of ``method`` with ``code``; with ``after_apply``
        each is carried out first (a write whose reply is lost or cut short)."""
        with self._cond:
            self._faults.setdefault(method, []).extend([(code, after_apply)] * times)

    def calls(self, method: str) -> list[Any]:
        with self._cond:
            return [r.request for r in self.requests if r.method == method]

    def clear_requests(self) -> None:
        with self._cond:
            self.requests.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every request."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # -- plumbing ---------------------------------------------------------------------------
    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        def h(req: Any, fn: Callable[[Any, grpc.ServicerContext], Message],
              name: str) -> grpc.RpcMethodHandler:
            req_pb = req.pb() if hasattr(req, "pb") else req

            def behaviour(request: Any, context: grpc.ServicerContext) -> Message:
                return self._dispatch(name, fn, request, context)

            return grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=req_pb.FromString,
                response_serializer=lambda m: m.SerializeToString())

        metric = {n: h(r, f, n) for n, r, f in (
            ("CreateMetricDescriptor", t.CreateMetricDescriptorRequest, self._create_descriptor),
            ("GetMetricDescriptor", t.GetMetricDescriptorRequest, self._get_descriptor),
            ("ListMetricDescriptors", t.ListMetricDescriptorsRequest, self._list_descriptors),
            ("CreateTimeSeries", t.CreateTimeSeriesRequest, self._create_time_series),
        )}
        alert = {n: h(r, f, n) for n, r, f in (
            ("ListAlertPolicies", t.ListAlertPoliciesRequest, self._list_policies),
            ("GetAlertPolicy", t.GetAlertPolicyRequest, self._get_policy),
            ("CreateAlertPolicy", t.CreateAlertPolicyRequest, self._create_policy),
            ("UpdateAlertPolicy", t.UpdateAlertPolicyRequest, self._update_policy),
        )}
        svc = {n: h(r, f, n) for n, r, f in (
            ("GetService", t.GetServiceRequest, self._get_service),
            ("CreateService", t.CreateServiceRequest, self._create_service),
            ("UpdateService", t.UpdateServiceRequest, self._update_service),
            ("ListServiceLevelObjectives", t.ListServiceLevelObjectivesRequest, self._list_slos),
            ("GetServiceLevelObjective", t.GetServiceLevelObjectiveRequest, self._get_slo),
            ("CreateServiceLevelObjective", t.CreateServiceLevelObjectiveRequest,
             self._create_slo),
            ("UpdateServiceLevelObjective", t.UpdateServiceLevelObjectiveRequest,
             self._update_slo),
        )}
        dash = {n: h(r, f, n) for n, r, f in (
            ("ListDashboards", dt.ListDashboardsRequest, self._list_dashboards),
            ("GetDashboard", dt.GetDashboardRequest, self._get_dashboard),
            ("CreateDashboard", dt.CreateDashboardRequest, self._create_dashboard),
            ("UpdateDashboard", dt.UpdateDashboardRequest, self._update_dashboard),
        )}
        return [grpc.method_handlers_generic_handler(_M, metric),
                grpc.method_handlers_generic_handler(_A, alert),
                grpc.method_handlers_generic_handler(_S, svc),
                grpc.method_handlers_generic_handler(_D, dash)]

    def _dispatch(self, name: str, fn: Callable[[Any, grpc.ServicerContext], Message],
                  request: Any, context: grpc.ServicerContext) -> Message:
        with self._cond:
            self.requests.append(Recorded(name, request))
            faults = self._faults.get(name)
            fault = faults.pop(0) if faults else None
            self._cond.notify_all()
        if self._hang.is_set():
            self._release.wait()
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake server released")
        if fault is not None and not fault[1]:
            context.abort(fault[0], "injected fault")
        with self._cond:
            try:
                reply = fn(request, context)
            finally:
                self._cond.notify_all()
        if fault is not None:
            context.abort(fault[0], "injected fault (after the request was applied)")
        return reply

    # -- MetricService ----------------------------------------------------------------------
    def _create_descriptor(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        d = type(req.metric_descriptor)()
        d.CopyFrom(req.metric_descriptor)
        d.name = f"{req.name}/metricDescriptors/{d.type}"
        old = self.descriptors.get(d.type)
        # metricDescriptors.create: "updated if it already exists, except that metric labels
        # are never removed"
        if old is not None:
            have = {lab.key for lab in d.labels}
            d.labels.extend(lab for lab in old.labels if lab.key not in have)
        self.descriptors[d.type] = d
        return d

    def _get_descriptor(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        mtype = req.name.split("/metricDescriptors/", 1)[-1]
        if mtype not in self.descriptors:
            ctx.abort(grpc.StatusCode.NOT_FOUND, f"no descriptor {mtype}")
        return self.descriptors[mtype]

    def _list_descriptors(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        f = req.filter
        prefix = f.split('starts_with("', 1)[1].split('"', 1)[0] if "starts_with" in f else ""
        out = t.ListMetricDescriptorsResponse.pb()()
        out.metric_descriptors.extend(
            d for k, d in sorted(self.descriptors.items()) if k.startswith(prefix))
        return out

    def _create_time_series(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if len(req.time_series) > MAX_SERIES:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_SERIES} time series")
        seen: set[tuple[Any, ...]] = set()
        errors: list[tuple[int, str]] = []
        for i, ts in enumerate(req.time_series):
            key = _series_key(ts)
            why = self._invalid(ts, key, seen)
            seen.add(key)
            if why is not None:
                errors.append((i, why))
                self.rejected.append((key, why))
                continue
            if ts.metric.type not in self.descriptors:  # auto-created, as the real API does
                self.descriptors[ts.metric.type] = _auto_descriptor(req.name, ts)
            self.series_points.setdefault(key, []).append(ts.points[0])
            self.series[key] = ts
        if errors:
            # like the real API: the valid series above are written; the answer names the
            # others, with a summary of what was and was not written in the status details
            summary = t.CreateTimeSeriesSummary.pb()(
                total_point_count=len(req.time_series),
                success_point_count=len(req.time_series) - len(errors))
            err = summary.errors.add()
            err.status.code = code_pb2.INVALID_ARGUMENT
            err.point_count = len(errors)
            detail = any_pb2.Any()
            detail.Pack(summary)
            message = "One or more TimeSeries could not be written: " + "; ".join(
                f"{why}: timeSeries[{i}]" for i, why in errors)
            ctx.abort_with_status(rpc_status.to_status(status_pb2.Status(
                code=code_pb2.INVALID_ARGUMENT, message=message[:2000], details=[detail])))
        return empty_pb2.Empty()

    def _invalid(self, ts: Any, key: tuple[Any, ...], seen: set[tuple[Any, ...]]) -> str | None:
        """Why the real API would refuse this series, or None."""
        if key in seen:
            return ("Duplicate TimeSeries encountered. Only one point can be written per "
                    "TimeSeries per request.")
        if len(ts.points) != 1:
            return "a time series written must contain exactly one point"
        if not ts.metric.type.startswith(METRIC_DOMAINS):
            return f"metric type {ts.metric.type!r}: not a user-defined metric domain"
        missing = RESOURCE_LABELS.get(ts.resource.type, set()) - {
            k for k, v in ts.resource.labels.items() if v}
        if missing:
            return f"resource {ts.resource.type} lacks labels {sorted(missing)}"
        for k, v in ts.metric.labels.items():
            if not LABEL_KEY.fullmatch(k):
                return f"invalid metric label key {k!r}"
            if len(v) > MAX_LABEL_VALUE:
                return f"metric label {k}: value longer than {MAX_LABEL_VALUE} characters"
        point = ts.points[0]
        which = point.value.WhichOneof("value")
        if which is None:
            return "the point has no value"
        kind, vtype = ts.metric_kind, _VALUE_TYPE[which]
        desc = self.descriptors.get(ts.metric.type)
        if desc is not None:
            if kind and kind != desc.metric_kind:
                return "metric kind differs from the metric descriptor's"
            kind = desc.metric_kind
            if vtype != desc.value_type or (ts.value_type and ts.value_type != vtype):
                return "value type differs from the metric descriptor's"
            unknown = set(ts.metric.labels) - {lab.key for lab in desc.labels}
            if unknown:
                return f"labels {sorted(unknown)} are not in the metric descriptor"
        elif kind not in (0, _GAUGE, _CUMULATIVE):
            return "an auto-created metric must be GAUGE or CUMULATIVE"
        kind = kind or _GAUGE
        why = _bad_value(point.value, which)
        if why is not None:
            return why
        end = _secs(point.interval.end_time)
        has_start = point.interval.HasField("start_time")
        start = _secs(point.interval.start_time) if has_start else end
        if kind == _GAUGE and start != end:
            return "a GAUGE point's start time must equal its end time (or be unset)"
        if kind == _CUMULATIVE and not start < end:
            return ("The start time must be before the end time for the non-gauge metric "
                    f"{ts.metric.type!r}")
        if self._clock is not None:
            now = self._clock()
            if end < now - MAX_PAST_S or end > now + MAX_FUTURE_S:
                return "the end time is more than 25 hours in the past or 5 minutes ahead"
        prev = self.series_points.get(key)
        if prev:
            last = prev[-1].interval
            last_end = _secs(last.end_time)
            if end - last_end < MIN_SAMPLING_S:
                return ("One or more points were written more frequently than the maximum "
                        "sampling period configured for the metric.")
            last_start = _secs(last.start_time) if last.HasField("start_time") else last_end
            if kind == _CUMULATIVE and start != last_start and start <= last_end:
                return ("One or more of the points specified had an older start time than "
                        "the most recent point.")
        return None

    # -- AlertPolicyService -----------------------------------------------------------------
    def _list_policies(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        out = t.ListAlertPoliciesResponse.pb()()
        out.alert_policies.extend(p for n, p in sorted(self.policies.items())
                                  if n.startswith(req.name + "/"))
        out.total_size = len(out.alert_policies)
        return out

    def _get_policy(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if req.name not in self.policies:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such policy")
        return self.policies[req.name]

    def _store_policy(self, policy: Any, name: str) -> Message:
        p = type(policy)()
        p.CopyFrom(policy)
        p.name = name
        for c in p.conditions:
            if not c.name:
                c.name = f"{name}/conditions/{next(self._ids)}"
        self.policies[name] = p
        return p

    def _create_policy(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        name = f"{req.name}/alertPolicies/{next(self._ids)}"
        return self._store_policy(req.alert_policy, name)

    def _update_policy(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        name = req.alert_policy.name
        if name not in self.policies:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such policy")
        return self._store_policy(req.alert_policy, name)

    # -- ServiceMonitoringService -----------------------------------------------------------
    def _get_service(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if req.name not in self.services:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such service")
        return self.services[req.name]

    def _create_service(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        name = f"{req.parent}/services/{req.service_id or next(self._ids)}"
        if name in self.services:
            ctx.abort(grpc.StatusCode.ALREADY_EXISTS, "service exists")
        return self._copy_into(self.services, req.service, name)

    def _update_service(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if req.service.name not in self.services:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such service")
        return self._copy_into(self.services, req.service, req.service.name)

    def _list_slos(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        out = t.ListServiceLevelObjectivesResponse.pb()()
        out.service_level_objectives.extend(
            s for n, s in sorted(self.slos.items()) if n.startswith(req.parent + "/"))
        return out

    def _get_slo(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if req.name not in self.slos:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such slo")
        return self.slos[req.name]

    def _create_slo(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        sid = req.service_level_objective_id or str(next(self._ids))
        name = f"{req.parent}/serviceLevelObjectives/{sid}"
        if req.parent not in self.services:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such service")
        if name in self.slos:
            ctx.abort(grpc.StatusCode.ALREADY_EXISTS, "slo exists")
        return self._copy_into(self.slos, req.service_level_objective, name)

    def _update_slo(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        name = req.service_level_objective.name
        if name not in self.slos:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such slo")
        return self._copy_into(self.slos, req.service_level_objective, name)

    # -- DashboardsService -----------------------------------------------------------------
    def _list_dashboards(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        out = dt.ListDashboardsResponse.pb()()
        out.dashboards.extend(d for n, d in sorted(self.dashboards.items())
                              if n.startswith(req.parent + "/"))
        return out

    def _get_dashboard(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if req.name not in self.dashboards:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such dashboard")
        return self.dashboards[req.name]

    def _create_dashboard(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        # like the real API: the caller may choose the id in ``dashboard.name``
        name = req.dashboard.name or f"{req.parent}/dashboards/{next(self._ids)}"
        if name in self.dashboards:
            ctx.abort(grpc.StatusCode.ALREADY_EXISTS, "dashboard exists")
        return self._store_dashboard(req.dashboard, name)

    def _update_dashboard(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        if req.dashboard.name not in self.dashboards:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such dashboard")
        have = self.dashboards[req.dashboard.name]
        if req.dashboard.etag and req.dashboard.etag != have.etag:
            ctx.abort(grpc.StatusCode.ABORTED, "etag mismatch: the dashboard changed")
        return self._store_dashboard(req.dashboard, req.dashboard.name)

    def _store_dashboard(self, dashboard: Any, name: str) -> Message:
        d = type(dashboard)()
        d.CopyFrom(dashboard)
        d.name = name
        d.etag = f"etag-{next(self._ids)}"
        self.dashboards[name] = d
        return d

    @staticmethod
    def _copy_into(store: dict[str, Any], msg: Any, name: str) -> Message:
        m = type(msg)()
        m.CopyFrom(msg)
        m.name = name
        store[name] = m
        return m


def _secs(ts: Any) -> float:
    return float(ts.seconds) + float(ts.nanos) / 1e9


def _series_key(ts: Any) -> tuple[Any, ...]:
    return (ts.metric.type, tuple(sorted(ts.metric.labels.items())), ts.resource.type,
            tuple(sorted(ts.resource.labels.items())))


def _bad_value(value: Any, which: str) -> str | None:
    if which == "double_value" and not math.isfinite(value.double_value):
        return f"non-finite double value {value.double_value}"
    if which != "distribution_value":
        return None
    d = value.distribution_value
    if not (math.isfinite(d.mean) and math.isfinite(d.sum_of_squared_deviation)):
        return f"Distribution value with a non-finite |mean| of {d.mean}"
    if d.count == 0 and (d.mean or d.sum_of_squared_deviation):
        return "an empty distribution must have a zero mean and deviation"
    bounds = list(d.bucket_options.explicit_buckets.bounds)
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        return "explicit bucket bounds must be strictly increasing"
    if len(d.bucket_counts) > len(bounds) + 1 or (
            d.bucket_counts and sum(d.bucket_counts) != d.count):
        return "bucket counts do not match the bucket options or the count"
    return None


def _auto_descriptor(parent: str, ts: Any) -> Any:
    which = ts.points[0].value.WhichOneof("value")
    d = metric_pb2.MetricDescriptor(
        name=f"{parent}/metricDescriptors/{ts.metric.type}", type=ts.metric.type,
        metric_kind=ts.metric_kind or _GAUGE, value_type=_VALUE_TYPE[which or "double_value"])
    for k in sorted(ts.metric.labels):
        d.labels.add(key=k)
    return d


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - dev entry point
    ap = argparse.ArgumentParser(description="Local fake Cloud Monitoring gRPC API")
    ap.add_argument("--port", type=int, default=8086)
    args = ap.parse_args(argv)
    server = FakeMonitoringServer(port=args.port).start()
    print(f"fake Cloud Monitoring on {server.endpoint}; "
          f"export ORCH_GCP_MONITORING_ENDPOINT={server.endpoint}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
