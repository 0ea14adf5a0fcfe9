"""The step task's autoretry covers the job steps' database pool running dry."""

from __future__ import annotations

import importlib
import socket

import pytest
from psycopg_pool import ConnectionPool

from orchestrator.settings import get_settings


def test_a_pool_that_cannot_hand_out_a_connection_is_retried_by_celery(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", database_url)  # the worker's modules need a broker
    monkeypatch.setenv("ORCH_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        advance = importlib.import_module("workers.tasks").advance
    finally:
        get_settings.cache_clear()  # later tests read their own environment
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    pool = ConnectionPool(f"postgresql://nobody@127.0.0.1:{port}/none", min_size=0,
                          max_size=1, timeout=0.2, open=True)
    try:
        with pytest.raises(Exception) as caught, pool.connection():
            pass
    finally:
        pool.close()
    assert isinstance(caught.value, advance.autoretry_for), type(caught.value)
