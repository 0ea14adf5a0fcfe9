"""What a database holds: its tables, schema revision, row counts and other sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

_TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_%'
"""
_OTHER_SESSIONS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend'
"""


@dataclass(frozen=True, slots=True)
class TargetState:
    tables: int
    revision: str | None
    counts: dict[str, int]
    other_sessions: int

    @property
    def empty(self) -> bool:
        return self.tables == 0

    def describe(self) -> str:
        """What is there, for a refusal to say what a restore would overwrite."""
        rows = ", ".join(f"{n:,} {t.replace('_', ' ')}" for t, n in self.counts.items())
        schema = f"schema {self.revision}" if self.revision else "no alembic_version"
        return f"{self.tables} tables, {schema}" + (f": {rows}" if rows else "")


def inspect_target(conn: psycopg.Connection[Any], counted: tuple[str, ...]) -> TargetState:
    """``counted``: the tables of schema public whose rows to count, where they exist."""
    tables = {(schema, name) for schema, name in conn.execute(_TABLES).fetchall()}
    revision = None
    if ("public", "alembic_version") in tables:
        row = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
        revision = str(row[0]) if row else None
    counts: dict[str, int] = {}
    for table in counted:
        if ("public", table) in tables:
            row = conn.execute(f'SELECT count(*) FROM public."{table}"').fetchone()
            counts[table] = int(row[0]) if row else 0
    sessions = conn.execute(_OTHER_SESSIONS).fetchone()
    return TargetState(len(tables), revision, counts, int(sessions[0]) if sessions else 0)
