"""Engine construction: one place that knows pool sizes, timeouts and driver options.

Besides the SQLAlchemy engine, each engine has an :func:`autocommit` pool: plain psycopg
connections in autocommit mode for the hot path's single statements (a job step's claim,
checkpoint and ending), each of which commits on its own. A statement through a SQLAlchemy
connection cost about 140 µs of CPU on the bench machine (checkout with an isolation level
set and reset, the transaction object, the result layer); through this pool, about 70 µs.

**Outages.** Both pools fail fast while PostgreSQL is down and recover by themselves once it
is back (``docs/operations.md``, "Failure behaviour"):

- a new connection gives up after ``connect_timeout_s``; a caller waits at most
  ``pool_timeout_s`` for a pooled one (then ``orchestrator.outage`` makes it a 503, or a
  retried job step);
- a pooled connection whose server went away (a restart closes every connection) is noticed
  at checkout and replaced, without a round trip: its socket is readable while it sits idle
  (the server's "terminating connection" notice, or the end of the stream). That is
  ``pool_pre_ping``'s effect for a restarted server, at the cost of one ``poll`` instead of
  a query per checkout;
- psycopg_pool retries a failed connect with a growing backoff for ``reconnect_timeout``:
  set to ``connect_timeout_s`` here, so that after an outage the next request tries again at
  once rather than after a backoff of many seconds;
- psycopg_pool keeps a caller waiting for a connection until ``timeout`` even when making
  one has just failed: :class:`FailFastPool` hands that failure to the callers waiting at
  once, so that an outage is a 503 in milliseconds, not one per ``pool_timeout_s`` per
  API thread.
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from typing import Any

import pydantic_core
from psycopg import Connection as DriverConnection
from psycopg import OperationalError as DriverOperationalError
from psycopg.types.json import set_json_loads
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError

from orchestrator.runtime.sockets import has_input
from orchestrator.settings import normalize_database_url

_pools: weakref.WeakKeyDictionary[Engine, ConnectionPool[DriverConnection[Any]]] = (
    weakref.WeakKeyDictionary())
_timeouts: weakref.WeakKeyDictionary[Engine, tuple[float, float]] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()

CONNECT_TIMEOUT_S = 5.0  # the defaults of ORCH_DB_CONNECT_TIMEOUT_S and ORCH_DB_POOL_TIMEOUT_S
POOL_TIMEOUT_S = 5.0


def json_loads(data: bytes | str) -> Any:
    """json and jsonb values as Python ones, read by pydantic-core's parser (Rust): a page of
    50 jobs, each with its route, took 5.7 ms of API CPU with ``json.loads`` and 4.1 ms with
    this (bench/api_cpu.py ``list50``). What it refuses (nesting deeper than about 250
    levels, which the API refuses now but may have stored before) is read by ``json``."""
    try:
        return pydantic_core.from_json(data)
    except ValueError:
        return json.loads(data)


def jsonb_dumps(value: Any) -> str:
    """``value`` as JSON that PostgreSQL's jsonb accepts, for what a provider sent us: jsonb
    refuses the NUL character, lone UTF-16 surrogates (which Python's JSON reader lets
    through) and NaN/Infinity, and a refused write would leave a paid job unended (and put
    the provider's text in the error). Those characters become U+FFFD, a non-finite number
    null."""
    return json.dumps(_storable(value), allow_nan=False)


UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return UNSTORABLE_TEXT.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_storable(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    return value


def _use_json_loads(conn: DriverConnection[Any], *_: Any) -> None:
    set_json_loads(json_loads, conn)


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10,
                connect_timeout_s: float = CONNECT_TIMEOUT_S,
                pool_timeout_s: float = POOL_TIMEOUT_S) -> Engine:
    engine = create_engine(
        normalize_database_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping: it costs a round trip per checkout on the hot path; the checkout
        # listener below notices a connection its server closed. One that dies later is
        # reported by its first use; SQLAlchemy then invalidates the whole pool and the caller
        # answers 503 or retries (Celery tasks autoretry on OperationalError).
        pool_pre_ping=False,
        pool_recycle=1800,
        pool_timeout=pool_timeout_s,
        connect_args={"connect_timeout": _whole_seconds(connect_timeout_s)},
        # a statement's parameters (a prompt, a channel's secret) never reach an error's
        # text, which a worker or the CLI may print
        hide_parameters=True,
        future=True,
    )
    event.listen(engine, "checkout", _refuse_hung_up)
    event.listen(engine, "connect", _use_json_loads)
    _timeouts[engine] = (connect_timeout_s, pool_timeout_s)
    return engine


def _whole_seconds(s: float) -> int:
    return max(1, math.ceil(s))  # libpq's connect_timeout is whole seconds


def hung_up(conn: DriverConnection[Any]) -> bool:
    """True when the server closed this idle connection, or sent something unasked: its
    socket is readable (a connection at rest in a pool has nothing to read otherwise)."""
    return conn.closed or has_input(conn.fileno())


def _refuse_hung_up(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """SQLAlchemy's checkout hook: DisconnectionError makes the pool replace the connection
    and check out again (up to three times, then the connect error is raised)."""
    if hung_up(dbapi_connection):
        raise DisconnectionError("the server closed this pooled connection")


def _check_pooled(conn: DriverConnection[Any]) -> None:
    """psycopg_pool's checkout check: a connection that looks hung up is tried with an empty
    statement (one round trip, only then); the pool replaces it if that fails."""
    if hung_up(conn):
        if conn.closed:
            raise DriverOperationalError("the pooled connection is closed")
        ConnectionPool.check_connection(conn)


class FailFastPool(ConnectionPool[DriverConnection[Any]]):
    """psycopg_pool's pool, except that a connection attempt that fails (the server is down,
    restarting, or refusing more clients) fails the callers then waiting for a connection
    with its error, instead of leaving them to wait out their timeout while the pool retries
    in the background. (It overrides the pool's ``_connect``; without the private attributes
    it relies on, it behaves as the plain pool.)"""

    def _connect(self, timeout: float | None = None) -> DriverConnection[Any]:
        try:
            return super()._connect(timeout)
        except DriverOperationalError as exc:
            lock, waiting = getattr(self, "_lock", None), getattr(self, "_waiting", None)
            if lock is not None and waiting is not None:
                with lock:
                    callers = list(waiting)
                    waiting.clear()
                for caller in callers:
                    caller.fail(exc)
            raise


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
            connect_s, wait_s = _timeouts.get(engine, (CONNECT_TIMEOUT_S, POOL_TIMEOUT_S))
            pool = FailFastPool(
                engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                min_size=0, max_size=max(1, size), open=True, name="orch-autocommit",
                kwargs={"autocommit": True, "connect_timeout": _whole_seconds(connect_s)},
                timeout=wait_s, reconnect_timeout=connect_s, check=_check_pooled,
                configure=_use_json_loads,
            )
            _pools[engine] = pool
            event.listen(engine, "engine_disposed", _close_pool)
    return pool


def _close_pool(engine: Engine) -> None:
    with _pools_lock:
        pool = _pools.pop(engine, None)
    if pool is not None:
        pool.close()
