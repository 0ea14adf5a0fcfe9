from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.errors import ConfigurationError
from orchestrator.settings import load_settings, split_address


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ORCH_DATABASE_URL", "ORCH_REDIS_URL", "ORCH_SIMULATOR_URL"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.database_url is None and s.redis_url is None
    assert s.simulator_url == "http://127.0.0.1:8100"
    assert str(s.backends_file) == "config/backends.yaml"


def test_postgres_urls_are_normalised_to_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql://u@h/db")
    assert load_settings().database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ORCH_DATABASE_URL", "mysql://root:hunter2@h/db",
         "ORCH_DATABASE_URL: must be a postgresql"),
        ("ORCH_REDIS_URL", "http://x", "ORCH_REDIS_URL: must be a redis:// URL"),
        ("ORCH_HOLD_TTL_S", "-3", "ORCH_HOLD_TTL_S:"),
        ("ORCH_LOG_LEVEL", "LOUD", "ORCH_LOG_LEVEL:"),
        ("ORCH_METRICS_ADDR", "9100", "ORCH_METRICS_ADDR: must be host:port"),
        ("ORCH_METRICS_ADDR", "0.0.0.0:http", "ORCH_METRICS_ADDR: must be host:port"),
        ("ORCH_METRICS_ADDR", "not_an_addr:9100", "ORCH_METRICS_ADDR: must be host:port"),
        # the worker logged a WARNING at its bind and ran without /metrics
        ("ORCH_WORKER_METRICS_ADDR", "not_an_addr", "ORCH_WORKER_METRICS_ADDR: must be an IP "
         "address or a host name (the port is ORCH_WORKER_METRICS_PORT), got 'not_an_addr'"),
        ("ORCH_WORKER_METRICS_ADDR", "127.0.0.1:9100", "ORCH_WORKER_METRICS_ADDR: must be an IP"),
        ("ORCH_WORKER_METRICS_ADDR", "", "ORCH_WORKER_METRICS_ADDR: must be an IP"),
        ("ORCH_REDIS_URL", "memcached://:hunter2@127.0.0.1:1/0",
         "ORCH_REDIS_URL: must be a redis:// URL"),
        # a mistyped "://": where the password is cannot be told, so nothing past the scheme
        ("ORCH_DATABASE_URL", "postgresql+psycopg//app:hunter2@db:5432/orch",
         "ORCH_DATABASE_URL: must be a postgresql"),
        ("ORCH_REDIS_URL", "redis//:hunter2@cache:6379/0", "ORCH_REDIS_URL: must be a redis"),
        ("ORCH_REDIS_URL", "hunter2hunter2hunter2hunter2hunter2", "ORCH_REDIS_URL: must be"),
        # a port or database the drivers cannot read failed later, naming no setting (and
        # the workers' broker refused a database name that the API read as 0)
        ("ORCH_DATABASE_URL", "postgresql://app:hunter2@db:notaport/orch",
         "ORCH_DATABASE_URL: its port is not a number from 1 to 65535, in "
         "'postgresql+psycopg://app:***@db:notaport/orch'"),
        ("ORCH_DATABASE_URL", "postgresql://app:hunter2@db:/orch", "ORCH_DATABASE_URL: its port"),
        ("ORCH_REDIS_URL", "redis://:hunter2@cache:6379x/0", "ORCH_REDIS_URL: its port"),
        ("ORCH_REDIS_URL", "redis://:hunter2@cache:99999/0", "ORCH_REDIS_URL: its port"),
        ("ORCH_REDIS_URL", "redis://:hunter2@cache:6379/jobs",
         "ORCH_REDIS_URL: its database (the path) is not a number"),
        # "." (a directory) was read as the catalogue, the error naming no setting
        ("ORCH_BACKENDS_FILE", "", "ORCH_BACKENDS_FILE: is empty: a path to the backend "
         "catalogue (unset: config/backends.yaml)"),
        ("ORCH_BACKENDS_FILE", "  ", "ORCH_BACKENDS_FILE: is empty"),
        ("ORCH_CACHE_DEFAULT_TENANTS", "acme, no spaces", "ORCH_CACHE_DEFAULT_TENANTS: "),
        ("ORCH_CACHE_TTL_S", "0", "ORCH_CACHE_TTL_S:"),
        ("ORCH_CALIBRATION_WINDOW", "0", "ORCH_CALIBRATION_WINDOW:"),
        # a window smaller than the samples a factor needs would never calibrate, silently
        ("ORCH_CALIBRATION_WINDOW", "3", "ORCH_CALIBRATION_MIN_SAMPLES: must be at most "
         "ORCH_CALIBRATION_WINDOW (3)"),
        ("ORCH_BREAKER_COOLDOWN_S", "900", "ORCH_BREAKER_COOLDOWN_CAP_S: must be at least "
         "ORCH_BREAKER_COOLDOWN_S (900)"),
        ("ORCH_API_FORWARDED_ALLOW_IPS", "garbage!!",
         "ORCH_API_FORWARDED_ALLOW_IPS: 'garbage!!': not an IP address or network"),
        ("ORCH_API_FORWARDED_ALLOW_IPS", "10.0.0.1, 10.0.0.0/33", "ORCH_API_FORWARDED_ALLOW_IPS: "
         "'10.0.0.0/33': not an IP address or network"),
        ("ORCH_API_FORWARDED_ALLOW_IPS", "10.0.0.1/8", "ORCH_API_FORWARDED_ALLOW_IPS: "
         "'10.0.0.1/8': not an IP address or network (10.0.0.1/8 has host bits set)"),
        ("ORCH_API_FORWARDED_ALLOW_IPS", "10.0.0.1,*", "ORCH_API_FORWARDED_ALLOW_IPS: '*':"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)
    assert "hunter2" not in str(err.value)  # no password in the message


