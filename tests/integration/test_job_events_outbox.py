"""The events outbox at the database: an event is written with the change that causes it, in
its transaction (a rolled-back change leaves none), numbered per job, with the webhook
deliveries its subscriptions ask for; the job's input never appears in an event."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from orchestrator.store import jobs as repo


def _job(conn: Connection, tenant: str, **spec: Any) -> uuid.UUID:
    job_id = uuid.uuid4()
    now = datetime.now(UTC)
    repo.insert_job(conn, job_id=job_id, tenant=tenant, kind="text", tier="standard",
                    spec={"kind": "text", "input": {"prompt": "SECRET-PROMPT"}, **spec},
                    route={}, estimated_cost_micros=2500, deadline_at=now + timedelta(hours=1),
                    chain_token=uuid.uuid4(), wake_at=now)
    return job_id


def _events(db: Engine, job_id: uuid.UUID) -> list[Any]:
    with db.connect() as conn:
        return conn.execute(text("SELECT seq, type, data, tenant FROM job_events "
                                 "WHERE job_id = :j ORDER BY seq"), {"j": job_id}).all()


def _deliveries(db: Engine, job_id: uuid.UUID) -> list[tuple[int, str]]:
    with db.connect() as conn:
        return [(r.seq, r.target) for r in conn.execute(text(
            "SELECT seq, target FROM webhook_deliveries WHERE job_id = :j ORDER BY seq, target"),
            {"j": job_id})]


_END = text("UPDATE jobs SET status = :s, cost_micros = :c, result = CAST(:r AS jsonb), "
            "backend = 'b1', finished_at = now() WHERE id = :j")
_OPEN = text("INSERT INTO attempts (job_id, number, backend) VALUES (:j, :n, :b)")
_CLOSE = text("UPDATE attempts SET outcome = 'failed', error_code = 'http_500', "
              "cost_micros = 0 WHERE job_id = :j AND number = :n")


def test_events_come_with_their_change_and_only_if_it_commits(db: Engine) -> None:
    with db.begin() as conn:
        conn.execute(text("INSERT INTO webhook_endpoints (tenant, url, secret, events) VALUES "
                          "('acme', '{}'::jsonb, '{}'::jsonb, "
                          "'[\"job.started\", \"job.succeeded\"]'::jsonb)"))
        job = _job(conn, "acme", webhook_url="https://93.184.216.34/h",
                   webhook_events=["job.queued", "job.succeeded"])
    assert [(e.seq, e.type) for e in _events(db, job)] == [(1, "job.queued")]
    # a transition rolled back leaves no event (and no delivery)
    with db.connect() as conn, conn.begin() as tx:
        conn.execute(_END, {"j": job, "s": "failed", "c": 0, "r": None})
        assert len(_events(db, job)) == 1  # not visible before commit either
        tx.rollback()
    assert [e.type for e in _events(db, job)] == ["job.queued"]
    with db.begin() as conn:
        conn.execute(_OPEN, {"j": job, "n": 1, "b": "b0"})
    with db.begin() as conn:
        conn.execute(_CLOSE, {"j": job, "n": 1})
        conn.execute(_OPEN, {"j": job, "n": 2, "b": "b1"})
    with db.begin() as conn:
        conn.execute(text("UPDATE attempts SET outcome = 'succeeded', cost_micros = 2000 "
                          "WHERE job_id = :j AND number = 2"), {"j": job})
        conn.execute(_END, {"j": job, "s": "succeeded", "c": 2000,
                            "r": json.dumps({"text": "out"})})
    events = _events(db, job)
    assert [(e.seq, e.type) for e in events] == [
        (1, "job.queued"), (2, "job.started"), (3, "job.failover"), (4, "job.started"),
        (5, "job.succeeded")]
    assert events[2].data == {"from": "b0", "to": "b1", "why": "http_500", "attempt": 2}
    done = events[4].data
    assert done["result"] == {"text": "out"} and done["cost"]["total_micros"] == 2000
    assert [a["backend"] for a in done["cost"]["attempts"]] == ["b0", "b1"]
    assert all(e.tenant == "acme" for e in events)
    assert not any("SECRET-PROMPT" in json.dumps(e.data) for e in events)
    # the job's URL gets what it subscribed to; the tenant's endpoint what it did
    assert _deliveries(db, job) == [(1, "job"), (2, "tenant"), (4, "tenant"), (5, "job"),
                                    (5, "tenant")]
    # a later status change that is not a transition out of a live status writes nothing
    with db.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'failed' WHERE id = :j"), {"j": job})
    assert len(_events(db, job)) == 5


def test_a_job_without_a_webhook_url_queues_no_job_delivery(db: Engine) -> None:
    with db.begin() as conn:
        job = _job(conn, "globex")
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :j"), {"j": job})
    assert [e.type for e in _events(db, job)] == ["job.queued", "job.cancelled"]
    assert _deliveries(db, job) == []
