"""Two attempts given one provider id at once (a gateway coalescing two creates answers both
together): exactly one records it, however their checkpoints interleave. The other's check
must see the first's write, committed while it waited, not its own statement's snapshot."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import Engine, text

from orchestrator.domain.budgets import covering_scopes
from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.ledger.service import utcnow
from orchestrator.store import jobs as repo
from orchestrator.store.engine import autocommit

from .ledger_helpers import make_budget

BACKEND = "vid-gw"


def _running_attempt(db: Engine, ledger: Ledger) -> tuple[uuid.UUID, uuid.UUID, int]:
    """A claimed job with its first attempt open on BACKEND: (job, token, attempt id)."""
    now, token = utcnow(), uuid.uuid4()
    job = NewJob(id=uuid.uuid4(), tenant="acme", kind="video", tier="standard",
                 spec={"kind": "video", "input": {"duration_s": 4}},
                 route={"backends": [BACKEND]}, estimated_cost_micros=1_000_000,
                 deadline_at=now + timedelta(hours=1), chain_token=token,
                 wake_at=now + timedelta(minutes=1), idempotency_key=f"k-{token}",
                 request_hash="h")
    assert ledger.admit_job(job, covering_scopes("acme"), timedelta(hours=1)) is not None
    with db.begin() as conn:
        assert repo.claim_or_get(conn, job.id, token, now) is not None
        attempt = repo.open_attempt(conn, job.id, token, 1, BACKEND, now, lease_s=60)
    assert attempt is not None
    return job.id, token, attempt.id


def _waiting_on_a_lock(db: Engine) -> bool:
    with db.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar())


def test_two_attempts_given_one_id_at_once_record_it_once(db: Engine) -> None:
    make_budget(db, "global", "month", 10**10)
    ledger = Ledger(db)
    first_job, first_token, first = _running_attempt(db, ledger)
    second_job, second_token, second = _running_attempt(db, ledger)
    answers: list[repo.Checkpoint] = []

    def second_checkpoint() -> None:
        with autocommit(db).connection() as conn:
            answers.append(repo.record_external_id_and_wake(
                conn, second, BACKEND, "p-shared", second_job, second_token, 60))

    other = threading.Thread(target=second_checkpoint)
    with db.begin() as tx:  # the first's checkpoint, written but not yet committed
        mine = repo.record_external_id_and_wake(tx, first, BACKEND, "p-shared", first_job,
                                                first_token, 60)
        assert mine.recorded and mine.alive
        other.start()
        deadline = time.monotonic() + 10
        while not answers and not _waiting_on_a_lock(db):
            assert time.monotonic() < deadline, "the second checkpoint neither ran nor waited"
            time.sleep(0.01)
        assert not answers, "the second recorded the id the first was writing"
    other.join(10)
    assert answers == [repo.Checkpoint(recorded=False, alive=False)]
    with db.connect() as conn:
        held = dict(conn.execute(text("SELECT id, external_id FROM attempts")).all())
    assert held == {first: "p-shared", second: None}
