"""Real PostgreSQL and Redis for every test: embedded servers started here, or the servers
named by ORCH_TEST_DATABASE_URL / ORCH_TEST_REDIS_URL. Each session gets its own database.

``make test`` runs the suite in two pytest-xdist processes (``--dist loadfile``: a file's
tests share one process and its module fixtures). Each process is a session of its own: its
own embedded servers, or its own database and Redis database number on the shared servers.

Every log line of the session is kept as production would write it (``tests/logscan.py``),
and the test marked ``log_scan`` runs last to look through them all. Under xdist that test
sees only its own process's lines, so the controlling process searches every process's
lines again once all have finished, and fails the run on a finding."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, text

from orchestrator.embedded.scratch import scratch_database, server_urls
from orchestrator.store.engine import make_engine
from orchestrator.store.models import Base
from tests.logscan import LOG_DIR_ENV, LOG_ROOT_ENV, ProductionCopy, scan_all_logs

_LOG_SCAN = pytest.StashKey[tuple[int, list[tuple[str, str, str]]]]()
_MADE_LOG_ROOT = pytest.StashKey[bool]()
SPARE_REDIS_OFFSET = 8  # more than test processes will ever run: no two share a database


def _xdist_controller(config: pytest.Config) -> bool:
    """This process hands tests out to xdist worker processes (it runs none itself)."""
    return (not hasattr(config, "workerinput")
            and bool(getattr(config.option, "numprocesses", None)))


def pytest_configure(config: pytest.Config) -> None:
    """The controller names one directory for every worker's logs before it starts them
    (they inherit the variable)."""
    if _xdist_controller(config) and not os.environ.get(LOG_ROOT_ENV):
        os.environ[LOG_ROOT_ENV] = tempfile.mkdtemp(prefix="orch-test-logs-")
        config.stash[_MADE_LOG_ROOT] = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _xdist_controller(session.config) or not os.environ.get(LOG_ROOT_ENV):
        return
    lines, found = scan_all_logs(Path(os.environ[LOG_ROOT_ENV]))
    session.config.stash[_LOG_SCAN] = (lines, found)
    if found:
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif session.config.stash.get(_MADE_LOG_ROOT, False):
        shutil.rmtree(os.environ[LOG_ROOT_ENV], ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    if _LOG_SCAN not in config.stash:
        return
    lines, found = config.stash[_LOG_SCAN]
    if not found:
        terminalreporter.write_line(f"log scan of every test process: {lines} lines, clean")
        return
    terminalreporter.write_sep("=", f"log scan of every test process: {len(found)} findings "
                               f"in {lines} lines (the run fails)", red=True)
    for name, what, line in found[:20]:
        terminalreporter.write_line(f"{name}: {what}: {line}")
    terminalreporter.write_line(f"the logs: {os.environ[LOG_ROOT_ENV]}")


def _worker_number() -> int:
    """0 outside xdist, else the worker's number (``gw1`` is 1)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The log scan looks at what every other test logged: it runs last."""
    items.sort(key=lambda item: item.get_closest_marker("log_scan") is not None)


@pytest.fixture(scope="session", autouse=True)
def session_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    shared = os.environ.get(LOG_ROOT_ENV)
    if shared:
        where = Path(shared) / os.environ.get("PYTEST_XDIST_WORKER", "main")
        where.mkdir(parents=True, exist_ok=True)
    else:
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


@pytest.fixture(autouse=True)
def root_log_handlers() -> Iterator[None]:
    """A handler a test left on the root logger goes when the test ends. ``orchestrator api``
    run in process (typer's CliRunner) installs its handler on the runner's stream, closed
    once the command returns: every later record, from any thread still running (an SMTP
    server's), then printed a logging error into the run's output."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)


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
    """Under xdist on a shared ORCH_TEST_REDIS_URL, each worker takes the database numbered
    its own after the URL's: tests empty their Redis database (FLUSHDB)."""
    number = _worker_number()
    if not number or not os.environ.get("ORCH_TEST_REDIS_URL"):
        return servers[1]
    return _with_database(servers[1], _database(servers[1]) + number)


@pytest.fixture(scope="session")
def spare_redis_url(redis_url: str) -> str:
    """Another database of the session's Redis, for what no worker of the session may read:
    8 after the session's own, so no other test process's (at most 8) is it."""
    return _with_database(redis_url, _database(redis_url) + SPARE_REDIS_OFFSET)


def _database(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    if not path.isdigit():
        raise pytest.UsageError("tests need a redis:// URL ending in a database number, "
                                "such as redis://127.0.0.1:6379/0 (ORCH_TEST_REDIS_URL)")
    return int(path)


def _with_database(url: str, number: int) -> str:
    if number > 15:
        raise pytest.UsageError(f"Redis database {number} is past Redis's default 16: give "
                                "ORCH_TEST_REDIS_URL a lower database number")
    return urlsplit(url)._replace(path=f"/{number}").geturl()


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
