"""Cloud Monitoring API clients: Google's endpoint with default credentials, or a plain-gRPC
``host:port`` (``ORCH_GCP_MONITORING_ENDPOINT``: a private endpoint or the local fake)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.cloud import monitoring_dashboard_v1, monitoring_v3
from google.cloud.monitoring_dashboard_v1.services.dashboards_service.transports import (
    DashboardsServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.service_monitoring_service.transports import (
    ServiceMonitoringServiceGrpcTransport,
)

# Transient gRPC failures worth a retry (the rest — INVALID_ARGUMENT, PERMISSION_DENIED... —
# will fail the same way again).
TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
})
# CreateTimeSeries is not idempotent (Google's client gives it no retry): after a timeout, an
# ABORTED or an INTERNAL the points may have been written (the API also applies a request in
# part), and the same points sent again are refused as "written more frequently than the
# maximum sampling period". Only UNAVAILABLE — the service was not reached — is retried at
# once; otherwise the next flush writes fresh points.
WRITE_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


def _channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(endpoint)


def metric_client(endpoint: str | None = None) -> monitoring_v3.MetricServiceClient:
    if endpoint:
        return monitoring_v3.MetricServiceClient(
            transport=MetricServiceGrpcTransport(channel=_channel(endpoint)))
    return monitoring_v3.MetricServiceClient()


@dataclass
class MonitoringClients:
    metrics: monitoring_v3.MetricServiceClient
    alerts: monitoring_v3.AlertPolicyServiceClient
    services: monitoring_v3.ServiceMonitoringServiceClient
    dashboards: monitoring_dashboard_v1.DashboardsServiceClient


def make_clients(endpoint: str | None = None) -> MonitoringClients:
    """The four clients ``apply_monitoring`` uses; with ``endpoint``, one insecure channel and
    no credentials at all (a transport given a channel ignores credentials)."""
    if not endpoint:
        return MonitoringClients(monitoring_v3.MetricServiceClient(),
                                 monitoring_v3.AlertPolicyServiceClient(),
                                 monitoring_v3.ServiceMonitoringServiceClient(),
                                 monitoring_dashboard_v1.DashboardsServiceClient())
    channel = _channel(endpoint)
    return MonitoringClients(
        monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel)),
        monitoring_v3.AlertPolicyServiceClient(
            transport=AlertPolicyServiceGrpcTransport(channel=channel)),
        monitoring_v3.ServiceMonitoringServiceClient(
            transport=ServiceMonitoringServiceGrpcTransport(channel=channel)),
        monitoring_dashboard_v1.DashboardsServiceClient(
            transport=DashboardsServiceGrpcTransport(channel=channel)),
    )


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code of a google.api_core error (or a raw grpc.RpcError), if any."""
    code = getattr(exc, "grpc_status_code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        c = exc.code()
        return c if isinstance(c, grpc.StatusCode) else None
    return None


def is_transient(exc: BaseException) -> bool:
    return status_code(exc) in TRANSIENT_CODES


def is_retryable_write(exc: BaseException) -> bool:
    return status_code(exc) in WRITE_RETRY_CODES
