"""The ledger under contention: exact acceptance counts, no instant over the limit, no deadlock."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from orchestrator.errors import BudgetExceeded, HoldNotActive
from orchestrator.ledger import Ledger

from .ledger_helpers import T0, FakeClock, assert_sound, counters, make_budget


class OverLimitSampler:
    """Watches every budget period from its own connection while the race runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.samples = 0
        self.worst = -1  # max over samples of (committed + held - limit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                worst = conn.execute(
                    text(
                        "SELECT COALESCE(MAX(committed_micros + held_micros - limit_micros), -1) "
                        "FROM budget_periods"
                    )
                ).scalar_one()
                conn.commit()
                self.worst = max(self.worst, int(worst))
                self.samples += 1

    def __enter__(self) -> OverLimitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def race(n: int, step: Callable[[int], None]) -> tuple[int, list[BaseException]]:
    """Run ``step(i)`` in ``n`` threads released together; count successes and odd errors."""
    barrier = threading.Barrier(n)
    accepted = 0
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        nonlocal accepted
        barrier.wait(timeout=60)
        try:
            step(i)
        except BudgetExceeded:
            return
        except BaseException as exc:
            with lock:
                unexpected.append(exc)
            return
        with lock:
            accepted += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    return accepted, unexpected


@pytest.mark.parametrize(
    ("limit", "amount"),
    [(37_000_000, 1_000_000), (1_000_000_000, 3_000_000), (10_000_000, 3_333_333)],
)
def test_hundred_threads_race_one_budget(db: Engine, limit: int, amount: int) -> None:
    n = 100
    budget = make_budget(db, "tenant:acme", "month", limit)
    ledger = Ledger(db, clock=FakeClock())
    with OverLimitSampler(db) as sampler:
        accepted, unexpected = race(
            n, lambda i: ledger.hold(uuid.uuid4(), ("tenant:acme",), amount) and None
        )
    assert [repr(e) for e in unexpected] == []
    assert accepted == min(n, limit // amount)
    assert counters(db)[budget] == (limit, 0, accepted * amount)
    assert sampler.samples > 0 and sampler.worst <= 0
    assert_sound(db)


def test_two_budgets_held_in_opposite_scope_orders_never_deadlock(db: Engine) -> None:
    n, amount = 100, 1_000_000
    tenant = make_budget(db, "tenant:acme", "month", 60_000_000)
    glob = make_budget(db, "global", "day", 45_000_000)
    ledger = Ledger(db, clock=FakeClock())
    orders = [("tenant:acme", "global"), ("global", "tenant:acme")]

    def step(i: int) -> None:
        ledger.hold(uuid.uuid4(), orders[i % 2], amount)

    with OverLimitSampler(db) as sampler:
        accepted, unexpected = race(n, step)
    assert [repr(e) for e in unexpected] == []
    assert accepted == min(n, 45_000_000 // amount, 60_000_000 // amount)
    assert counters(db)[glob][2] == counters(db)[tenant][2] == accepted * amount
    assert sampler.worst <= 0
    assert_sound(db)


def test_hold_settle_pairs_under_contention_keep_the_books_exact(db: Engine) -> None:
    n, amount = 64, 500_000
    budget = make_budget(db, "tenant:acme", "month", n * amount)  # room for every hold
    ledger = Ledger(db, clock=FakeClock())

    def step(i: int) -> None:
        job = uuid.uuid4()
        ledger.hold(job, ("tenant:acme",), amount)
        if i % 3 == 0:
            ledger.release(job)
        else:
            ledger.settle(job, amount - i)

    accepted, unexpected = race(n, step)
    assert [repr(e) for e in unexpected] == []
    assert accepted == n  # each pair frees what it held, nobody is refused
    expected = sum(amount - i for i in range(n) if i % 3)
    assert counters(db)[budget] == (n * amount, expected, 0)
    assert_sound(db)


def test_expiry_and_late_settle_race_and_exactly_one_wins(db: Engine) -> None:
    budget = make_budget(db, "tenant:acme", "month", 1_000_000_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock, hold_ttl=timedelta(minutes=1))
    jobs = [uuid.uuid4() for _ in range(40)]
    for j in jobs:
        ledger.hold(j, ("tenant:acme",), 1_000_000)
    clock.at = T0 + timedelta(minutes=2)  # every hold is now stale

    settled: list[uuid.UUID] = []
    expired: list[uuid.UUID] = []
    refused: list[uuid.UUID] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(jobs) + 2)

    def settler(job: uuid.UUID) -> None:
        barrier.wait(timeout=60)
        try:
            ledger.settle(job, 700_000)
        except HoldNotActive:
            with lock:
                refused.append(job)
            return
        with lock:
            settled.append(job)

    def sweeper() -> None:
        barrier.wait(timeout=60)
        while True:
            batch = ledger.expire_stale(limit=3)
            if not batch:
                return
            with lock:
                expired.extend(batch)

    threads = [threading.Thread(target=settler, args=(j,)) for j in jobs]
    threads += [threading.Thread(target=sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    assert sorted(settled + expired) == sorted(jobs)  # every hold ended once
    assert set(settled).isdisjoint(expired)
    assert sorted(refused) == sorted(expired)  # the losers of the race were told
    assert counters(db)[budget] == (1_000_000_000, 700_000 * len(settled), 0)
    assert_sound(db)


def test_fifty_settles_crossing_eighty_percent_together_write_one_alert(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100_000_000)
    ledger = Ledger(db, clock=FakeClock())
    pre = [uuid.uuid4() for _ in range(75)]
    for j in pre:
        ledger.hold(j, ("tenant:acme",), 1_000_000)
        ledger.settle(j, 1_000_000)  # 75 % spent: 50 % alert already written
    racers = [uuid.uuid4() for _ in range(50)]
    for j in racers:
        ledger.hold(j, ("tenant:acme",), 500_000)
    accepted, unexpected = race(50, lambda i: ledger.settle(racers[i], 500_000) and None)
    assert unexpected == [] and accepted == 50  # 75 % + 25 % = 100 %
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT threshold_bp, count(*) n FROM alerts GROUP BY 1 ORDER BY 1")
        ).all()
    assert [(r.threshold_bp, r.n) for r in rows] == [(5000, 1), (8000, 1), (10000, 1)]
    assert_sound(db)


def test_overages_racing_holds_keep_the_books_exact_and_never_make_room(db: Engine) -> None:
    """40 settles billed 1.5 times their hold race 40 new holds: every bill is charged in
    full, each once, with one overage alert per job; holds take only the room there was
    (overages only ever add to committed + held here), nothing deadlocks."""
    n, amount, limit = 40, 1_000_000, 50_000_000
    budget = make_budget(db, "tenant:acme", "month", limit, thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    old = [uuid.uuid4() for _ in range(n)]
    for j in old:
        ledger.hold(j, ("tenant:acme",), amount)  # 40 of 50 held: room for 10 more

    def step(i: int) -> None:
        if i % 2:
            assert ledger.settle(old[i // 2], amount * 3 // 2).overage_micros == amount // 2
        else:
            ledger.hold(uuid.uuid4(), ("tenant:acme",), amount)

    accepted, unexpected = race(2 * n, step)
    assert [repr(e) for e in unexpected] == []
    new_holds = accepted - n
    assert 0 <= new_holds <= 10
    assert counters(db)[budget] == (limit, n * amount * 3 // 2, new_holds * amount)
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT kind, count(*) n FROM alerts GROUP BY 1 ORDER BY 1")
        ).all()
    assert [(r.kind, r.n) for r in rows] == [("overage", n), ("threshold", 1)]
    assert_sound(db)
