"""Engine construction: one place that knows pool sizes and driver options."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from orchestrator.settings import normalize_database_url


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
