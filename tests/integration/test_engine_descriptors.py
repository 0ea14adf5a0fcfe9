"""Database connections numbered above 1023 work like any other.

An API process holding about a thousand client connections opens its next database socket
above descriptor 1023. The pools' checkout checks used ``select()``, which refuses such a
descriptor: every checkout then looked like a connection the server had closed, and under a
900-user load test every database request answered 500 ("This connection is closed").
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from orchestrator.store.engine import autocommit, hung_up, make_engine

HIGH = 1100


@pytest.fixture()
def low_descriptors_taken() -> Iterator[Callable[[], None]]:
    """Descriptors 0..HIGH in use, so the next socket is numbered above 1023; yields a
    top-up to call right before a connection is made: what an earlier test left to the
    garbage collector (a pool, a client) may close a low descriptor meanwhile, and the
    next socket would take that one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HIGH + 200
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"open-files limit {hard}"
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[int] = []

    def top_up() -> None:  # the lowest free descriptor comes first: fill up to HIGH
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
            if held[-1] >= HIGH:
                return

    gc.collect()
    try:
        top_up()
        yield top_up
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_engine_checkouts_work_on_a_high_descriptor(
        database_url: str, low_descriptors_taken: Callable[[], None]) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        low_descriptors_taken()
        for _ in range(3):  # a new connection, then the same one from the pool
            with engine.connect() as conn:
                assert conn.connection.dbapi_connection.fileno() > 1023  # type: ignore[union-attr]
                assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_a_high_descriptor_is_hung_up_only_once_the_server_closed_it(
        database_url: str, low_descriptors_taken: Callable[[], None]) -> None:
    """The check both pools run at checkout: an idle connection is fine (before, each one
    looked closed: the engine replaced it, the autocommit pool spent a round trip on it);
    one whose server ended it is noticed without a query."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    pool = autocommit(engine)
    try:
        low_descriptors_taken()
        with pool.connection(timeout=5) as conn:
            assert conn.fileno() > 1023
            assert not hung_up(conn)
            pid = conn.info.backend_pid
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # pg_terminate_backend only signals: wait until the backend has gone (its socket
        # closed), as the check at checkout must see it
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as other:
                alive = other.execute(text("SELECT count(*) FROM pg_stat_activity "
                                           "WHERE pid = :pid"), {"pid": pid}).scalar()
            if not alive:
                break
            assert time.monotonic() < deadline, "the terminated backend never ended"
        with pool.connection(timeout=5) as conn:  # the pool replaced the ended one
            assert conn.info.backend_pid != pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        engine.dispose()
