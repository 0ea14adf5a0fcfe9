"""``orchestrator monitoring apply``: metric descriptors (from the catalogue), alert policies
and SLOs (from ``config/monitoring/*.yaml``) and the dashboard
(``config/monitoring/cloud-monitoring-dashboard.json``) in Cloud Monitoring — idempotently.

Every object is compared with what the project already has and written only when a field we
manage differs (fields the server adds — names, mutation records, defaults — are ignored), so
a second run changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.api_core import exceptions as gexc
from google.cloud import monitoring_dashboard_v1 as md1
from google.cloud import monitoring_v3 as mv3
from google.protobuf import json_format

from orchestrator.errors import ConfigurationError
from orchestrator.metrics.catalogue import CATALOGUE, METRIC_PREFIX, MetricDef
from orchestrator.metrics.clients import MonitoringClients, make_clients
from orchestrator.metrics.gcm_convert import descriptor_pb

log = logging.getLogger("orchestrator.metrics.apply")

CONFIG_DIR = Path("config") / "monitoring"
ClientFactory = Callable[[], MonitoringClients]

AlertPolicyPb = mv3.AlertPolicy.pb()
ServicePb = mv3.Service.pb()
SloPb = mv3.ServiceLevelObjective.pb()
DashboardPb = md1.Dashboard.pb()
DASHBOARD_FILE = "cloud-monitoring-dashboard.json"


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def summary(self) -> str:
        return (f"{len(self.created)} created, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged")


@dataclass(frozen=True)
class MonitoringConfig:
    policies: list[Any]  # AlertPolicy pb2
    service_id: str
    service: Any  # Service pb2
    slos: list[tuple[str, Any]]  # (slo id, ServiceLevelObjective pb2)
    dashboards: list[Any] = field(default_factory=list)  # Dashboard pb2, by displayName


def config_dir_found(config_dir: Path | None = None) -> Path:
    """``config_dir``, else ``config/monitoring`` in the working directory (an installed
    copy, as the Docker image's /app), else the source checkout's own."""
    if config_dir is not None:
        return config_dir
    if CONFIG_DIR.is_dir():
        return CONFIG_DIR
    checkout = Path(__file__).resolve().parents[2] / CONFIG_DIR
    return checkout if checkout.is_dir() else CONFIG_DIR


def load_config(config_dir: Path | None = None) -> MonitoringConfig:
    """Parse ``alert_policies.yaml`` and ``slos.yaml``; a bad file is a ConfigurationError."""
    config_dir = config_dir_found(config_dir)
    try:
        raw_policies = yaml.safe_load((config_dir / "alert_policies.yaml").read_text())
        raw_slos = yaml.safe_load((config_dir / "slos.yaml").read_text())
        policies = [json_format.ParseDict(p, AlertPolicyPb()) for p in raw_policies]
        svc = dict(raw_slos["service"])
        service_id = str(svc.pop("id"))
        service = json_format.ParseDict(svc, ServicePb())
        slos = []
        for raw in raw_slos["slos"]:
            raw = dict(raw)
            slo_id = str(raw.pop("id"))
            slos.append((slo_id, json_format.ParseDict(raw, SloPb())))
        dashboard = json_format.ParseDict(
            json.loads((config_dir / DASHBOARD_FILE).read_text()), DashboardPb())
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError,
            json_format.ParseError) as exc:
        raise ConfigurationError(f"monitoring config in {config_dir}: {exc}") from None
    names = [p.display_name for p in policies]
    if len(set(names)) != len(names) or not all(names):
        raise ConfigurationError("alert policies need unique, non-empty displayName values")
    if not dashboard.display_name or dashboard.name:
        raise ConfigurationError(f"{DASHBOARD_FILE}: needs a displayName (it is matched by it) "
                                 "and no name (the project's is given at apply)")
    return MonitoringConfig(policies, service_id, service, slos, [dashboard])


def _dict(msg: Any) -> dict[str, Any]:
    pb = type(msg).pb(msg) if hasattr(type(msg), "pb") else msg
    out: dict[str, Any] = json_format.MessageToDict(pb)
    return out


def is_subset(want: Any, have: Any) -> bool:
    """Every field of ``want`` (dicts: recursively; lists: same length, pairwise) is in
    ``have``; extra server-side fields in ``have`` are ignored."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(
            is_subset(w, h) for w, h in zip(want, have, strict=True))
    return bool(want == have)


def apply_monitoring(
    project: str | None, client_factory: ClientFactory | None = None, *,
    endpoint: str | None = None, config_dir: Path | None = None,
    notification_channels: Sequence[str] = (), catalogue: dict[str, MetricDef] | None = None,
    dry_run: bool = False,
) -> ApplyReport:
    """Create or update descriptors, alert policies, the Service and its SLOs in ``project``.

    ``client_factory`` returns the three clients (default: :func:`make_clients` for
    ``endpoint``, i.e. ``ORCH_GCP_MONITORING_ENDPOINT``). Raises ConfigurationError for a
    missing project or bad config files; API errors propagate (google.api_core exceptions).
    """
    if not project:
        raise ConfigurationError("ORCH_GCP_PROJECT: required for monitoring apply",
                                 setting="ORCH_GCP_PROJECT")
    config = load_config(config_dir)
    clients = (client_factory or (lambda: make_clients(endpoint)))()
    report = ApplyReport()
    parent = f"projects/{project}"
    _apply_descriptors(clients, parent, project, catalogue or CATALOGUE, report, dry_run)
    _apply_policies(clients, parent, config, list(notification_channels), report, dry_run)
    _apply_slos(clients, parent, config, report, dry_run)
    _apply_dashboards(clients, parent, config, report, dry_run)
    log.info("monitoring apply for %s: %s", project, report.summary())
    return report


