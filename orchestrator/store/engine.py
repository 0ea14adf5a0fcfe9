"""Engine construction: one place that knows pool sizes and driver options.

Besides the SQLAlchemy engine, each engine has an :func:`autocommit` pool: plain psycopg
connections in autocommit mode for the hot path's single statements (a job step's claim,
checkpoint and ending), each of which commits on its own. A statement through a SQLAlchemy
connection cost about 140 µs of CPU on the bench machine (checkout with an isolation level
set and reset, the transaction object, the result layer); through this pool, about 70 µs.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from psycopg import Connection as DriverConnection
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine, event

from orchestrator.settings import normalize_database_url

_pools: weakref.WeakKeyDictionary[Engine, ConnectionPool[DriverConnection[Any]]] = (
    weakref.WeakKeyDictionary())
_pools_lock = threading.Lock()


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Engine:
    return create_engine(
        normalize_database_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping: it costs a round trip per checkout on the hot path. A connection that
        # died is reported by its first use; SQLAlchemy then invalidates the whole pool and
        # the caller retries (Celery tasks autoretry on OperationalError).
        pool_pre_ping=False,
        pool_recycle=1800,
        future=True,
    )


def autocommit(engine: Engine) -> ConnectionPool[DriverConnection[Any]]:
    """The engine's pool of autocommit psycopg connections (made on first use, as large as
    the engine's own pool with its overflow, closed by ``engine.dispose()``). A connection
    that broke is dropped by the pool when it is returned."""
    pool = _pools.get(engine)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(engine)
        if pool is None:
            size = getattr(engine.pool, "size", lambda: 5)() + max(
                0, getattr(engine.pool, "_max_overflow", 0))
            pool = ConnectionPool(
                engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                min_size=0, max_size=max(1, size), open=True, name="orch-autocommit",
                kwargs={"autocommit": True}, timeout=30.0,
            )
            _pools[engine] = pool
            event.listen(engine, "engine_disposed", _close_pool)
    return pool


def _close_pool(engine: Engine) -> None:
    with _pools_lock:
        pool = _pools.pop(engine, None)
    if pool is not None:
        pool.close()
