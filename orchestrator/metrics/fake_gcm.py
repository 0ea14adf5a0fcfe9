"""A local fake of the Cloud Monitoring gRPC API, for tests and dev.

google-cloud-monitoring ships no ``*_pb2_grpc`` servicers, so the services are registered as
generic gRPC handlers on the real request/response protobuf classes: the real client talks to
it over plain gRPC exactly as it would to monitoring.googleapis.com (point it there with
``ORCH_GCP_MONITORING_ENDPOINT=127.0.0.1:<port>``). Every request is recorded.

Implemented: MetricService (Create/Get/List MetricDescriptors, CreateTimeSeries),
AlertPolicyService (List/Get/Create/Update), ServiceMonitoringService (Get/Create/Update
Service, List/Get/Create/Update ServiceLevelObjective), DashboardsService (List/Get/Create/
Update Dashboard, with etags: an update carrying a stale etag is ABORTED, as in the real
API). CreateTimeSeries enforces the real rules that matter to an exporter: <= 200 series per
request, one point per series, a series at most once per request, points in time order, no
more than one point per 5 s per series.

Faults: :meth:`FakeMonitoringServer.hang` (handlers never answer until :meth:`release` or
stop), :meth:`FakeMonitoringServer.fail_next` (answer with a gRPC status).

Run for dev: ``python -m orchestrator.metrics.fake_gcm --port 8086``.
"""

from __future__ import annotations

import argparse
import itertools
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.cloud.monitoring_dashboard_v1 import types as dt
from google.cloud.monitoring_v3 import types as t
from google.protobuf import empty_pb2
from google.protobuf.message import Message

MAX_SERIES = 200
MIN_SAMPLING_S = 5.0

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

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_workers: int = 16) -> None:
        self._host, self._want_port, self._workers = host, port, max_workers
        self._server: grpc.Server | None = None
        self.port = 0
        self._cond = threading.Condition()
        self.requests: list[Recorded] = []
        self.descriptors: dict[str, Any] = {}  # metric type -> MetricDescriptor
        self.series_points: dict[tuple[Any, ...], list[Any]] = {}  # series key -> [Point]
        self.series: dict[tuple[Any, ...], Any] = {}  # series key -> last TimeSeries
        self.policies: dict[str, Any] = {}
        self.services: dict[str, Any] = {}
        self.slos: dict[str, Any] = {}
        self.dashboards: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._hang = threading.Event()
        self._release = threading.Event()
        self._faults: dict[str, list[grpc.StatusCode]] = {}

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

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        with self._cond:
            self._faults.setdefault(method, []).extend([code] * times)

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
        if fault is not None:
            context.abort(fault, "injected fault")
        with self._cond:
            try:
                return fn(request, context)
            finally:
                self._cond.notify_all()

    # -- MetricService ----------------------------------------------------------------------
    def _create_descriptor(self, req: Any, ctx: grpc.ServicerContext) -> Message:
        d = type(req.metric_descriptor)()
        d.CopyFrom(req.metric_descriptor)
        d.name = f"{req.name}/metricDescriptors/{d.type}"
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
        for ts in req.time_series:
            key = (ts.metric.type, tuple(sorted(ts.metric.labels.items())), ts.resource.type,
                   tuple(sorted(ts.resource.labels.items())))
            if key in seen or len(ts.points) != 1:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "one point per series per request")
            seen.add(key)
            end = _secs(ts.points[0].interval.end_time)
            prev = self.series_points.get(key)
            if prev and end - _secs(prev[-1].interval.end_time) < MIN_SAMPLING_S:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "points written more frequently than the maximum sampling period")
        for ts in req.time_series:
            key = (ts.metric.type, tuple(sorted(ts.metric.labels.items())), ts.resource.type,
                   tuple(sorted(ts.resource.labels.items())))
            self.series_points.setdefault(key, []).append(ts.points[0])
            self.series[key] = ts
        return empty_pb2.Empty()

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
