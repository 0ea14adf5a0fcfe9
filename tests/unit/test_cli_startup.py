"""`orchestrator api|worker|beat` check the configuration that every request or run needs
before they serve: a bad catalogue or ORCH_SMTP_* setting is one line and a non-zero exit,
not a 500 on every routed request or a traceback every alert run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.errors import ConfigurationError
from orchestrator.notify.settings import load_smtp_settings
from orchestrator.settings import get_settings, resolve_database_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()  # later tests read their own environment


@pytest.mark.parametrize("command", ["api", "worker", "beat"])
def test_a_bad_catalogue_stops_the_process_at_start_in_one_line(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "backends.yaml"
    bad.write_text(yaml.safe_dump({"backends": [{
        "name": "vid-x", "protocol": "predictions", "base_url": "${PROVIDER_URL}",
        "kinds": ["video"], "tier": "draft",
        "price": {"model": "per_second", "usd_per_second": 0.05}}]}))
    monkeypatch.setenv("ORCH_BACKENDS_FILE", str(bad))
    monkeypatch.setenv("PROVIDER_URL", "sk-live-SECRET0123456789abcdefghijkl")  # not a URL
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {bad}: backend 'vid-x': base_url: "), result.output
    assert result.output.count("\n") == 1 and "SECRET" not in result.output


@pytest.mark.parametrize("command", ["api", "worker", "beat"])
def test_an_empty_catalogue_path_stops_the_process_at_start_naming_it(
        command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # it was read as ".": "error: .: cannot read the catalogue (Is a directory)"
    monkeypatch.setenv("ORCH_BACKENDS_FILE", "")
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 1
    assert result.output == "error: ORCH_BACKENDS_FILE: is empty: a path to the backend " \
        "catalogue (unset: config/backends.yaml)\n", result.output


@pytest.mark.parametrize("command", ["api", "worker", "beat"])
def test_a_bad_smtp_setting_stops_the_process_at_start_naming_it(
        command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SMTP_PORT", "70000")
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 1
    assert result.output.startswith("error: ORCH_SMTP_PORT: ")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_bad_secret_key_stops_the_api_and_the_worker_at_start(
        command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the worker started with it, and met it only when a delivery opened a secret
    monkeypatch.setenv("ORCH_SECRET_KEY", "hunter2-not-a-fernet-key")
    monkeypatch.delenv("ORCH_DATABASE_URL", raising=False)  # refused before any server
    result = CliRunner().invoke(app, [command])
    assert result.exit_code == 1
    assert result.output.startswith("error: ORCH_SECRET_KEY: key 1 is not a Fernet key"), \
        result.output
    assert result.output.count("\n") == 1 and "hunter2" not in result.output


def test_a_bad_worker_metrics_address_stops_the_worker_at_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the worker logged a WARNING at its bind and ran without /metrics
    monkeypatch.setenv("ORCH_WORKER_METRICS_ADDR", "not_an_addr")
    monkeypatch.setenv("ORCH_WORKER_METRICS_PORT", "0")
    monkeypatch.delenv("ORCH_DATABASE_URL", raising=False)  # refused before any server
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ORCH_WORKER_METRICS_ADDR: must be an IP address "
                                     "or a host name"), result.output
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(("host", "starttls", "ssl", "refused"), [
    ("mail.example.com", "false", "false", True),
    ("mail.example.com", "true", "false", False),
    ("mail.example.com", "false", "true", False),
    ("127.0.0.1", "false", "false", False),  # a relay on this host: nothing crosses a network
    ("localhost", "false", "false", False),
])
def test_a_login_that_would_cross_the_network_in_clear_is_refused_at_start(
        host: str, starttls: str, ssl: str, refused: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("HOST", host), ("USER", "relay-user"), ("PASSWORD", "pw-0123456789"),
                        ("STARTTLS", starttls), ("SSL", ssl)):
        monkeypatch.setenv(f"ORCH_SMTP_{name}", value)
    if not refused:
        assert load_smtp_settings().smtp_user == "relay-user"
        return
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ORCH_SMTP_SSL: ORCH_SMTP_USER is set while this "
                                     "and ORCH_SMTP_STARTTLS are both false: the login would "
                                     "cross the network in clear text"), result.output
    assert result.output.count("\n") == 1 and "pw-0123456789" not in result.output


def test_a_credentials_file_without_the_url_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps({}))
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ORCH_DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="holds no database_url: set ORCH_DATABASE_URL"):
        resolve_database_url(get_settings())


def test_the_celery_app_flower_loads_needs_the_broker_only(tmp_path: Path) -> None:
    """`celery -A workers.celery_app flower` reads the broker's URL, never the database's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_REDIS_URL="redis://127.0.0.1:1/0", ORCH_DATA_DIR=str(tmp_path),
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import workers.celery_app as c; "
                          "print(c.BROKER_URL)"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(("setting", "said"), [
    ({}, "error: ORCH_REDIS_URL is not set and no `orchestrator up` has written"),
    ({"ORCH_REDIS_URL": "redis://127.0.0.1:1/0", "ORCH_LOG_LEVEL": "LOUD"},
     "error: ORCH_LOG_LEVEL: Input should be"),
])
def test_celery_commands_without_a_usable_configuration_say_why_in_one_line(
        tmp_path: Path, setting: dict[str, str], said: str) -> None:
    """`celery -A workers.celery_app flower` (or worker, beat) on a machine with no
    configuration: one line, not Celery's traceback of the app's import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(tmp_path), PYTHONPATH=str(ROOT), **setting)
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(said) and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize("setting", ["ORCH_API_URL", "ORCH_SIMULATOR_URL"])
@pytest.mark.parametrize("value", ["user:secretpw@127.0.0.1:8000",
                                   "ftp://user:secretpw@127.0.0.1:8000"])
def test_a_password_in_a_bad_http_url_is_never_shown(
        setting: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(setting, value)
    result = CliRunner().invoke(app, ["jobs", "list"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {setting}: must be an http(s):// URL, got ")
    assert "secretpw" not in result.output and result.output.count("\n") == 1


def test_a_password_in_a_bad_api_url_option_is_never_shown() -> None:
    result = CliRunner().invoke(app, ["jobs", "list", "--api-url",
                                      "user:secretpw@127.0.0.1:8000", "--api-key", "k"])
    assert result.exit_code == 1
    assert result.output.startswith("error: invalid API URL: ")
    assert "secretpw" not in result.output and result.output.count("\n") == 1
