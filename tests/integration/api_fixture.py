"""The API over real HTTP: uvicorn on a free 127.0.0.1 port in a thread, on top of the e2e rig
(real PostgreSQL, Redis, the simulator, a Celery producer; workers on demand)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from orchestrator.api import ApiConfig, RunningApi, start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.cli import client as cli_client
from orchestrator.cli import report as cli_report
from orchestrator.ledger.budgets import set_budget
from orchestrator.store.keys import create_key

from .e2e_support import Rig

ADMIN_TENANT = "ops"
TENANTS = ("acme", "globex")


@dataclass
class Api:
    rig: Rig
    running: RunningApi
    admin_key: str
    keys: dict[str, str]
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.running.url

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=15.0)
        self._clients.append(c)
        return c

    def tenant(self, name: str = "acme") -> httpx.Client:
        return self.client(self.keys[name])

    def admin(self) -> httpx.Client:
        return self.client(self.admin_key)

    def new_key(self, tenant: str, admin: bool = False) -> str:
        with self.rig.engine.begin() as conn:
            return create_key(conn, tenant, admin)

    def budget(self, scope: str, limit_micros: int, period: str = "month") -> None:
        with self.rig.engine.begin() as conn:
            set_budget(conn, scope=scope, period=period, limit_micros=limit_micros,
                       now=datetime.now(UTC))

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.running.stop()


def video(duration: int = 4, tier: str = "draft", **kw: Any) -> dict[str, Any]:
    return {"kind": "video", "tier": tier,
            "input": {"prompt": "a lighthouse at dusk", "duration_s": duration,
                      "resolution": "720p"}, **kw}


def start_api(rig: Rig, config: ApiConfig | None = None) -> Api:
    with rig.engine.begin() as conn:
        admin_key = create_key(conn, ADMIN_TENANT, admin=True)
        keys = {t: create_key(conn, t) for t in TENANTS}
    running = start_in_thread(rig.container, config=config)
    return Api(rig, running, admin_key, keys)


# Registered under the names ``api`` / ``limited_api``; test modules import these objects
# (``from .api_fixture import api_fixture, limited_api_fixture``) without shadowing the names.
@pytest.fixture(name="api")
def api_fixture(rig: Rig) -> Iterator[Api]:
    a = start_api(rig, ApiConfig(key_cache_s=0))
    try:
        yield a
    finally:
        a.close()


PING_S = 0.2  # how often the ``pinging`` API's idle streams wake


@pytest.fixture(name="pinging")
def pinging_fixture(api: Api) -> Iterator[RunningApi]:
    """A second API on the same database (another process's key cache, as a replica has)
    whose idle streams ping, and look at their key, every PING_S."""
    settings = api.rig.container.settings.model_copy(update={"events_ping_s": PING_S})
    container = Container(settings, enqueue=api.rig.container._enqueue)
    running = start_in_thread(container, config=ApiConfig(key_cache_s=0))
    try:
        yield running
    finally:
        running.stop()
        container.engine.dispose()


@pytest.fixture(name="limited_api")
def limited_api_fixture(rig: Rig) -> Iterator[Api]:
    """Three requests per tenant per minute, bodies up to 4 KiB."""
    a = start_api(rig, ApiConfig(rate_limit=3, rate_window_s=60, max_body_bytes=4096))
    try:
        yield a
    finally:
        a.close()


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    """The client commands (``submit`` … ``report``) on a Typer app, with no ``ORCH_API_*`` in
    the environment and no credentials file: only the options say where the API is."""
    for var in ("ORCH_API_URL", "ORCH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path / "no-credentials"))
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """orchestrator"""

    cli_client.register(app)
    cli_report.register(app)
    return app
