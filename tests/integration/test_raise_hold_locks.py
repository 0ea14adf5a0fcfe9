"""Raising a hold before a failover (``Ledger.raise_hold``) locks the budget period rows,
which every admission of the budget needs too, only with its COMMIT: not while it waits for
anything else, nor between its statements while a busy worker gets round to the next."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger

from .ledger_helpers import FakeClock, assert_sound, counters, make_budget

SCOPES = ("global", "tenant:acme")


def _waiting_on_a_lock(db: Engine) -> bool:
    with db.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar())


def test_raising_a_hold_locks_the_budget_periods_only_at_its_commit(db: Engine) -> None:
    budget = make_budget(db, "global", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    (period,) = ledger.hold(job, SCOPES, 1_000_000).budget_period_ids
    raised: list[int] = []
    step = threading.Thread(target=lambda: raised.append(ledger.raise_hold(job, 3_000_000)))
    with db.begin() as blocker:  # holds the job's hold lines: the raise waits on them
        blocker.execute(text("SELECT 1 FROM hold_lines hl JOIN holds h ON h.id = hl.hold_id "
                             "WHERE h.job_id = :j FOR UPDATE OF hl"), {"j": job})
        step.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(db):
            assert time.monotonic() < deadline, "the raise never waited for the hold's lines"
            time.sleep(0.01)
        with db.begin() as admission:  # another job's hold in the same period meanwhile
            admission.execute(text("SET LOCAL lock_timeout = '2s'"))
            admission.execute(text("SELECT 1 FROM budget_periods WHERE id = :p "
                                   "FOR NO KEY UPDATE"), {"p": period})
    step.join(10)
    assert raised == [2_000_000]
    assert counters(db)[budget] == (10_000_000, 0, 3_000_000)
    assert_sound(db)
