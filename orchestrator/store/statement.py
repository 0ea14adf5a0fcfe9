"""Hot-path statements, run on the psycopg connection under a SQLAlchemy ``Connection``.

Every step of every job runs a handful of short, fixed statements. For those, SQLAlchemy's
result layer (cursor description, column metadata, ``Row`` objects) cost more worker CPU than
the statements themselves (bench/throughput.py). A :class:`Statement` keeps the SQL text with
its ``:name`` parameters, runs it on the driver connection (psycopg prepares it server-side
from its fifth use), and returns plain tuples. The transaction is still the SQLAlchemy
connection's: a statement autobegins one, as ``Connection.execute`` does, so commit, rollback
and pool reset cover it.

psycopg forgets a connection's prepared statements on every ROLLBACK (and sends DEALLOCATE
ALL). Hot read paths therefore read in ``engine.begin()`` blocks, which end in a COMMIT,
rather than ``engine.connect()`` blocks, which end in a ROLLBACK.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

import psycopg
from psycopg import Connection as DriverConnection
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

# ``:name`` but not ``::type`` casts or a colon inside a word
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _pyformat(sql: str) -> str:
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


# A SQLAlchemy connection, or a psycopg one from an engine's autocommit pool
# (orchestrator.store.engine.autocommit): there each statement commits on its own.
Conn = Connection | DriverConnection[Any]


def _driver(conn: Conn) -> DriverConnection[Any]:
    """The psycopg connection under ``conn``; a SQLAlchemy one in a transaction (autobegun,
    as ``Connection.execute`` does)."""
    if isinstance(conn, DriverConnection):
        return conn
    if not conn.in_transaction():
        conn.begin()
    return cast(DriverConnection[Any], conn.connection.driver_connection)


class Statement:
    """One SQL statement with ``:name`` parameters, for :meth:`all`, :meth:`first`,
    :meth:`scalar` or :meth:`run` on a SQLAlchemy connection."""

    __slots__ = ("sql",)

    def __init__(self, sql: str) -> None:
        self.sql = _pyformat(sql)

    def __repr__(self) -> str:
        return f"Statement({self.sql.split()[0]} …)"

    def _cursor(self, conn: Conn, params: Mapping[str, Any]) -> Any:
        try:
            return _driver(conn).execute(self.sql, params)
        except psycopg.Error as exc:
            raise self._error(conn, params, exc) from exc

    def first_and_commit(self, conn: Connection, params: Mapping[str, Any]
                         ) -> tuple[Any, ...] | None:
        """Execute, then COMMIT the transaction, both in one message to the server, and
        return the statement's first row (None: it returned none): whatever the statement
        locks stays locked only while the server works, however long this client then takes
        to be scheduled. If the statement fails, the COMMIT does not run and the error is
        raised; the transaction is left to roll back.

        The two go as one simple query, with the parameters bound by psycopg on this side (a
        pipeline would not do: it sends the statement before the COMMIT is queued). Whatever
        runs on ``conn`` after it is a new transaction, which SQLAlchemy's COMMIT at the end of
        the block ends."""
        try:
            cursor = psycopg.ClientCursor(_driver(conn))
            cursor.execute(self.sql + "; COMMIT", params)
        except psycopg.Error as exc:
            raise self._error(conn, params, exc) from exc
        row: tuple[Any, ...] | None = cursor.fetchone() if cursor.description else None
        return row

    def first_after(self, conn: DriverConnection[Any], before: Statement,
                    params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Execute ``before``, then this statement, in one message to the server, on an
        autocommit connection, and return this statement's first row: PostgreSQL runs the
        two as one implicit transaction, and this statement's snapshot is taken after
        ``before`` ran (a lock it took is held until both committed). One round trip where
        BEGIN, the two and COMMIT would take four. Parameters are bound on this side, as in
        :meth:`first_and_commit`; both statements take them from ``params``."""
        try:
            cursor = psycopg.ClientCursor(conn)
            cursor.execute(before.sql + "; " + self.sql, params)
            cursor.nextset()
        except psycopg.Error as exc:
            raise self._error(conn, params, exc) from exc
        row: tuple[Any, ...] | None = cursor.fetchone() if cursor.description else None
        return row

    def _error(self, conn: Conn, params: Mapping[str, Any], exc: psycopg.Error
               ) -> DBAPIError:
        """As Connection.execute would: SQLAlchemy's exception types (callers and Celery's
        autoretry catch those), a dead connection invalidated, and no parameters in the
        message (they can hold a prompt). The driver's error stays in ``.orig``. (A dead
        autocommit-pool connection is dropped by its pool when it goes back.)"""
        if isinstance(conn, DriverConnection):
            return cast(DBAPIError, DBAPIError.instance(
                self.sql, params, exc, psycopg.Error, hide_parameters=True,
                connection_invalidated=conn.broken))
        lost = conn.dialect.is_disconnect(cast(Any, exc), conn.connection, None)
        if lost:
            conn.invalidate(exc)
        return cast(DBAPIError, DBAPIError.instance(
            self.sql, params, exc, psycopg.Error, hide_parameters=True,
            connection_invalidated=lost, dialect=conn.dialect))

    def all(self, conn: Conn, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._cursor(conn, params).fetchall()
        return rows

    def first(self, conn: Conn, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._cursor(conn, params).fetchone()
        return row

    def scalar(self, conn: Conn, params: Mapping[str, Any]) -> Any:
        row = self.first(conn, params)
        return None if row is None else row[0]

    def run(self, conn: Conn, params: Mapping[str, Any]) -> int:
        """Execute for effect; returns the row count."""
        count: int = self._cursor(conn, params).rowcount
        return count
