"""Redelivering webhooks: a delivery the receiver refused for good, or that ran out of its
retry window, is sent again once the consumer asks (``POST /v1/webhooks/deliveries/{id}/
redeliver``, ``…/redeliver-failed``). Real PostgreSQL, Redis, Celery worker and beat, a real
HTTP receiver that verifies every signature."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from sqlalchemy import Connection, Engine, text
from typer.testing import CliRunner

from orchestrator.client import Client
from orchestrator.client import Conflict as ConflictError
from orchestrator.egress import EgressPolicy
from orchestrator.errors import Conflict, NotFound
from orchestrator.events.delivery import Report, WebhookPolicy, deliver_due
from orchestrator.events.redelivery import requeue
from orchestrator.secrets import SecretBox, new_key
from orchestrator.simulator import RunningSimulator

from .api_fixture import Api, video
from .test_job_webhooks import SECRET, TERMINAL, Receiver, free_port, hooked
from .webhook_jobs import insert_job

WRONG = "not-the-secret-0123456789"  # the receiver refuses every signature: 401, for good


@pytest.fixture(name="refusing")
def refusing_fixture(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
                     tmp_path: Path) -> Iterator[tuple[Api, Receiver]]:
    """API, worker, beat; acme's endpoint is a receiver that verifies with the wrong
    secret, so it answers every delivery 401 until the test gives it the right one."""
    with hooked(db, database_url, redis_url, e2e_sim, tmp_path, verifies_with=WRONG,
                events=TERMINAL) as hooks:
        yield hooks


def _deliveries(api: Api, **params: Any) -> list[dict[str, Any]]:
    r = api.tenant().get("/v1/webhooks/deliveries", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _submit(api: Api, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        r = api.tenant().post("/v1/jobs", json=video())
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    api.rig.wait_final([uuid.UUID(j) for j in ids], timeout=60)
    return ids


def _all_failed(api: Api, n: int) -> list[dict[str, Any]]:
    def failed() -> bool:
        return len(_deliveries(api, status="failed")) == n
    api.rig.wait_for(f"{n} deliveries to fail for good", failed, timeout=60)
    return _deliveries(api, status="failed")


def test_a_refused_delivery_is_sent_again_once_the_receiver_is_fixed(
        refusing: tuple[Api, Receiver]) -> None:
    api, receiver = refusing
    [job] = _submit(api, 1)
    [failed] = _all_failed(api, 1)
    assert failed["job_id"] == job and failed["last_error"] == "http_401"
    assert failed["requeued_at"] is None and receiver.accepted == []

    missing = api.tenant().post("/v1/webhooks/deliveries/987654321/redeliver")
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"]["code"] == "not_found"
    other = api.tenant("globex").post(f"/v1/webhooks/deliveries/{failed['id']}/redeliver")
    assert other.status_code == 404  # another tenant's delivery is not there for it
    assert api.tenant().post("/v1/webhooks/deliveries/x/redeliver").status_code == 422

    receiver.secret = SECRET  # the receiver is fixed
    r = api.tenant().post(f"/v1/webhooks/deliveries/{failed['id']}/redeliver")
    assert r.status_code == 202, r.text
    again = r.json()
    assert again["id"] == failed["id"] and again["attempts"] == 0
    assert again["status"] in ("pending", "delivered")  # beat may be quick
    assert again["requeued_at"] is not None

    def delivered() -> bool:
        [d] = _deliveries(api)
        return d["status"] == "delivered"
    api.rig.wait_for("the redelivery", delivered, timeout=30)
    [got] = receiver.accepted
    assert got.event["id"] == failed["event_id"] and got.event["type"] == "job.succeeded"

    # a delivered one may be asked for again (a receiver that lost it): the same event id,
    # signed anew, which the receiver de-duplicates. Signed within the same second, the copy
    # would be the same bytes, which this receiver refuses as a replay (409, for good)
    sent_at = int(got.headers["X-Orchestrator-Timestamp"])
    api.rig.wait_for("the next second", lambda: time.time() >= sent_at + 1, timeout=5)
    r = api.admin().post(f"/v1/webhooks/deliveries/{failed['id']}/redeliver",
                         params={"tenant": "acme"})
    assert r.status_code == 202, r.text
    api.rig.wait_for("the second copy", lambda: len(receiver.accepted) == 2, timeout=30)
    assert {r.event["id"] for r in receiver.accepted} == {failed["event_id"]}
    assert len(receiver.unique()) == 1


def test_every_failed_delivery_is_requeued_at_once_and_a_pending_one_is_a_conflict(
        refusing: tuple[Api, Receiver]) -> None:
    api, receiver = refusing
    jobs = _submit(api, 3)
    failed = _all_failed(api, 3)
    receiver.stop()  # down now: the requeued ones stay pending, failing to connect
    receiver.secret = SECRET

    none = api.tenant("globex").post("/v1/webhooks/deliveries/redeliver-failed")
    assert none.status_code == 200 and none.json() == {"requeued": 0}
    one = api.tenant().post("/v1/webhooks/deliveries/redeliver-failed",
                            params={"job_id": jobs[0]})
    assert one.status_code == 200 and one.json() == {"requeued": 1}
    rest = api.tenant().post("/v1/webhooks/deliveries/redeliver-failed")
    assert rest.status_code == 200 and rest.json() == {"requeued": 2}

    def retrying() -> bool:
        items = _deliveries(api, status="pending")
        return len(items) == 3 and all(d["last_error"] == "connect_failed" for d in items)
    api.rig.wait_for("the requeued deliveries to be tried", retrying, timeout=30)
    busy = api.tenant().post(f"/v1/webhooks/deliveries/{failed[0]['id']}/redeliver")
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "conflict"

    receiver.start()

    def all_delivered() -> bool:
        return len(_deliveries(api, status="delivered")) == 3
    api.rig.wait_for("every requeued delivery", all_delivered, timeout=60)
    assert {e.event["job_id"] for e in receiver.unique().values()} == set(jobs)
    assert len(receiver.unique()) == 3


def test_the_cli_and_the_sdk_list_and_redeliver(refusing: tuple[Api, Receiver],
                                                cli: typer.Typer) -> None:
    api, receiver = refusing
    jobs = _submit(api, 2)
    _all_failed(api, 2)

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["webhooks", *args, "--api-url", api.url,
                                          "--api-key", api.keys["acme"]])
        assert result.exit_code == 0, result.output
        return result.output

    listed = run("deliveries", "--status", "failed")
    assert listed.count("http_401") == 2 and all(j in listed for j in jobs)
    with Client(api.url, api.keys["acme"]) as sdk:
        page = sdk.webhook_deliveries(status="failed", job_id=jobs[0])
        [first] = page.items
        assert (first.job_id, first.status, first.event_type) == (jobs[0], "failed",
                                                                   "job.succeeded")
        receiver.stop()  # down: what is requeued stays pending
        receiver.secret = SECRET
        assert "queued again" in run("redeliver", str(first.id))

        def tried() -> bool:
            [d] = sdk.webhook_deliveries(job_id=jobs[0]).items
            return d.status == "pending" and d.last_error == "connect_failed"
        api.rig.wait_for("the redelivery to be tried", tried, timeout=30)
        with pytest.raises(ConflictError):
            sdk.redeliver(first.id)
        assert run("redeliver-failed", "--job", jobs[1], "--json").strip() == \
            '{\n  "requeued": 1\n}'
    bad = CliRunner().invoke(cli, ["webhooks", "redeliver-failed", "--job", "nope",
                                   "--api-url", api.url, "--api-key", api.keys["acme"]])
    assert bad.exit_code == 2 and "not a job id" in bad.output
    receiver.start()
    api.rig.wait_for("both delivered",
                     lambda: len(_deliveries(api, status="delivered")) == 2, timeout=60)
    assert {r.event["job_id"] for r in receiver.unique().values()} == set(jobs)


def _job_with_an_unreachable_url(conn: Connection, now: datetime) -> None:
    """A job whose job.queued goes to its own webhook_url, where nothing listens: every
    attempt fails to connect (transient)."""
    insert_job(conn, f"http://127.0.0.1:{free_port()}/job", now=now)


def test_a_redelivered_old_event_gets_a_fresh_retry_window(db: Engine) -> None:
    """The retry window counts from the redelivery, not from the event: else an event older
    than the window would fail for good at its first failed attempt after a redelivery."""
    born = datetime.now(UTC)
    with db.begin() as conn:
        _job_with_an_unreachable_url(conn, born)
        delivery = conn.execute(text("SELECT id FROM webhook_deliveries")).scalar_one()
    rules = WebhookPolicy(retry_window_s=60)
    egress, box = EgressPolicy("127.0.0.1/32"), SecretBox([new_key()])
    with httpx.Client() as client:
        late = born + timedelta(seconds=120)  # past the window: failed at the first failure
        assert deliver_due(db, egress, box, client, rules, late) == Report(failed=1)
        with pytest.raises(NotFound), db.begin() as conn:
            requeue(conn, "globex", delivery, late)
        later = late + timedelta(seconds=60)
        with db.begin() as conn:
            assert requeue(conn, "acme", delivery, later) == "failed"
        with pytest.raises(Conflict), db.begin() as conn:
            requeue(conn, "acme", delivery, later)
        assert deliver_due(db, egress, box, client, rules, later) == Report(retrying=1)
        with db.connect() as conn:
            row = conn.execute(text("SELECT status, attempts, last_error, next_attempt_at, "
                                    "requeued_at FROM webhook_deliveries")).one()
        assert (row.status, row.attempts, row.last_error) == ("pending", 1, "connect_failed")
        assert row.requeued_at == later and row.next_attempt_at > later
        # and the window, counted from the redelivery, still ends
        assert deliver_due(db, egress, box, client, rules,
                           later + timedelta(seconds=120)) == Report(failed=1)


def test_a_backoff_past_the_window_is_cut_to_one_last_try_at_its_end(db: Engine) -> None:
    """A receiver that asks for more time than the window has left (Retry-After), or a
    backoff that long, gets one last try at the window's end, not a failure at once."""
    with db.begin() as conn:
        _job_with_an_unreachable_url(conn, datetime.now(UTC))
        born = conn.execute(text("SELECT created_at FROM job_events")).scalar_one()
    # the first backoff (5-10 s) ends past a 60 s window's end when tried at 58 s
    rules = WebhookPolicy(retry_window_s=60, backoff_s=5, backoff_cap_s=600)
    egress, box = EgressPolicy("127.0.0.1/32"), SecretBox([new_key()])
    with httpx.Client() as client:
        at = born + timedelta(seconds=58)
        assert deliver_due(db, egress, box, client, rules, at) == Report(retrying=1)
        with db.connect() as conn:
            nxt = conn.execute(text("SELECT next_attempt_at FROM webhook_deliveries")
                               ).scalar_one()
        assert nxt == born + timedelta(seconds=60)
        # the last try, at the window's end, fails for good
        assert deliver_due(db, egress, box, client, rules, nxt) == Report(failed=1)
