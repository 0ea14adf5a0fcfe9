"""A real simulator server (uvicorn on a free 127.0.0.1 port, in a thread) for tests.

Use from a test module::

    from tests.integration.simulator_fixture import (  # noqa: F401
        Sim, sim_fixture, sim_server_fixture,
    )

    def test_x(sim: Sim) -> None: ...

``sim_server`` (session) runs the server over TEST_CATALOGUE; ``sim`` (per test) resets every
backend's state and counters first. ``sim.catalogue`` has base URLs pointing at the live server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from orchestrator.domain.catalogue import BackendSpec, Catalogue, parse_catalogue
from orchestrator.simulator import RunningSimulator, start_in_thread

AUTH_ENV = "ORCH_TEST_SIM_KEY"

TEST_CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 10.0}},
    "backends": [
        {
            "name": "vid-a", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
            "base_url": "${ORCH_SIMULATOR_URL}/vid-a",
            "price": {"model": "per_second", "usd_per_second": 0.05, "max_duration_s": 120,
                      "resolution_multipliers": {"480p": 1.0, "720p": 1.5, "1080p": 2.5}},
        },
        {
            "name": "vid-b", "protocol": "predictions", "kinds": ["video"], "tier": "premium",
            "base_url": "${ORCH_SIMULATOR_URL}/vid-b",
            "price": {"model": "per_second", "usd_per_second": 0.137,
                      "resolution_multipliers": {"720p": 1.0, "1080p": 1.75}},
        },
        {
            "name": "vid-auth", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
            "base_url": "${ORCH_SIMULATOR_URL}/vid-auth", "api_key_env": AUTH_ENV,
            "price": {"model": "per_second", "usd_per_second": 0.01},
        },
        {
            "name": "img-a", "protocol": "openai", "kinds": ["image"], "tier": "standard",
            "base_url": "${ORCH_SIMULATOR_URL}/img-a",
            "price": {"model": "per_image",
                      "usd_per_image": {"512x512": 0.011, "1024x1024": 0.043}},
        },
        {
            "name": "txt-a", "protocol": "openai", "kinds": ["text"], "tier": "standard",
            "base_url": "${ORCH_SIMULATOR_URL}/txt-a",
            "price": {"model": "per_token", "usd_per_1k_input": 0.0005,
                      "usd_per_1k_output": 0.0015},
        },
        {
            "name": "txt-flat", "protocol": "openai", "kinds": ["text"], "tier": "draft",
            "base_url": "${ORCH_SIMULATOR_URL}/txt-flat",
            "price": {"model": "per_request", "usd_per_request": 0.0021},
        },
    ],
}


@dataclass
class Sim:
    """Handle on the live simulator: its URL, a catalogue pointing at it, control helpers."""

    url: str
    catalogue: Catalogue
    http: httpx.Client

    def backend(self, name: str) -> BackendSpec:
        return self.catalogue.get(name)

    def control(self, name: str, **knobs: Any) -> dict[str, Any]:
        resp = self.http.post(f"{self.url}/_control/{name}", json=knobs)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def state(self, name: str) -> dict[str, Any]:
        resp = self.http.get(f"{self.url}/_control/{name}")
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def counters(self, name: str) -> dict[str, int]:
        counters: dict[str, int] = self.state(name)["counters"]
        return counters

    def reset(self) -> None:
        self.http.post(f"{self.url}/_control/_reset").raise_for_status()


def catalogue_at(url: str, data: dict[str, Any] | None = None) -> Catalogue:
    return parse_catalogue(data or TEST_CATALOGUE, env={"ORCH_SIMULATOR_URL": url})


@pytest.fixture(scope="session", name="sim_server")
def sim_server_fixture() -> Iterator[RunningSimulator]:
    running = start_in_thread(catalogue_at("http://127.0.0.1:1"))
    yield running
    running.stop()


@pytest.fixture(name="sim")
def sim_fixture(sim_server: RunningSimulator) -> Iterator[Sim]:
    with httpx.Client(timeout=10.0) as http:
        handle = Sim(url=sim_server.url, catalogue=catalogue_at(sim_server.url), http=http)
        handle.reset()
        yield handle
