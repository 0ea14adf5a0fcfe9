"""The tenant webhook endpoint's bad input (a clear 422 naming the field, nothing changed),
who may set it, and the per-process cap on open event streams."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx_sse
import pytest
from sqlalchemy import Engine, text

from orchestrator.api import ApiConfig
from orchestrator.events import endpoints
from orchestrator.notify.stored import SEALED
from orchestrator.secrets import SecretBox, new_key
from orchestrator.simulator import RunningSimulator

from .api_fixture import Api, api_fixture, start_api, video  # noqa: F401
from .e2e_support import E2E_CATALOGUE, rig_for

GOOD = {"url": "https://93.184.216.34/hook", "secret": "0123456789abcdef"}


def _field(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    field: str = r.json()["error"]["details"]["field"]
    return field


def test_bad_webhook_input_is_refused_naming_the_field_and_changes_nothing(api: Api) -> None:
    t = api.tenant()
    assert _field(t.put("/v1/webhooks", json={"url": GOOD["url"]})) == "secret"  # first time
    assert _field(t.put("/v1/webhooks", json={**GOOD, "secret": "short"})) == "secret"
    assert _field(t.put("/v1/webhooks", json={**GOOD, "events": ["job.done"]})) == "events[0]"
    assert _field(t.put("/v1/webhooks", json={**GOOD, "url": "http://127.0.0.1/x"})) == "url"
    assert _field(t.put("/v1/webhooks", json={**GOOD, "url": "ftp://x"})) == "url"
    assert t.get("/v1/webhooks").status_code == 404  # nothing was stored
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM webhook_endpoints")).scalar_one() == 0
    bad_job = t.post("/v1/jobs", json=video(webhook_events=["job.nope"]))
    assert _field(bad_job) == "webhook_events[0]"
    # a tenant key sets its own endpoint only; an admin may name any tenant
    assert t.put("/v1/webhooks", json={**GOOD, "tenant": "globex"}).status_code == 403
    made = api.admin().put("/v1/webhooks", json={**GOOD, "tenant": "globex"})
    assert made.status_code == 200, made.text
    shown = api.tenant("globex").get("/v1/webhooks").json()
    assert shown["origin"] == "https://93.184.216.34" and shown["url_set"]
    assert GOOD["secret"] not in made.text and "/hook" not in made.text
    # the secret is kept when left out later; the events change
    again = api.tenant("globex").put("/v1/webhooks", json={"url": None,
                                                           "events": ["job.failed"]})
    assert again.status_code == 200 and again.json()["events"] == ["job.failed"]
    assert again.json()["secret_set"] and not again.json()["url_set"]


def test_put_keeps_what_it_leaves_out_so_a_secret_alone_rotates(api: Api) -> None:
    t = api.tenant()
    set_ = t.put("/v1/webhooks", json={**GOOD, "events": ["job.started", "job.failed"]})
    assert set_.status_code == 200, set_.text
    with api.rig.engine.begin() as conn:  # the endpoint has been failing
        conn.execute(text("UPDATE webhook_endpoints SET failing_since = now(), "
                          "last_error = 'http_500' WHERE tenant = 'acme'"))
    rotated = t.put("/v1/webhooks", json={"secret": "fedcba9876543210"})
    assert rotated.status_code == 200, rotated.text
    shown = rotated.json()
    assert shown["url_set"] and shown["origin"] == "https://93.184.216.34"
    assert shown["events"] == ["job.started", "job.failed"]
    assert shown["last_error"] == "http_500"  # the same URL: still failing until it answers
    assert t.get("/v1/webhooks/secret").json()["secret"] == "fedcba9876543210"
    with api.rig.engine.connect() as conn:
        ep = endpoints.get(conn, "acme")
    assert endpoints.open_url(ep, api.rig.container.secrets) == GOOD["url"]
    moved = t.put("/v1/webhooks", json={"url": "https://93.184.216.35/other"}).json()
    assert moved["origin"] == "https://93.184.216.35" and moved["last_error"] is None
    assert moved["events"] == ["job.started", "job.failed"]
    removed = t.put("/v1/webhooks", json={"url": None}).json()
    assert not removed["url_set"] and removed["events"] == ["job.started", "job.failed"]
    assert _field(t.put("/v1/webhooks", json={"events": None})) == "events"
    assert t.get("/v1/webhooks/secret").json()["secret"] == "fedcba9876543210"


def test_the_secret_route_says_secret_key_missing_when_the_key_is_gone(api: Api) -> None:
    t = api.tenant()
    assert t.get("/v1/webhooks/secret").status_code == 200  # made and stored, sealed
    api.rig.container.__dict__["secrets"] = None  # as an API started without ORCH_SECRET_KEY
    r = t.get("/v1/webhooks/secret")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "secret_key_missing"


def test_a_secret_sealed_with_another_key_is_a_409_naming_the_way_out(api: Api) -> None:
    """As after a restore on a machine without the old secret.key: the stored secret does
    not open; the route says so (not a 500), and a new secret set with PUT works again."""
    t = api.tenant()
    assert t.put("/v1/webhooks", json=GOOD).status_code == 200
    foreign = SecretBox([new_key()]).encrypt(GOOD["secret"])
    with api.rig.engine.begin() as conn:
        conn.execute(text("UPDATE webhook_endpoints SET secret = CAST(:s AS jsonb) "
                          "WHERE tenant = 'acme'"), {"s": json.dumps({SEALED: foreign})})
    r = t.get("/v1/webhooks/secret")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "secret_unreadable" and error["details"] == {"tenant": "acme"}
    assert "ORCH_SECRET_KEY" in error["message"] and "PUT /v1/webhooks" in error["message"]
    assert t.put("/v1/webhooks", json={"secret": "fresh-0123456789"}).status_code == 200
    assert t.get("/v1/webhooks/secret").json()["secret"] == "fresh-0123456789"


@pytest.fixture(name="one_stream_api")
def one_stream_api_fixture(db: Engine, database_url: str, redis_url: str,
                           e2e_sim: RunningSimulator, tmp_path: Path) -> Iterator[Api]:
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 api_max_streams=1) as rig:
        a = start_api(rig, ApiConfig(key_cache_s=0))
        try:
            yield a
        finally:
            a.close()


def test_past_the_stream_cap_a_stream_is_refused_with_retry_after(one_stream_api: Api) -> None:
    api = one_stream_api
    job_id = api.tenant().post("/v1/jobs", json=video()).json()["id"]  # no worker: it waits
    opened, done = threading.Event(), threading.Event()

    def hold() -> None:
        with httpx.Client(base_url=api.url, timeout=httpx.Timeout(10.0, read=60.0),
                          headers={"Authorization": f"Bearer {api.keys['acme']}"}) as c, \
                httpx_sse.connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source:
            for sse in source.iter_sse():
                assert sse.event == "job.queued"
                opened.set()
                done.wait(30)
                return

    holder = threading.Thread(target=hold)
    holder.start()
    assert opened.wait(15)
    refused = api.tenant().get("/v1/events")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "unavailable"
    done.set()
    holder.join(30)
    # the slot is given back when the stream ends
    api.rig.wait_for("the stream's slot to be free", lambda: _readable(api, job_id), 15)


def _readable(api: Api, job_id: str) -> bool:
    """A new stream is admitted again (its first event read, then let go)."""
    with httpx.Client(base_url=api.url, timeout=httpx.Timeout(5.0, read=5.0),
                      headers={"Authorization": f"Bearer {api.keys['acme']}"}) as c, \
            httpx_sse.connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source:
        if source.response.status_code != 200:
            return False
        return next(source.iter_sse()).event == "job.queued"
