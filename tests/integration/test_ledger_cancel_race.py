"""A job ended (cancelled) while its chain opens its first attempt: whichever commits first,
the hold waits for that attempt's conclusion and is charged its bill.

Found by the load test (loadtests/): a text job cancelled 5 ms before its chain's claim
committed was released with nothing charged, while its attempt, opened anyway, ran and was
billed by the provider. ``orch_end_job`` looked for an open attempt before it waited for the
job row that the claim held, so it missed the attempt the claim committed meanwhile."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger
from orchestrator.ledger.endings import ClosingAttempt, JobEnd
from orchestrator.store import jobs as repo

from .ledger_helpers import (
    T0,
    FakeClock,
    admitted_text_job,
    assert_sound,
    counters,
    hold_status,
    make_budget,
)


def _waiting_for_a_lock(db: Engine, timeout_s: float = 30.0) -> None:
    """Until some session's orch_end_job waits for a row lock."""
    deadline = time.monotonic() + timeout_s
    with db.connect() as conn:
        while not conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%orch_end_job%' AND pid <> pg_backend_pid() "
                "AND datname = current_database())")).scalar_one():
            assert time.monotonic() < deadline, "the ending never waited for the job row"
            conn.rollback()
            time.sleep(0.01)  # a poll interval; the loop re-reads the condition


def test_a_cancel_racing_the_claim_keeps_the_hold_for_the_attempts_bill(db: Engine) -> None:
    t = make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = admitted_text_job(ledger)

    ended: list[JobEnd | None] = []
    with db.connect() as chain:
        claim = chain.begin()
        opened = repo.claim_and_open(chain, job.id, job.chain_token, T0, "txt-small",
                                     lease_s=60)
        assert opened is not None
        cancel = threading.Thread(target=lambda: ended.append(ledger.end_job(
            job.id, "cancelled", T0, error_code="cancelled", conclude_in_s=5)))
        cancel.start()
        _waiting_for_a_lock(db)  # the cancel now waits for the claim's job row
        claim.commit()
    cancel.join(timeout=30)
    assert not cancel.is_alive()

    (end,) = ended
    assert end is not None and end.ended and end.pending  # an attempt is open: hold kept
    assert hold_status(db, job.id) == "held"

    bill = ClosingAttempt(opened[1].id, "succeeded", "success", 328)
    concluded = ledger.end_job(job.id, "cancelled", T0, attempt=bill)
    assert concluded is not None and concluded.concluded and concluded.charged_micros == 328
    assert counters(db)[t] == (10_000_000, 328, 0)
    assert_sound(db)
