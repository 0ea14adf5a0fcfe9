"""A budget's limit, lowered or raised, governs every later hold of its open period; a new
period row carries the limit current when it is created, even against a concurrent change."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from orchestrator.domain.budgets import period_window
from orchestrator.errors import BudgetExceeded
from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import list_budgets, set_budget
from orchestrator.ledger.periods import _ENSURE_PERIOD  # the resolver's own statement

from .ledger_helpers import T0, FakeClock, assert_sound, counters, make_budget, waiting_on_lock

SCOPES = ("tenant:acme",)
USD = 1_000_000


def period_limits(db: Engine, budget_id: int) -> list[tuple[int, int]]:
    """(limit, excess) of the budget's period rows, oldest first."""
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT limit_micros, excess_micros FROM budget_periods WHERE budget_id = :b "
            "ORDER BY period_start"), {"b": budget_id})]


def test_a_lowered_limit_refuses_holds_after_earlier_holds_drained(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "month", 100 * USD)
    ledger = Ledger(db, clock=FakeClock())
    big = uuid.uuid4()
    ledger.hold(big, SCOPES, 80 * USD)

    make_budget(db, "tenant:acme", "month", 10 * USD)
    assert period_limits(db, b) == [(10 * USD, 70 * USD)]  # the excess absorbs the rest
    assert_sound(db)
    ledger.settle(big, 5 * USD)
    assert period_limits(db, b) == [(10 * USD, 0)]

    with pytest.raises(BudgetExceeded) as refused:
        ledger.hold(uuid.uuid4(), SCOPES, 50 * USD)  # the old clamp (80) would have taken it
    assert refused.value.remaining_micros == 5 * USD
    ledger.hold(uuid.uuid4(), SCOPES, 5 * USD)
    assert counters(db)[b] == (10 * USD, 5 * USD, 5 * USD)
    assert_sound(db)

    make_budget(db, "tenant:acme", "month", 100 * USD)  # raised: applies at once
    ledger.hold(uuid.uuid4(), SCOPES, 50 * USD)
    assert counters(db)[b] == (100 * USD, 5 * USD, 55 * USD)
    assert_sound(db)


def test_lowering_below_the_committed_spend_keeps_it_as_excess_until_raised(
    db: Engine,
) -> None:
    b = make_budget(db, "tenant:acme", "month", 10 * USD)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 6 * USD)
    ledger.settle(job, 6 * USD)

    make_budget(db, "tenant:acme", "month", 4 * USD)
    assert period_limits(db, b) == [(4 * USD, 2 * USD)]
    with db.connect() as conn:
        (view,) = list_budgets(conn, now=T0)
    assert (view.limit_micros, view.committed_micros, view.remaining_micros) == (
        4 * USD, 6 * USD, 0)
    with pytest.raises(BudgetExceeded):
        ledger.hold(uuid.uuid4(), SCOPES, 1)
    assert_sound(db)

    make_budget(db, "tenant:acme", "month", 7 * USD)
    assert period_limits(db, b) == [(7 * USD, 0)]
    ledger.hold(uuid.uuid4(), SCOPES, 1 * USD)
    assert_sound(db)


def test_a_new_periods_first_hold_uses_the_current_limit(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "day", 10 * USD)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock)
    ledger.hold(uuid.uuid4(), SCOPES, 1 * USD)  # today's row (and the resolver's cache)

    make_budget(db, "tenant:acme", "day", 3 * USD)
    clock.at = T0 + timedelta(days=1)
    with pytest.raises(BudgetExceeded):
        ledger.hold(uuid.uuid4(), SCOPES, 4 * USD)
    ledger.hold(uuid.uuid4(), SCOPES, 3 * USD)
    assert period_limits(db, b) == [(3 * USD, 0), (3 * USD, 0)]
    assert_sound(db)


