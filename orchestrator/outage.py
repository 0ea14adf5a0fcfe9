"""What an outage of PostgreSQL or Redis looks like from inside a process, and its error.

The API answers these exceptions ``503 unavailable`` with ``Retry-After`` instead of 500
(``orchestrator.api.errors``), and the job steps' Celery tasks retry on them: the server may
be restarting, and the connection pools reconnect by themselves once it answers again
(``orchestrator.store.engine``; redis-py's pools make a new connection on the next command).

- PostgreSQL: a DB-API ``OperationalError`` or ``InterfaceError`` (refused, closed, the
  server shutting down or starting up, too many connections, a statement cancelled) as
  psycopg raises it or SQLAlchemy wraps it, a connection that SQLAlchemy found broken, and
  a pool that could hand out no connection in time (SQLAlchemy's and psycopg_pool's).
  A connection refused for another reason (no such database, a wrong password) is the same
  exception with no SQLSTATE: it is answered 503 too, and ``/readyz`` shows it.
- Redis: redis-py's ``ConnectionError`` (refused, closed, still loading its data, a failed
  AUTH) and ``TimeoutError``.
"""

from __future__ import annotations

import psycopg
from redis import exceptions as redis_errors
from sqlalchemy import exc as sa

from orchestrator.errors import Unavailable

RETRY_AFTER_S = 2

DATABASE_DOWN: tuple[type[Exception], ...] = (
    sa.OperationalError, sa.InterfaceError, sa.TimeoutError, sa.DisconnectionError,
    psycopg.OperationalError, psycopg.InterfaceError,  # psycopg_pool.PoolTimeout is one
)
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError,
)
TRANSIENT = DATABASE_DOWN + REDIS_DOWN


def unavailable(exc: BaseException) -> Unavailable | None:
    """The :class:`Unavailable` that ``exc`` means, or None if it is not an outage."""
    if isinstance(exc, Unavailable):
        return exc
    if isinstance(exc, REDIS_DOWN):
        return Unavailable("redis", retry_after_s=RETRY_AFTER_S)
    if isinstance(exc, DATABASE_DOWN) or (
            isinstance(exc, sa.DBAPIError) and exc.connection_invalidated):
        return Unavailable("database", retry_after_s=RETRY_AFTER_S)
    return None
