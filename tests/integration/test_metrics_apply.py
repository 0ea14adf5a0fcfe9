"""`orchestrator monitoring apply`: descriptors, alert policies and SLOs, idempotent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import ConfigurationError
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.apply import (
    CONFIG_DIR,
    DASHBOARD_FILE,
    apply_monitoring,
    is_subset,
)
from orchestrator.metrics.clients import make_clients
from orchestrator.metrics.fake_gcm import FakeMonitoringServer

from .e2e_support import ROOT

SHIPPED = ROOT / CONFIG_DIR

WRITES = {"CreateMetricDescriptor", "CreateAlertPolicy", "UpdateAlertPolicy", "CreateService",
          "UpdateService", "CreateServiceLevelObjective", "UpdateServiceLevelObjective",
          "CreateDashboard", "UpdateDashboard"}


@pytest.fixture
def fake() -> Iterator[FakeMonitoringServer]:
    with FakeMonitoringServer() as server:
        yield server


def writes(fake: FakeMonitoringServer) -> list[str]:
    return [r.method for r in fake.requests if r.method in WRITES]


def test_apply_creates_everything_then_changes_nothing(fake: FakeMonitoringServer) -> None:
    first = apply_monitoring("proj-1", lambda: make_clients(fake.endpoint))
    assert first.updated == [] and first.unchanged == []
    assert len(first.created) == len(m.CATALOGUE) + 6 + 1 + 2 + 1

    assert set(fake.descriptors) == {d.metric_type for d in m.CATALOGUE.values()}
    lat = fake.descriptors[m.METRIC_PREFIX + "jobs/latency"]
    assert (lat.metric_kind, lat.value_type, lat.unit) == (3, 5, "s")
    assert [lab.key for lab in lat.labels] == ["kind", "tier", "backend", "status"]

    names = sorted(p.display_name for p in fake.policies.values())
    assert names == sorted([
        "orchestrator: budget burn over 80% of limit", "orchestrator: budget forecast overrun",
        "orchestrator: backend breaker open", "orchestrator: job failure rate over 5%",
        "orchestrator: oldest queued job over target",
        "orchestrator: notifications failing for good"])
    burn = next(p for p in fake.policies.values() if "80%" in p.display_name)
    cond = burn.conditions[0].condition_threshold
    assert "budget/utilization" in cond.filter and cond.threshold_value == 0.8
    rate = next(p for p in fake.policies.values() if "5%" in p.display_name)
    assert rate.conditions[0].condition_threshold.threshold_value == 0.05
    assert "jobs/finished" in rate.conditions[0].condition_threshold.denominator_filter

    assert list(fake.services) == ["projects/proj-1/services/orchestrator"]
    assert fake.services["projects/proj-1/services/orchestrator"].HasField("custom")
    slos = {n.rsplit("/", 1)[-1]: s for n, s in fake.slos.items()}
    assert set(slos) == {"job-success-ratio", "submit-to-start-latency"}
    ratio = slos["job-success-ratio"].service_level_indicator.request_based.good_total_ratio
    assert 'status="succeeded"' in ratio.good_service_filter
    cut = slos["submit-to-start-latency"].service_level_indicator.request_based.distribution_cut
    assert "jobs/queue_latency" in cut.distribution_filter and cut.range_.max_ == 60

    n_writes = len(writes(fake))
    second = apply_monitoring("proj-1", lambda: make_clients(fake.endpoint))
    assert not second.changed
    assert len(second.unchanged) == len(first.created)
    assert len(writes(fake)) == n_writes  # the second run wrote nothing


def test_a_changed_definition_updates_only_that_object(fake: FakeMonitoringServer,
                                                      tmp_path: Path) -> None:
    apply_monitoring("proj-1", lambda: make_clients(fake.endpoint))
    cfg = tmp_path / "monitoring"
    shutil.copytree(SHIPPED, cfg)
    policies = yaml.safe_load((cfg / "alert_policies.yaml").read_text())
    policies[0]["conditions"][0]["conditionThreshold"]["thresholdValue"] = 0.9
    (cfg / "alert_policies.yaml").write_text(yaml.safe_dump(policies))
    slos = yaml.safe_load((cfg / "slos.yaml").read_text())
    slos["slos"][0]["goal"] = 0.995
    (cfg / "slos.yaml").write_text(yaml.safe_dump(slos))
    fake.clear_requests()

    report = apply_monitoring("proj-1", lambda: make_clients(fake.endpoint), config_dir=cfg)
    assert report.created == []
    assert report.updated == [f"alert policy {policies[0]['displayName']!r}",
                              "slo job-success-ratio"]
    assert writes(fake) == ["UpdateAlertPolicy", "UpdateServiceLevelObjective"]
    burn = next(p for p in fake.policies.values() if p.display_name == policies[0]["displayName"])
    assert burn.conditions[0].condition_threshold.threshold_value == 0.9
    assert len(fake.policies) == 6
    assert not apply_monitoring("proj-1", lambda: make_clients(fake.endpoint),
                                config_dir=cfg).changed


def test_the_dashboard_is_created_once_and_unchanged_after(fake: FakeMonitoringServer,
                                                           tmp_path: Path) -> None:
    first = apply_monitoring("proj-1", endpoint=fake.endpoint)
    assert "dashboard 'orchestrator'" in first.created
    (name,) = fake.dashboards
    assert name.startswith("projects/proj-1/dashboards/")
    made = fake.dashboards[name]
    shipped = json.loads((SHIPPED / DASHBOARD_FILE).read_text())
    assert len(made.mosaic_layout.tiles) == len(shipped["mosaicLayout"]["tiles"]) >= 6
    titles = {tile.widget.title for tile in made.mosaic_layout.tiles}
    assert {"Committed spend by budget (USD)", "Breaker state (0 closed, 1 half open, 2 open)",
            "Jobs finished by status (per second)"} <= titles
    # every tile charts a metric of the catalogue (the names the exporter writes)
    filters = [ds.time_series_query.time_series_filter.filter
               for tile in made.mosaic_layout.tiles for ds in tile.widget.xy_chart.data_sets]
    types = {d.metric_type for d in m.CATALOGUE.values()}
    assert all(f.split('metric.type="', 1)[1].split('"', 1)[0] in types for f in filters)

    second = apply_monitoring("proj-1", endpoint=fake.endpoint)
    assert "dashboard 'orchestrator'" in second.unchanged and not second.changed
    assert [r.method for r in fake.requests].count("CreateDashboard") == 1
    assert fake.calls("UpdateDashboard") == []
    assert list(fake.dashboards) == [name] and fake.dashboards[name] == made  # etag too

    # a changed tile: updated in place with the etag read, nothing created
    cfg = tmp_path / "monitoring"
    shutil.copytree(SHIPPED, cfg)
    shipped["mosaicLayout"]["tiles"][0]["widget"]["title"] = "Spend (USD)"
    (cfg / DASHBOARD_FILE).write_text(json.dumps(shipped))
    third = apply_monitoring("proj-1", endpoint=fake.endpoint, config_dir=cfg)
    assert third.updated == ["dashboard 'orchestrator'"] and third.created == []
    (update,) = fake.calls("UpdateDashboard")
    assert update.dashboard.etag == made.etag and update.dashboard.name == name
    assert list(fake.dashboards) == [name]
    assert fake.dashboards[name].mosaic_layout.tiles[0].widget.title == "Spend (USD)"


def test_notification_channels_are_attached(fake: FakeMonitoringServer) -> None:
    chan = "projects/proj-1/notificationChannels/42"
    apply_monitoring("proj-1", endpoint=fake.endpoint, notification_channels=[chan])
    assert all(list(p.notification_channels) == [chan] for p in fake.policies.values())
    assert not apply_monitoring("proj-1", endpoint=fake.endpoint,
                                notification_channels=[chan]).changed


def test_dry_run_writes_nothing(fake: FakeMonitoringServer) -> None:
    report = apply_monitoring("proj-1", endpoint=fake.endpoint, dry_run=True)
    assert report.created and writes(fake) == []


def test_missing_project_or_bad_config_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ORCH_GCP_PROJECT"):
        apply_monitoring(None)
    (tmp_path / "alert_policies.yaml").write_text("- displayName: x\n  noSuchField: 1\n")
    (tmp_path / "slos.yaml").write_text("service: {id: s}\nslos: []\n")
    with pytest.raises(ConfigurationError, match="monitoring config"):
        apply_monitoring("p", config_dir=tmp_path)


@pytest.mark.parametrize(("want", "have", "expected"), [
    ({"a": 1}, {"a": 1, "b": 2}, True),
    ({"a": 1}, {"a": 2}, False),
    ({"a": [{"x": 1}]}, {"a": [{"x": 1, "name": "n"}]}, True),
    ({"a": [{"x": 1}]}, {"a": [{"x": 1}, {"x": 2}]}, False),
    ({"a": {}}, {}, False),
])
def test_is_subset(want: object, have: object, expected: bool) -> None:
    assert is_subset(want, have) is expected


def test_the_command_twice_creates_the_dashboard_once(fake: FakeMonitoringServer) -> None:
    env = {**os.environ, "ORCH_GCP_PROJECT": "proj-cli",
           "ORCH_GCP_MONITORING_ENDPOINT": fake.endpoint}
    runs = [subprocess.run([sys.executable, "-m", "orchestrator.cli", "monitoring", "apply"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    total = len(m.CATALOGUE) + 6 + 1 + 2 + 1
    assert runs[0].stdout.strip() == f"{total} created, 0 updated, 0 unchanged"
    assert runs[1].stdout.strip() == f"0 created, 0 updated, {total} unchanged"
    assert [r.method for r in fake.requests].count("CreateDashboard") == 1
    assert fake.calls("UpdateDashboard") == []
    (dashboard,) = fake.dashboards.values()
    assert dashboard.name.startswith("projects/proj-cli/dashboards/")
    assert dashboard.display_name == "orchestrator"


def _policies_named(config_dir: Path, name: str) -> None:
    shutil.copytree(SHIPPED, config_dir)
    policies = yaml.safe_load((config_dir / "alert_policies.yaml").read_text())
    policies[0]["displayName"] = name
    (config_dir / "alert_policies.yaml").write_text(yaml.safe_dump(policies))


def test_the_command_reads_config_monitoring_where_it_runs_or_where_told(
        fake: FakeMonitoringServer, tmp_path: Path) -> None:
    """An installed copy (the Docker image's /app) has no source checkout beside the
    package: the command reads ./config/monitoring, or --config-dir."""
    _policies_named(tmp_path / "config" / "monitoring", "from the working directory")
    _policies_named(tmp_path / "elsewhere", "from --config-dir")
    env = {**os.environ, "ORCH_GCP_PROJECT": "proj-cwd", "PYTHONPATH": str(ROOT),
           "ORCH_GCP_MONITORING_ENDPOINT": fake.endpoint}
    for extra in ([], ["--config-dir", str(tmp_path / "elsewhere")]):
        run = subprocess.run([sys.executable, "-m", "orchestrator.cli", "monitoring", "apply",
                              *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
    names = {p.display_name for p in fake.policies.values()}
    assert {"from the working directory", "from --config-dir"} <= names
