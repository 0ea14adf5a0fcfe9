"""Fixtures of the chaos suite (``pytest -m chaos -s tests/chaos`` prints the figures): servers
of its own that the tests restart, the simulator, a cluster of processes per test on a
database of its own."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.simulator import RunningSimulator
from orchestrator.store.engine import make_engine
from tests.chaos.cluster import Cluster, Servers, servers_in
from tests.chaos.load import Figures
from tests.integration.e2e_support import e2e_sim

__all__ = ["e2e_sim"]


@pytest.fixture(scope="package")
def chaos_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with servers_in(tmp_path_factory.mktemp("chaos-servers")) as s:
        yield s


@pytest.fixture()
def cluster(chaos_servers: Servers, e2e_sim: RunningSimulator,
            tmp_path: Path) -> Iterator[Cluster]:
    httpx.post(f"{e2e_sim.url}/_control/_reset", timeout=10).raise_for_status()
    servers = chaos_servers.fresh()
    engine = make_engine(servers.database_url, pool_size=4, max_overflow=4)
    c = Cluster(servers, e2e_sim.url, tmp_path, engine)
    try:
        yield c
    finally:
        c.stop_all()
        engine.dispose()
        httpx.post(f"{e2e_sim.url}/_control/_reset", timeout=10).raise_for_status()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed chaos test's report says which processes still ran and what they last
    warned of: CI keeps the report, not the processes' log files."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and isinstance(cluster, Cluster):
        report.sections.append(("chaos processes", cluster.describe()))
    return report


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    return Figures(tmp_path_factory.getbasetemp() / "chaos-figures.txt")
