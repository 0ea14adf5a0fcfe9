"""Throw-away databases and servers for tests and benchmarks.

``server_urls()`` gives a PostgreSQL server URL and a Redis URL: those in
``ORCH_TEST_DATABASE_URL`` / ``ORCH_TEST_REDIS_URL`` when set, otherwise embedded servers
started under a temporary directory (and stopped on exit).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from orchestrator.embedded.postgres import EmbeddedPostgres
from orchestrator.embedded.redis import EmbeddedRedis
from orchestrator.settings import normalize_database_url


@contextmanager
def server_urls(*, durable: bool = False) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        db_url = os.environ.get("ORCH_TEST_DATABASE_URL")
        redis_url = os.environ.get("ORCH_TEST_REDIS_URL")
        tmp: Path | None = None
        if not db_url or not redis_url:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orch-test-")))
        if not db_url:
            pg = EmbeddedPostgres(tmp / "pg", durable=durable)  # type: ignore[operator]
            db_url = pg.start()
            stack.callback(pg.stop)
        if not redis_url:
            rd = EmbeddedRedis(tmp / "redis", durable=durable)  # type: ignore[operator]
            redis_url = rd.start()
            stack.callback(rd.stop)
        yield normalize_database_url(db_url), redis_url


@contextmanager
def scratch_database(server_url: str, *, migrate: bool = True) -> Iterator[str]:
    """A new, uniquely named database on the server of ``server_url``, dropped afterwards."""
    url = make_url(normalize_database_url(server_url))
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    admin = dict(
        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
        password=url.password, dbname=url.database or "postgres", autocommit=True,
    )
    with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')
    new_url = url.set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            from orchestrator.store.migrate import upgrade

            upgrade(new_url)
        yield new_url
    finally:
        with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
