"""A tenant that never called ``PUT /v1/webhooks`` still hears back: its signing secret is made
the first time one is needed (a job with ``webhook_url`` admitted, a delivery due), and
``GET /v1/webhooks/secret`` (or the SDK's ``webhook_secret()``) gives it to the receiver, which
verifies every delivery with it. Real PostgreSQL, Redis, Celery worker and beat, a real HTTP
receiver."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from orchestrator.api import ApiConfig
from orchestrator.client import AsyncClient, Client
from orchestrator.egress import EgressPolicy
from orchestrator.events import endpoints
from orchestrator.events.delivery import Report, WebhookPolicy, deliver_due
from orchestrator.events.endpoints import SigningSecrets, ensure_secret
from orchestrator.notify.signing import verify_signature
from orchestrator.secrets import SecretBox, SecretKeyMissing, new_key
from orchestrator.simulator import RunningSimulator
from orchestrator.store import jobs as repo

from .api_fixture import Api, start_api, video
from .e2e_support import E2E_CATALOGUE, rig_for
from .test_job_webhooks import FAST_RETRIES, Receiver, free_port, start_beat


@pytest.fixture(name="bare")
def bare_fixture(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
                 tmp_path: Path) -> Iterator[tuple[Api, Receiver, Path]]:
    """API, worker and receiver; no tenant has a webhook endpoint or secret; no beat yet."""
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 egress_allow="127.0.0.1/32") as rig:
        rig.env.update(FAST_RETRIES)
        api = start_api(rig, ApiConfig(key_cache_s=0))
        receiver = Receiver(free_port(), secret=None)
        receiver.start()
        try:
            rig.start_worker()
            yield api, receiver, tmp_path
        finally:
            receiver.stop()
            api.close()


def _endpoint_rows(api: Api, tenant: str) -> list[tuple[str | None, str]]:
    with api.rig.engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(text(
            "SELECT url::text, secret::text FROM webhook_endpoints WHERE tenant = :t"),
            {"t": tenant})]


def _deliveries(api: Api, tenant: str = "acme") -> list[dict[str, object]]:
    r = api.tenant(tenant).get("/v1/webhooks/deliveries")
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["items"]
    return items


def test_a_job_webhook_without_any_setup_is_signed_with_the_fetchable_secret(
        bare: tuple[Api, Receiver, Path]) -> None:
    api, receiver, tmp = bare
    assert _endpoint_rows(api, "acme") == []
    r = api.tenant().post("/v1/jobs", json=video(webhook_url=f"{receiver.url}/job/1"))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # admission writes nothing (a refused one must leave nothing): the secret is made when
    # first needed, here by the receiver's fetch, sealed: no URL, the plain secret not stored
    assert _endpoint_rows(api, "acme") == []
    with Client(api.url, api.keys["acme"]) as sdk:
        secret = sdk.webhook_secret()
    [(url, sealed)] = _endpoint_rows(api, "acme")
    assert url is None and "whsec_" not in sealed and "fernet" in sealed
    fetched = api.tenant().get("/v1/webhooks/secret")
    assert fetched.status_code == 200 and fetched.json() == {"tenant": "acme", "secret": secret}
    assert fetched.headers["Cache-Control"] == "no-store"
    assert secret.startswith("whsec_") and len(secret) > 40 and secret not in sealed
    with receiver.lock:
        receiver.secret = secret
    start_beat(api.rig, tmp)
    api.rig.wait_for("the terminal webhook", lambda: len(receiver.unique()) >= 1, timeout=90)
    api.rig.wait_for("the delivery to be recorded",
                     lambda: [d["status"] for d in _deliveries(api)] == ["delivered"], 30)
    # exactly one delivery, the terminal event, verified on receipt with the fetched secret
    [got] = receiver.unique().values()
    assert got.path == "/job/1" and got.event["job_id"] == job_id
    assert got.event["type"] == "job.succeeded"
    assert receiver.rejected == [] and receiver.unverified == []
    assert _endpoint_rows(api, "acme") == [(None, sealed)]  # still the one secret
    shown = api.tenant().get("/v1/webhooks").json()
    assert shown["secret_set"] and not shown["url_set"] and secret not in str(shown)


def test_a_delivery_left_waiting_for_a_secret_goes_out_signed(
        bare: tuple[Api, Receiver, Path]) -> None:
    """What the code before this change left behind: a pending delivery with
    ``no_signing_secret`` and no secret stored. The next delivery run makes the secret and
    sends it; the receiver refuses it until it fetches the secret, then takes it once."""
    api, receiver, tmp = bare
    r = api.tenant().post("/v1/jobs", json=video(webhook_url=f"{receiver.url}/job/old"))
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["id"])
    api.rig.wait_final([job_id])
    with api.rig.engine.begin() as conn:  # as it was before: no secret, the delivery waits
        conn.execute(text("DELETE FROM webhook_endpoints WHERE tenant = 'acme'"))
        conn.execute(text("UPDATE webhook_deliveries SET last_error = 'no_signing_secret', "
                          "attempts = 3 WHERE job_id = :j"), {"j": job_id})
    start_beat(api.rig, tmp)
    # it is sent, signed with a secret made for it, which the receiver does not know yet
    api.rig.wait_for("a signed attempt", lambda: [
        d["last_error"] for d in _deliveries(api)] == ["http_503"], 60)
    [(url, sealed)] = _endpoint_rows(api, "acme")
    secret = api.tenant().get("/v1/webhooks/secret").json()["secret"]
    assert _endpoint_rows(api, "acme") == [(url, sealed)]  # the delivery's secret, not a new one
    with receiver.lock:
        ts, body, sig = receiver.unverified[0]
    assert verify_signature(secret, ts, body, sig, now=time.time())
    with receiver.lock:
        receiver.secret = secret
    api.rig.wait_for("the delivery", lambda: len(receiver.unique()) == 1, timeout=60)
    [got] = receiver.unique().values()
    assert got.event["job_id"] == str(job_id) and got.event["type"] == "job.succeeded"


def test_a_tenant_sees_only_its_own_secret(bare: tuple[Api, Receiver, Path]) -> None:
    api = bare[0]
    acme = api.tenant("acme").get("/v1/webhooks/secret").json()["secret"]
    globex = api.tenant("globex").get("/v1/webhooks/secret").json()["secret"]
    assert acme != globex
    refused = api.tenant("globex").get("/v1/webhooks/secret", params={"tenant": "acme"})
    assert refused.status_code == 403 and acme not in refused.text
    # an admin names the tenant; it gets the same secret, made once
    by_admin = api.admin().get("/v1/webhooks/secret", params={"tenant": "acme"})
    assert by_admin.status_code == 200 and by_admin.json()["secret"] == acme
    bad = api.admin().get("/v1/webhooks/secret", params={"tenant": "no spaces"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "query.tenant"
    assert _endpoint_rows(api, "no spaces") == []
    # PUT with a secret replaces the made one; later reads show the new one
    new = "a-secret-of-my-own-0123456789"
    put = api.tenant("acme").put("/v1/webhooks", json={"url": None, "secret": new})
    assert put.status_code == 200, put.text
    assert api.tenant("acme").get("/v1/webhooks/secret").json()["secret"] == new


def test_a_refused_webhook_job_leaves_no_endpoint_behind(
        bare: tuple[Api, Receiver, Path]) -> None:
    api = bare[0]
    api.budget("tenant:acme", 0)
    r = api.tenant().post("/v1/jobs", json=video(webhook_url="http://127.0.0.1:9/hook"))
    assert r.status_code == 402, r.text
    assert _endpoint_rows(api, "acme") == []
    assert api.tenant().get("/v1/webhooks").status_code == 404  # no endpoint


def test_first_use_at_once_makes_one_secret(bare: tuple[Api, Receiver, Path]) -> None:
    """Eight secret reads for one new tenant and eight webhook jobs for another, each set
    started together: the readers' tenant ends with one secret, the one every reader was
    given; the submitters' admissions write none (their first delivery makes it)."""
    api = bare[0]
    reader_key, submitter_key = api.new_key("initech"), api.new_key("hooli")
    gate = threading.Barrier(16)
    secrets: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def read() -> None:
        with httpx.Client(base_url=api.url, timeout=30,
                          headers={"Authorization": f"Bearer {reader_key}"}) as c:
            gate.wait()
            r = c.get("/v1/webhooks/secret")
        with lock:
            statuses.append(r.status_code)
            secrets.append(r.json()["secret"])

    def submit(i: int) -> None:
        with httpx.Client(base_url=api.url, timeout=30,
                          headers={"Authorization": f"Bearer {submitter_key}"}) as c:
            gate.wait()
            r = c.post("/v1/jobs", json=video(webhook_url=f"http://127.0.0.1:9/{i}"))
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=read) for _ in range(8)]
    threads += [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [200] * 8 + [202] * 8
    assert len(set(secrets)) == 1
    assert len(_endpoint_rows(api, "initech")) == 1 and _endpoint_rows(api, "hooli") == []
    with Client(api.url, reader_key) as sdk:
        assert sdk.webhook_secret() == secrets[0]


def test_the_async_sdk_fetches_the_same_secret(bare: tuple[Api, Receiver, Path]) -> None:
    api = bare[0]
    mine = api.tenant().get("/v1/webhooks/secret").json()["secret"]

    async def go() -> str:
        async with AsyncClient(api.url, api.admin_key) as sdk:
            return await sdk.webhook_secret(tenant="acme")

    assert asyncio.run(go()) == mine


def test_without_a_key_nothing_is_made_and_deliveries_wait_until_there_is_one(
        db: Engine) -> None:
    """No ``ORCH_SECRET_KEY`` and no key file: a secret cannot be stored, so admitting a
    webhook job is refused (``SecretKeyMissing``: 503) and a queued delivery waits, saying
    why; once a key is there the next run makes the secret and sends it, signed."""
    with pytest.raises(SecretKeyMissing):
        SigningSecrets(db, None).check("acme")
    with pytest.raises(SecretKeyMissing), db.begin() as conn:
        ensure_secret(conn, "acme", None)
    receiver = Receiver(free_port(), secret=None)
    receiver.start()
    try:
        with db.begin() as conn:
            now = datetime.now(UTC)
            job = uuid.uuid4()
            repo.insert_job(conn, job_id=job, tenant="acme", kind="text", tier="standard",
                            spec={"kind": "text", "input": {"prompt": "a red kite"},
                                  "webhook_url": f"{receiver.url}/job",
                                  "webhook_events": ["job.queued"]},
                            route={}, estimated_cost_micros=1, deadline_at=now,
                            chain_token=uuid.uuid4(), wake_at=now)
        egress = EgressPolicy("127.0.0.1/32")
        with httpx.Client() as client:
            first = deliver_due(db, egress, None, client, WebhookPolicy(), datetime.now(UTC))
            assert first == Report(retrying=1)
            with db.connect() as conn:
                assert conn.execute(text("SELECT last_error FROM webhook_deliveries")
                                    ).scalar_one() == "secret_key_missing"
                assert conn.execute(text("SELECT count(*) FROM webhook_endpoints")
                                    ).scalar_one() == 0
            box = SecretBox([new_key()])
            later = datetime.now(UTC) + timedelta(hours=1)  # past the backoff
            assert deliver_due(db, egress, box, client, WebhookPolicy(), later).retrying == 1
        with db.connect() as conn:
            assert conn.execute(text("SELECT last_error FROM webhook_deliveries")
                                ).scalar_one() == "http_503"  # sent: the receiver is not set
            ep = endpoints.get(conn, "acme")
        secret = endpoints.open_secret(ep, box)
        assert secret is not None and secret.startswith(endpoints.SECRET_PREFIX)
        [(ts, body, sig)] = receiver.unverified
        assert verify_signature(secret, ts, body, sig, now=time.time())
    finally:
        receiver.stop()
