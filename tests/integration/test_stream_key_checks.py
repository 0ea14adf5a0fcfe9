"""The key checks of open event streams against a real PostgreSQL: the streams of one key,
which wake together every ping period, send one query per period between them, not one each
(200 of them at once took the pool's connections and the API's threads from submissions),
and a revocation found by that one query ends them all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event

from orchestrator.api.security import Authenticator, Principal
from orchestrator.store import keys as key_repo

STREAMS = 40


@pytest.fixture()
def key_queries(db: Engine) -> Iterator[list[str]]:
    """The liveness queries sent while the test runs (observed, not replaced)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "revoked_at IS NULL FROM api_keys" in statement:
            seen.append(statement)

    event.listen(db, "before_cursor_execute", record)
    yield seen
    event.remove(db, "before_cursor_execute", record)


def principal(db: Engine) -> Principal:
    with db.begin() as conn:
        _, rec = key_repo.create_key_record(conn, "acme")
    return Principal(rec.tenant, rec.admin, rec.prefix, rec.id)


def streams_check(auth: Authenticator, p: Principal) -> list[bool]:
    """What ``STREAMS`` streams of one key, checking at the same moment, conclude."""
    start = threading.Barrier(STREAMS)
    answers: list[bool] = []

    def one() -> None:
        start.wait(timeout=10)
        known = auth.live_known(p)
        answers.append(auth.ask_live(p) if known is None else known)

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return answers


def claim_after_expiry(auth: Authenticator, p: Principal) -> None:
    """Check, as a stream would, until the trusted answer has expired and this check is the
    one that must ask."""
    deadline = time.monotonic() + 10
    while auth.live_known(p) is not None:
        assert time.monotonic() < deadline, "the trusted answer never expired"
        time.sleep(0.05)


def test_streams_of_one_key_send_one_query_per_period(db: Engine,
                                                      key_queries: list[str]) -> None:
    p = principal(db)
    auth = Authenticator(db, cache_s=0.5)

    assert streams_check(auth, p) == [True] * STREAMS
    assert len(key_queries) == 1

    claim_after_expiry(auth, p)
    assert auth.ask_live(p) is True
    key_queries.clear()
    assert streams_check(auth, p) == [True] * STREAMS
    assert key_queries == []  # the expiry's check asked; the rest trust its answer


def test_a_revocation_found_by_one_check_ends_every_stream_of_the_key(
        db: Engine, key_queries: list[str]) -> None:
    p = principal(db)
    other = principal(db)
    auth = Authenticator(db, cache_s=0.5)
    assert streams_check(auth, p) == [True] * STREAMS
    with db.begin() as conn:
        key_repo.revoke_key(conn, p.key_id)  # by another API process: this one is not told

    claim_after_expiry(auth, p)
    assert auth.ask_live(p) is False
    key_queries.clear()
    assert streams_check(auth, p) == [False] * STREAMS
    assert key_queries == []  # known revoked for good: nobody asks again
    assert streams_check(auth, other) == [True] * STREAMS  # another key's streams go on


def test_without_a_cache_every_check_asks(db: Engine, key_queries: list[str]) -> None:
    """``ORCH_API_KEY_CACHE_S=0`` trusts nothing: each check is its own query."""
    p = principal(db)
    auth = Authenticator(db, cache_s=0)
    assert streams_check(auth, p) == [True] * STREAMS
    assert len(key_queries) == STREAMS