@pytest.mark.parametrize(("name", "value"), [
    ("ORCH_DATABASE_URL", "postgresql+psycopg://app:p@db:5432/orch"),
    ("ORCH_DATABASE_URL", "postgresql+psycopg://app@/orch?host=/run/postgresql"),
    ("ORCH_DATABASE_URL", "postgresql+psycopg://app:p@[::1]:5432/orch"),
    ("ORCH_REDIS_URL", "redis://:p@cache:6379/3"),
    ("ORCH_REDIS_URL", "rediss://cache"),
    ("ORCH_REDIS_URL", "redis://cache:6379/"),
    ("ORCH_REDIS_URL", "unix:///run/redis.sock?db=2"),
])
def test_server_urls_the_drivers_read_are_taken(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(load_settings(), name.removeprefix("ORCH_").lower()) == value


def test_cache_default_tenants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_CACHE_DEFAULT_TENANTS", " acme , demo.1,")
    assert load_settings().cache_tenants() == frozenset({"acme", "demo.1"})
    monkeypatch.setenv("ORCH_CACHE_DEFAULT_TENANTS", "*")
    assert load_settings().cache_tenants() == frozenset({"*"})


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:9100", ("::1", 9100)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
])
def test_the_metrics_address_is_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert split_address(value) == expected


@pytest.mark.parametrize("value", ["0.0.0.0", "::1", "localhost", "metrics-1.internal."])
def test_the_worker_metrics_address_is_an_ip_or_a_host_name(
    monkeypatch: pytest.MonkeyPatch, value: str,
) -> None:
    monkeypatch.setenv("ORCH_WORKER_METRICS_ADDR", value)
    assert load_settings().worker_metrics_addr == value


@pytest.mark.parametrize("value", ["", "*", " 10.0.0.1 ", "10.0.0.0/8, ::1,fd00::/8,"])
def test_forwarded_allow_ips_takes_addresses_networks_or_a_star(
    monkeypatch: pytest.MonkeyPatch, value: str,
) -> None:
    monkeypatch.setenv("ORCH_API_FORWARDED_ALLOW_IPS", value)
    assert load_settings().api_forwarded_allow_ips == value.strip()


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e7", "36501"])
def test_a_result_retention_past_what_dates_can_hold_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # "inf" (meant as "for ever": that is 0) or a few thousand years would overflow the
    # result's expires_at and the sweeper's cutoff: a 500 on every result, a sweeper that
    # never runs
    monkeypatch.setenv("ORCH_RESULT_RETENTION_DAYS", value)
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert str(err.value).startswith("ORCH_RESULT_RETENTION_DAYS:")


def test_the_longest_result_retention_is_a_date_the_api_and_the_sweeper_can_compute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_RESULT_RETENTION_DAYS", "36500")
    keep = timedelta(days=load_settings().result_retention_days)
    now = datetime.now(UTC)
    assert now - keep < now < now + keep  # neither overflows


@pytest.mark.parametrize("name", ["ORCH_HOLD_TTL_S", "ORCH_CHAIN_GRACE_S", "ORCH_POLL_MAX_S",
                                  "ORCH_WEBHOOK_RETRY_WINDOW_S", "ORCH_API_KEY_CACHE_S",
                                  "ORCH_GCP_FLUSH_INTERVAL_S", "ORCH_SMTP_TIMEOUT_S"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e12", "99999999999999"])
def test_a_duration_no_date_can_hold_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # they passed the start and overflowed the first date made with them: every submission
    # (the hold's expiry), sweep or webhook retry a traceback
    from orchestrator.notify.settings import load_smtp_settings

    monkeypatch.setenv(name, value)
    load = load_smtp_settings if name.startswith("ORCH_SMTP_") else load_settings
    with pytest.raises(ConfigurationError) as err:
        load()
    assert str(err.value).startswith(f"{name}: ")


def test_the_longest_duration_is_one_a_date_can_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.settings import MAX_SECONDS

    monkeypatch.setenv("ORCH_HOLD_TTL_S", str(MAX_SECONDS))
    monkeypatch.setenv("ORCH_WEBHOOK_RETRY_WINDOW_S", str(MAX_SECONDS))
    s = load_settings()
    now = datetime.now(UTC)
    assert now + timedelta(seconds=s.hold_ttl_s) > now
    assert now + timedelta(seconds=s.webhook_retry_window_s) > now
