"""Engine construction: one place that knows pool sizes and driver options."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from orchestrator.settings import normalize_database_url


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Engine:
    return create_engine(
        normalize_database_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        future=True,
    )
