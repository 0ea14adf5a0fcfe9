"""Hard-limit refusals (402) raise a `refusal` alert at most once per budget per window, in
its own transaction (the refused hold's was rolled back): ledger level with an injected
clock, racing writers, and through the API."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestrator.errors import BudgetExceeded
from orchestrator.ledger import Ledger

from .api_fixture import Api, api_fixture, video  # noqa: F401
from .ledger_helpers import T0, FakeClock, assert_sound, make_budget


def refusals(db: Engine) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(text(
            "SELECT a.id, a.bucket, a.threshold_bp, a.payload, b.scope FROM alerts a "
            "JOIN budgets b ON b.id = a.budget_id WHERE a.kind = 'refusal' "
            "ORDER BY a.bucket")).all())


def refuse(ledger: Ledger, scopes: tuple[str, ...], amount: int) -> BudgetExceeded:
    with pytest.raises(BudgetExceeded) as info:
        ledger.hold(uuid.uuid4(), scopes, amount)
    return info.value


def test_refusals_alert_once_per_budget_per_window(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 1_000_000)
    make_budget(db, "global", "month", 1_000_000_000)
    clock = FakeClock(T0 + timedelta(minutes=5))
    ledger = Ledger(db, clock=clock, refusal_window=timedelta(hours=1))
    exc = refuse(ledger, ("global", "tenant:acme"), 2_500_000)
    first = ledger.record_refusal(exc)
    assert first is not None
    assert ledger.record_refusal(exc) is None  # same window (remembered in process)
    other = Ledger(db, clock=clock)  # another process: the database key decides
    assert other.record_refusal(refuse(other, ("tenant:acme",), 3_000_000)) is None
    clock.at = T0 + timedelta(hours=1, minutes=1)  # next window
    second = ledger.record_refusal(refuse(ledger, ("tenant:acme",), 2_000_000))
    assert second is not None and second != first

    rows = refusals(db)
    assert [r.id for r in rows] == [first, second]
    assert [r.scope for r in rows] == ["tenant:acme", "tenant:acme"]
    assert [r.bucket for r in rows] == [int(T0.timestamp()), int(T0.timestamp()) + 3600]
    p = rows[0].payload
    assert p["requested_usd"] == 2.5 and p["remaining_usd"] == 1.0
    assert p["limit_usd"] == 1.0 and p["committed_usd"] == 0.0 and p["held_usd"] == 0.0
    assert p["window_start"] == T0.isoformat() and rows[0].threshold_bp == 10000
    assert_sound(db)  # nothing held by the refused holds


def test_each_refusing_budget_has_its_own_window(db: Engine) -> None:
    make_budget(db, "tenant:acme", "day", 500_000)
    make_budget(db, "tenant:acme/project:p1", "month", 1_000_000)
    ledger = Ledger(db, clock=FakeClock())
    ids = [ledger.record_refusal(refuse(ledger, scopes, amount)) for scopes, amount in (
        (("tenant:acme",), 600_000), (("tenant:acme/project:p1",), 2_000_000),
        (("tenant:acme",), 700_000))]
    assert ids[0] is not None and ids[1] is not None and ids[2] is None
    assert {(r.scope, r.payload["period"]) for r in refusals(db)} == {
        ("tenant:acme", "day"), ("tenant:acme/project:p1", "month")}


def test_racing_refusals_write_one_row(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 1_000_000)
    clock = FakeClock()
    exc = refuse(Ledger(db, clock=clock), ("tenant:acme",), 5_000_000)
    go = threading.Barrier(20)
    got: list[uuid.UUID | None] = []
    lock = threading.Lock()

    def record() -> None:
        go.wait(10)
        alert_id = Ledger(db, clock=clock).record_refusal(exc)  # no shared memory
        with lock:
            got.append(alert_id)

    threads = [threading.Thread(target=record) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 20 and sum(a is not None for a in got) == 1
    assert len(refusals(db)) == 1


def test_a_402_from_the_api_raises_one_refusal_alert(api: Api) -> None:
    api.budget("tenant:acme", 100_000)  # $0.10: a draft video needs more
    client = api.tenant()
    for _ in range(3):
        r = client.post("/v1/jobs", json=video())
        assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded"
    rows = refusals(api.rig.engine)
    assert len(rows) == 1 and rows[0].scope == "tenant:acme"
    assert rows[0].payload["requested_usd"] == r.json()["error"]["details"]["requested_usd"]