def test_a_period_row_made_during_a_limit_change_carries_the_committed_limit(
    db: Engine,
) -> None:
    """The limit change's transaction holds the budget row; the new period row, whose INSERT
    reads the limit from that row under a share lock, waits for it and takes the new limit
    (reading it beforehand, as the resolver once did, would have kept the old one)."""
    b = make_budget(db, "tenant:acme", "month", 10 * USD)
    ledger = Ledger(db, clock=FakeClock())
    with db.connect() as conn:
        budgets = ledger.periods.covering_budgets(conn, SCOPES)  # read before the change
    made: list[list[int]] = []

    with db.begin() as tx:
        set_budget(tx, scope="tenant:acme", period="month", limit_micros=2 * USD, now=T0)
        maker = threading.Thread(
            target=lambda: made.append(ledger.periods.current_period_ids(budgets, T0)))
        maker.start()
        deadline = time.monotonic() + 10
        while waiting_on_lock(db, "%INSERT INTO budget_periods%") == 0:
            assert maker.is_alive(), "the period row was made without waiting"
            assert time.monotonic() < deadline, "the period row's insert never waited"
            time.sleep(0.01)
    maker.join(timeout=10)

    assert len(made) == 1 and len(made[0]) == 1
    assert period_limits(db, b) == [(2 * USD, 0)]
    with pytest.raises(BudgetExceeded):
        ledger.hold(uuid.uuid4(), SCOPES, 3 * USD)
    ledger.hold(uuid.uuid4(), SCOPES, 2 * USD)
    assert_sound(db)


def test_a_limit_change_waits_for_a_period_row_being_made_and_updates_it(
    db: Engine,
) -> None:
    """The other order: the period row's transaction holds the share lock first; the limit
    change waits for it, then sets the new row's limit with the other open periods."""
    b = make_budget(db, "tenant:acme", "month", 10 * USD)
    changed = threading.Event()
    with db.begin() as tx:
        window = period_window("month", T0)
        tx.execute(_ENSURE_PERIOD, {"budget_id": b, "start": window.start, "end": window.end})

        def change() -> None:
            with db.begin() as other:
                set_budget(other, scope="tenant:acme", period="month", limit_micros=2 * USD,
                           now=T0)
            changed.set()

        changer = threading.Thread(target=change)
        changer.start()
        assert not changed.wait(0.5), "the limit change did not wait for the period row"
    changer.join(timeout=10)
    assert changed.is_set()
    assert period_limits(db, b) == [(2 * USD, 0)]
    assert_sound(db)


def test_raising_a_hold_is_limit_checked_idempotent_and_settles_whole(db: Engine) -> None:
    """``Ledger.raise_hold`` (before a failover after a bill): the extra is reserved in every
    period the hold holds in, refused past a limit with nothing changed, a replay adds
    nothing, and the settle releases the raised hold in full."""
    month = make_budget(db, "tenant:acme", "month", 10 * USD)
    day = make_budget(db, "tenant:acme", "day", 6 * USD)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 4 * USD)

    with pytest.raises(BudgetExceeded) as refused:
        ledger.raise_hold(job, 7 * USD)  # the day has 2 left, not 3
    assert (refused.value.scope, refused.value.period) == ("tenant:acme", "day")
    assert refused.value.requested_micros == 3 * USD
    assert counters(db)[month] == (10 * USD, 0, 4 * USD)
    assert counters(db)[day] == (6 * USD, 0, 4 * USD)

    assert ledger.raise_hold(job, 6 * USD) == 2 * USD
    assert ledger.raise_hold(job, 6 * USD) == 0  # replayed: nothing more
    assert ledger.raise_hold(job, 5 * USD) == 0  # never lowered
    assert counters(db)[month] == (10 * USD, 0, 6 * USD)
    assert counters(db)[day] == (6 * USD, 0, 6 * USD)
    assert_sound(db)

    receipt = ledger.settle(job, 5 * USD + 500_000)
    assert (receipt.charged_micros, receipt.released_micros, receipt.overage_micros) == (
        5 * USD + 500_000, 500_000, 0)
    assert counters(db)[day] == (6 * USD, 5 * USD + 500_000, 0)
    assert_sound(db)
