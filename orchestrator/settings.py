"""Configuration from the environment (prefix ``ORCH_``), on pydantic-settings.

A bad value fails at start with one line naming the setting, e.g.::

    ORCH_DATABASE_URL: must be a postgresql+psycopg:// URL, got 'mysql://…'
"""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.egress.policy import parse_allow
from orchestrator.errors import ConfigurationError, bad_port, shown_scheme

ENV_PREFIX = "ORCH_"
_TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_SECONDS = 100 * 365 * 86_400  # 100 years: a date plus it is still a date


def within_a_century(v: object, info: ValidationInfo) -> object:
    """A setting in seconds (``*_s``) no longer than 100 years: a longer one ("1e12", meant
    as "for ever") passed the start and overflowed the first date made with it, failing every
    submission, sweep or webhook retry with a traceback."""
    if (info.field_name or "").endswith("_s") and isinstance(v, int | float) \
            and v > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS} (100 years)")
    return v


class Settings(BaseSettings):
    # no inf or nan: a duration of "inf" overflows the first date made with it
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      allow_inf_nan=False)

    _seconds = field_validator("*")(within_a_century)

    database_url: str | None = Field(
        default=None, description="postgresql+psycopg://… ; unset = embedded PostgreSQL"
    )
    redis_url: str | None = Field(default=None, description="redis://… ; unset = embedded Redis")
    data_dir: Path = Path(".orchestrator")
    backends_file: Path = Path("config/backends.yaml")
    simulator_url: str = "http://127.0.0.1:8100"
    gcp_project: str | None = None
    gcp_monitoring_endpoint: str | None = None
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    hold_ttl_s: int = Field(
        default=6 * 3600, gt=0, description="a hold not settled by then expires"
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=200,
        description="PostgreSQL connections per process, and as many again for overflow; the "
                    "job steps' autocommit pool may open up to twice this number more",
    )
    db_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=300,
        description="a new PostgreSQL connection not made by then fails (the request is "
        "answered 503, the job step retried); the pools also give up reconnecting after it "
        "and try again at the next request",
    )
    db_pool_timeout_s: float = Field(
        default=5.0, gt=0, le=300,
        description="longest wait for a pooled PostgreSQL connection; past it, 503 "
        "unavailable (a job step is retried)",
    )
    redis_timeout_s: float = Field(
        default=5.0, gt=0, le=300,
        description="connect and reply timeout of the API's and the job steps' Redis calls",
    )
    poll_min_s: float = Field(default=1.0, gt=0, description="shortest gap between polls")
    poll_max_s: float = Field(default=10.0, gt=0, description="longest gap between polls")
    chain_grace_s: float = Field(
        default=60.0, gt=0, description="a job chain silent this long past its step is revived"
    )
    start_grace_s: float = Field(
        default=60.0, gt=0, le=3600,
        description="a queued job whose start message has not run by then is started by "
        "the sweeper",
    )
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    breaker_cooldown_cap_s: float = Field(default=600.0, gt=0)
    worker_concurrency: int = Field(
        default=8, ge=1, le=1000,
        description="worker threads; I/O-bound, but more threads mostly add GIL contention",
    )
    worker_metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Prometheus /metrics port per worker process (prefork: + child index; "
        "0 = any free)",
    )
    worker_metrics_addr: str = Field(
        default="127.0.0.1", description="host (no port) of the workers' /metrics servers")
    up_api_processes: int = Field(
        default=2, ge=1, le=64,
        description="`orchestrator up`: API processes accepting on its one port (each has "
        "its own connection cap, stream cap and pools)",
    )
    up_background_nice: int = Field(
        default=10, ge=0, le=19,
        description="`orchestrator up`: CPU niceness of the worker and beat, so that on a "
        "shared machine the API answers first and the queue absorbs the backlog",
    )
    gcp_flush_interval_s: float | None = Field(
        default=None, gt=0,
        description="exporter wake-up interval; a series is still written at most every 10 s",
    )
    cache_ttl_s: float = Field(
        default=86_400.0, gt=0, le=365 * 86_400,
        description="the result cache: a succeeded job's result serves identical jobs of its "
        "tenant for this long after it finished",
    )
    cache_default_tenants: str = Field(
        default="",
        description="tenants (comma-separated, or *) whose jobs use the result cache unless "
        "they say cache: false; the others' only with cache: true",
    )
    calibration_window: int = Field(
        default=50, ge=1, le=10_000,
        description="calibration: the newest settled jobs per backend whose actual / estimate "
        "ratios are kept (their median is the factor)",
    )
    calibration_min_samples: int = Field(
        default=5, ge=1, le=10_000,
        description="calibration: fewer settled jobs than this on a backend: no factor yet",
    )
    calibration_max_age_s: float = Field(
        default=7 * 86_400.0, ge=60, le=366 * 86_400,
        description="calibration: settled jobs older than this are not samples, so a factor "
        "that made a backend too dear to be chosen again fades (no factor: its estimate)",
    )
    calibration_refresh_s: float = Field(
        default=10.0, ge=0, le=3600,
        description="how long a process uses the factors it read before reading them again "
        "(0: on every quote)",
    )
    api_rate_limit: int = Field(default=6000, ge=1, description="requests per tenant per window")
    api_rate_window_s: int = Field(default=60, ge=1)
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    api_key_cache_s: float = Field(
        default=5.0, ge=0,
        description="a verified key is trusted this long without the database; a revoked key "
        "stops working on every replica within it",
    )
    api_body_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a request body not fully received this long after the API starts "
        "reading it is refused with 408",
    )
    api_header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a connection whose request head (line and headers) is not complete this "
        "long after it opened or its request began is closed",
    )
    api_max_header_bytes: int = Field(
        default=32_768, ge=1024, le=1_048_576,
        description="largest request line plus headers; above it the answer is 431",
    )
    api_auth_fail_limit: int = Field(
        default=30, ge=1,
        description="failed authentications (no, malformed, unknown or revoked key) per client "
        "address per window; past it, 429",
    )
    api_auth_fail_window_s: int = Field(default=60, ge=1, le=86_400)
    api_limit_concurrency: int = Field(
        default=1000, ge=1,
        description="uvicorn: connections plus running requests past which a new request is "
        "answered 503 at once",
    )
    api_timeout_keep_alive_s: int = Field(
        default=65, ge=1, le=3600,
        description="idle keep-alive connections are closed after this; longer than the idle "
        "timeout of clients and load balancers (often 60 s), so that they close first and never "
        "send a request on a connection the API is closing",
    )
    api_backlog: int = Field(default=2048, ge=1, le=65_535)
    api_forwarded_allow_ips: str = Field(
        default="",
        description="proxies whose X-Forwarded-For/-Proto are believed (uvicorn's "
        "forwarded_allow_ips: comma-separated addresses or networks, or *); empty: none, the "
        "client address is the TCP peer's",
    )
    egress_allow: str = Field(
        default="",
        description="hostnames and CIDRs, comma-separated, that user-supplied URLs (alert "
        "webhooks, Slack, job webhooks) may reach although internal; a listed hostname may "
        "also use plain http (orchestrator.egress)",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet keys, comma-separated: the first encrypts channel secrets, all "
        "decrypt; unset = <data_dir>/secret.key (orchestrator.secrets)",
    )
    metrics_addr: str | None = Field(
        default=None, description="host:port: the API serves /metrics there, not on its port"
    )
    api_max_streams: int = Field(
        default=500, ge=1, le=100_000,
        description="open event streams (SSE) per API process; past it 503 with Retry-After",
    )
    events_ping_s: float = Field(
        default=15.0, gt=0, le=50,
        description="an idle event stream gets a comment line this often (keeps proxies "
        "from closing it) and looks at the events table again; at most 50, under the "
        "SDK's 60 s read timeout and common proxies' idle limits",
    )
    webhook_retry_window_s: float = Field(
        default=86_400.0, gt=0,
        description="a webhook delivery is retried for this long after its event, then failed",
    )
    webhook_backoff_s: float = Field(
        default=5.0, gt=0, description="the first retry's delay; doubles per attempt (jitter)"
    )
    webhook_backoff_cap_s: float = Field(
        default=600.0, gt=0, description="the longest delay between two tries of a delivery"
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="one webhook POST's whole time limit"
    )
    webhook_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="how often beat sends due webhook deliveries"
    )
    # at most 100 years: the result's expires_at and the sweeper's cutoff are dates, which
    # a few thousand years (or "inf") would overflow; 0 is "for ever"
    result_retention_days: float = Field(
        default=30.0, ge=0, le=36_500,
        description="a finished job's result (the provider's output) is dropped this long "
        "after the job ended, and an event this long after it happened (once no webhook of it "
        "is pending); 0 keeps them; the ledger is kept forever",
    )
    console_enabled: bool = Field(
        default=True, description="serve the web console at /console (static files that call "
        "the public /v1 API); false: /console is 404")
    flower_user: str = Field(default="flower", min_length=1)
    flower_password: SecretStr | None = Field(
        default=None, description="Flower's basic auth; unset = generated into the data dir"
    )

    def cache_tenants(self) -> frozenset[str]:
        """``cache_default_tenants`` as a set (``*``: every tenant)."""
        return frozenset(t.strip() for t in self.cache_default_tenants.split(",") if t.strip())

    def backends_path(self) -> Path:
        """``backends_file``; a relative path missing from the working directory falls back to
        the project's own copy (so commands work from any directory in a source checkout)."""
        path = self.backends_file
        if not path.is_absolute() and not path.exists():
            shipped = Path(__file__).resolve().parents[1] / path
            if shipped.exists():
                return shipped
        return path

    @field_validator("breaker_cooldown_cap_s")
    @classmethod
    def _breaker_cap(cls, v: float, info: ValidationInfo) -> float:
        # else the breakers' policy refuses it at the first job step or submission, far
        # from the setting (every one of them failing alike)
        first = info.data.get("breaker_cooldown_s")
        if first is not None and v < first:
            raise ValueError(f"must be at least ORCH_BREAKER_COOLDOWN_S ({first:g})")
        return v

    @field_validator("calibration_min_samples")
    @classmethod
    def _calibration_samples(cls, v: int, info: ValidationInfo) -> int:
        # a window that cannot hold that many samples never gives a backend a factor
        window = info.data.get("calibration_window")
        if window is not None and v > window:
            raise ValueError(f"must be at most ORCH_CALIBRATION_WINDOW ({window})")
        return v

    @field_validator("backends_file", mode="before")
    @classmethod
    def _backends_file(cls, v: object) -> object:
        # else Path("") is ".", refused at the catalogue's read as a directory, naming no setting
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: a path to the backend catalogue (unset: "
                             "config/backends.yaml)")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql+psycopg://", "postgresql://", "postgres://")):
            raise ValueError(f"must be a postgresql+psycopg:// URL, got {_redact(v)!r}")
        v = normalize_database_url(v)
        from sqlalchemy.engine import make_url  # here: client commands never need it

        # else the first connection fails with Python's int() message, naming no setting
        try:
            port = make_url(v).port
        except ValueError:
            port = 0
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"its port is not a number from 1 to 65535, in {_redact(v)!r}")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must be a redis:// URL, got {_redact(v)!r}")
        if v.startswith("unix://"):
            return v
        # redis-py reads a database that is not a number as 0, the workers' broker refuses
        # it at its start; a bad port fails the first call naming no setting
        url = urlsplit(v)
        if bad_port(url):
            raise ValueError(f"its port is not a number from 1 to 65535, in {_redact(v)!r}")
        database = url.path.strip("/")
        if database and not database.isdigit():
            raise ValueError(f"its database (the path) is not a number, in {_redact(v)!r}")
        return v

    @field_validator("cache_default_tenants")
    @classmethod
    def _cache_tenants(cls, v: str) -> str:
        for name in (t.strip() for t in v.split(",")):
            if name and name != "*" and not _TENANT_RE.match(name):
                raise ValueError(f"not a tenant name (1-64 of A-Z a-z 0-9 _ . -): {name!r}")
        return v

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow(cls, v: str) -> str:
        parse_allow(v)  # ValueError names the bad entry
        return v

    @field_validator("api_forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips(cls, v: str) -> str:
        """Addresses and networks as uvicorn parses them, or ``*`` alone. uvicorn keeps any
        other entry as a literal no TCP peer ever matches: a typo would silently believe no
        proxy (and put every client behind it on the proxy's address)."""
        v = v.strip()
        if v in ("", "*"):
            return v
        for entry in filter(None, (e.strip() for e in v.split(","))):
            try:
                if entry == "*":
                    raise ValueError("* trusts every peer and stands alone")
                if "/" in entry:
                    ipaddress.ip_network(entry)  # strict, as uvicorn: no host bits set
                else:
                    ipaddress.ip_address(entry)
            except ValueError as exc:
                raise ValueError(f"{entry!r}: not an IP address or network ({exc}); "
                                 "comma-separated addresses and networks, or *") from None
        return v

    @field_validator("metrics_addr")
    @classmethod
    def _metrics_addr(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        split_address(v)
        return v

    @field_validator("worker_metrics_addr")
    @classmethod
    def _worker_metrics_addr(cls, v: str) -> str:
        # else the worker only logged a WARNING at its bind and ran without /metrics
        if not is_host(v):
            raise ValueError(f"must be an IP address or a host name (the port is "
                             f"ORCH_WORKER_METRICS_PORT), got {v!r}")
        return v

    @field_validator("simulator_url", "api_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s):// URL, got {_redact(v)!r}")
        return v.rstrip("/")


_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def is_host(host: str) -> bool:
    """An IP address or a well-formed host name (RFC 1123 labels). A name is not looked up:
    settings are read by client commands too, and no lookup happens at their load."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL_RE.match(p) for p in name.split("."))


def split_address(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port); ValueError if it is not one."""
    host, sep, port = addr.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not is_host(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {addr!r}")
    return host, int(port)


def normalize_database_url(url: str) -> str:
    """Always talk psycopg 3, whatever scheme spelling the user gave."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches an error message. A value that is not a
    URL (a mistyped ``://``) is shown only up to where a scheme would end: where its
    password is cannot be told."""
    if "://" not in url:
        return shown_scheme(url)
    if "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def load_settings() -> Settings:
    """Read settings; turn a validation failure into one clear line naming the setting."""
    try:
        return Settings()
    except ValidationError as exc:
        raise setting_error(exc) from None


def setting_error(exc: ValidationError) -> ConfigurationError:
    """One line naming the first bad ``ORCH_*`` variable of a settings model (never its
    value: pydantic's message would quote it)."""
    first = exc.errors()[0]
    name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "ORCH_*"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return ConfigurationError(f"{name}: {msg}", setting=name)


def _resolve(settings: Settings, key: str) -> str:
    """A configured URL, else the one ``orchestrator up`` wrote to its credentials file."""
    value: str | None = getattr(settings, key)
    if value:
        return value
    creds = settings.data_dir / "credentials.json"
    if creds.exists():
        try:
            return str(json.loads(creds.read_text())[key])
        except (ValueError, KeyError, TypeError, OSError):
            raise ConfigurationError(
                f"{creds} holds no {key}: set ORCH_{key.upper()}, or run `orchestrator up` "
                "again to rewrite it", setting=f"ORCH_{key.upper()}") from None
    setting = f"ORCH_{key.upper()}"
    raise ConfigurationError(
        f"{setting} is not set and no `orchestrator up` has written {creds}", setting=setting
    )


def resolve_database_url(settings: Settings) -> str:
    return _resolve(settings, "database_url")


def resolve_redis_url(settings: Settings) -> str:
    return _resolve(settings, "redis_url")


def resolve_urls(settings: Settings) -> tuple[str, str]:
    return _resolve(settings, "database_url"), _resolve(settings, "redis_url")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
