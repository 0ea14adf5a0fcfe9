"""Where a webhook's secrets could show: the signing secret, a receiver's token in its URL's
path or query, a password in its URL. None reaches an answer but ``GET /v1/webhooks/secret``,
nor a log line; a URL with a user name or password is refused without being echoed."""

from __future__ import annotations

import logging

import pytest

from orchestrator.egress import egress_client
from orchestrator.events.delivery import Report, WebhookPolicy, deliver_due
from orchestrator.ledger.service import utcnow
from orchestrator.notify.base import default_timeout

from .api_fixture import Api, video
from .raw_receiver import RawReceiver, answer
from .test_webhook_crash import api_fixture  # noqa: F401

PASSWORD = "hunter2-pw-7c1d0e"
TOKEN = "tok-5a4b3c2d1e0f"


def test_credentials_and_tokens_in_webhook_urls_are_never_shown_nor_logged(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    t = api.tenant()
    caplog.set_level(logging.INFO)  # as production logs (orchestrator.logs): httpx and
    for noisy in ("httpx", "httpcore"):  # httpcore, which log full URLs, only at WARNING
        caplog.set_level(logging.WARNING, logger=noisy)
    creds = f"https://ops:{PASSWORD}@hooks.example.com/x"
    refusals = [t.post("/v1/jobs", json=video(webhook_url=creds)),
                t.post("/v1/quotes", json=video(webhook_url=creds)),
                t.put("/v1/webhooks", json={"url": creds, "secret": "q" * 24})]
    for r in refusals:
        assert r.status_code == 422, r.text
        assert PASSWORD not in r.text and "ops:" not in r.text
        assert r.json()["error"]["details"]["field"] in ("webhook_url", "url")
    receiver = RawReceiver(lambda sock, _: sock.sendall(answer(
        503, f"down: {TOKEN} {PASSWORD}".encode(), extra=f"X-Echo: {TOKEN}\r\n"))).start()
    try:
        url = f"{receiver.url}/hook/{TOKEN}?sig={TOKEN}"
        assert t.put("/v1/webhooks", json={"url": url, "secret": "q" * 24,
                                           "events": ["job.queued"]}).status_code == 200
        r = t.post("/v1/jobs", json=video(webhook_url=url, webhook_events=["job.queued"]))
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        api.rig.wait_for("the deliveries to be queued", lambda: len(t.get(
            "/v1/webhooks/deliveries").json()["items"]) == 2, timeout=30)
        c = api.rig.container
        with egress_client(default_timeout(2.0)) as http:  # the worker's sending step
            report = deliver_due(c.engine, c.egress, c.secrets, http, WebhookPolicy(), utcnow())
        assert report == Report(retrying=2) and len(receiver.got()) == 2
        shown = [t.get(f"/v1/jobs/{job_id}"), t.get("/v1/jobs"), t.get("/v1/webhooks"),
                 t.get("/v1/webhooks/deliveries"),
                 t.get("/v1/events", params={"since": 0},
                       headers={"Accept": "application/json"})]
        for r in shown:
            assert r.status_code == 200, (r.request.url, r.text)
            assert TOKEN not in r.text and "q" * 24 not in r.text, r.request.url
        endpoint = t.get("/v1/webhooks").json()
        assert endpoint["origin"] == receiver.url and endpoint["last_error"] == "http_503"
    finally:
        receiver.close()
    assert t.get("/v1/webhooks/secret").json()["secret"] == "q" * 24  # the one place
    for what in (PASSWORD, TOKEN, "q" * 24):
        assert what not in caplog.text