def _apply_descriptors(c: MonitoringClients, parent: str, project: str,
                       catalogue: dict[str, MetricDef], report: ApplyReport,
                       dry_run: bool) -> None:
    existing = {d.type: _dict(d) for d in c.metrics.list_metric_descriptors(request={
        "name": parent, "filter": f'metric.type = starts_with("{METRIC_PREFIX}")'})}
    for metric in catalogue.values():
        want = descriptor_pb(project, metric)
        label = f"descriptor {metric.metric_type}"
        have = existing.get(metric.metric_type)
        want_d = _dict(want)
        want_d.pop("name", None)
        if have is not None and is_subset(want_d, have):
            report.unchanged.append(label)
            continue
        (report.created if have is None else report.updated).append(label)
        if not dry_run:
            c.metrics.create_metric_descriptor(request={"name": parent,
                                                        "metric_descriptor": want})


def _apply_policies(c: MonitoringClients, parent: str, config: MonitoringConfig,
                    channels: list[str], report: ApplyReport, dry_run: bool) -> None:
    existing: dict[str, Any] = {}
    for p in c.alerts.list_alert_policies(request={"name": parent}):
        existing.setdefault(p.display_name, p)
    for policy in config.policies:
        want = AlertPolicyPb()
        want.CopyFrom(policy)
        if channels:
            want.notification_channels[:] = channels
        label = f"alert policy {want.display_name!r}"
        have = existing.get(want.display_name)
        if have is not None and is_subset(_dict(want), _dict(have)):
            report.unchanged.append(label)
            continue
        if have is None:
            report.created.append(label)
            if not dry_run:
                c.alerts.create_alert_policy(request=mv3.CreateAlertPolicyRequest(
                    name=parent, alert_policy=mv3.AlertPolicy.wrap(want)))
        else:
            report.updated.append(label)
            want.name = have.name
            if not dry_run:
                c.alerts.update_alert_policy(request=mv3.UpdateAlertPolicyRequest(
                    alert_policy=mv3.AlertPolicy.wrap(want)))


def _apply_slos(c: MonitoringClients, parent: str, config: MonitoringConfig,
                report: ApplyReport, dry_run: bool) -> None:
    svc_name = f"{parent}/services/{config.service_id}"
    label = f"service {config.service_id}"
    try:
        have_svc: Any = c.services.get_service(request={"name": svc_name})
    except gexc.NotFound:
        have_svc = None
    want_svc = _copy(config.service, svc_name)
    if have_svc is None:
        report.created.append(label)
        if not dry_run:
            c.services.create_service(request=mv3.CreateServiceRequest(
                parent=parent, service_id=config.service_id,
                service=mv3.Service.wrap(_copy(config.service, ""))))
    elif is_subset(_dict(want_svc), _dict(have_svc)):
        report.unchanged.append(label)
    else:
        report.updated.append(label)
        if not dry_run:
            c.services.update_service(request=mv3.UpdateServiceRequest(
                service=mv3.Service.wrap(want_svc)))

    existing: dict[str, Any] = {}
    if have_svc is not None:
        for slo in c.services.list_service_level_objectives(request={"parent": svc_name}):
            existing[slo.name.rsplit("/", 1)[-1]] = slo
    for slo_id, slo in config.slos:
        label = f"slo {slo_id}"
        name = f"{svc_name}/serviceLevelObjectives/{slo_id}"
        have = existing.get(slo_id)
        want = _copy(slo, name)
        if have is not None and is_subset(_dict(want), _dict(have)):
            report.unchanged.append(label)
        elif have is None:
            report.created.append(label)
            if not dry_run:
                c.services.create_service_level_objective(
                    request=mv3.CreateServiceLevelObjectiveRequest(
                        parent=svc_name, service_level_objective_id=slo_id,
                        service_level_objective=mv3.ServiceLevelObjective.wrap(_copy(slo, ""))))
        else:
            report.updated.append(label)
            if not dry_run:
                c.services.update_service_level_objective(
                    request=mv3.UpdateServiceLevelObjectiveRequest(
                        service_level_objective=mv3.ServiceLevelObjective.wrap(want)))


def _apply_dashboards(c: MonitoringClients, parent: str, config: MonitoringConfig,
                      report: ApplyReport, dry_run: bool) -> None:
    """Matched by displayName, as the policies are; an update carries the etag it read, so a
    dashboard edited meanwhile (in the console) is refused rather than silently lost."""
    existing: dict[str, Any] = {}
    for d in c.dashboards.list_dashboards(request={"parent": parent}):
        existing.setdefault(d.display_name, d)
    for dashboard in config.dashboards:
        want = _copy(dashboard, "")
        label = f"dashboard {want.display_name!r}"
        have = existing.get(want.display_name)
        if have is not None and is_subset(_dict(want), _dict(have)):
            report.unchanged.append(label)
        elif have is None:
            report.created.append(label)
            if not dry_run:
                c.dashboards.create_dashboard(request=md1.CreateDashboardRequest(
                    parent=parent, dashboard=md1.Dashboard.wrap(want)))
        else:
            report.updated.append(label)
            want.name, want.etag = have.name, have.etag
            if not dry_run:
                c.dashboards.update_dashboard(request=md1.UpdateDashboardRequest(
                    dashboard=md1.Dashboard.wrap(want)))


def _copy(msg: Any, name: str) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    if name:
        out.name = name
    return out
