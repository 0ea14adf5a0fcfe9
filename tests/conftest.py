"""Real PostgreSQL and Redis for every test: embedded servers started here, or the servers
named by ORCH_TEST_DATABASE_URL / ORCH_TEST_REDIS_URL. Each session gets its own database.

Every log line of the session is kept as production would write it (``tests/logscan.py``),
and the test marked ``log_scan`` runs last to look through them all."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from orchestrator.embedded.scratch import scratch_database, server_urls
from orchestrator.store.engine import make_engine
from orchestrator.store.models import Base
from tests.logscan import LOG_DIR_ENV, ProductionCopy


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The log scan looks at what every other test logged: it runs last."""
    items.sort(key=lambda item: item.get_closest_marker("log_scan") is not None)


@pytest.fixture(scope="session", autouse=True)
def session_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    where = tmp_path_factory.mktemp("logs")
    os.environ[LOG_DIR_ENV] = str(where)
    handler = ProductionCopy(where / "in-process.jsonl")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(level)
    handler.finish()


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with server_urls() as urls:
        yield urls


@pytest.fixture(scope="session")
def database_url(servers: tuple[str, str]) -> Iterator[str]:
    with scratch_database(servers[0]) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url, pool_size=20, max_overflow=120)
    yield eng
    eng.dispose()


@pytest.fixture()
def db(engine: Engine) -> Engine:
    """The session's engine over empty tables."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return engine
