"""The security findings on alert channels and job webhooks, over the real API (HTTP, real
PostgreSQL and Redis) and the real delivery path (a Celery worker process running
``orchestrator.deliver_alerts`` against local HTTP receivers).

1. SSRF: an internal channel URL is refused at save (422 naming the field); one stored anyway
   (an old row) is never called, and a receiver's reply body is never kept or logged;
2. port 99999: 422, nothing committed, and GET /v1/budgets keeps answering; one bad row never
   blocks another alert;
3. secrets are ciphertext in ``budgets.channels`` and decrypt for delivery.

Receivers that are meant to be reached listen on 127.0.0.2, which the API and worker admit
through ORCH_EGRESS_ALLOW; receivers on 127.0.0.1 stand for what must never be reached.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.embedded._ports import free_port
from orchestrator.ledger.budgets import set_budget
from orchestrator.ledger.service import utcnow
from orchestrator.notify.settings import SmtpSettings
from orchestrator.simulator import RunningSimulator
from workers.enqueue import CeleryEnqueue

from .api_fixture import Api, api_fixture, start_api, video  # noqa: F401
from .e2e_support import E2E_CATALOGUE, ROOT, Rig, rig_for
from .test_notify_channels import SECRET, Receiver, serve
from .test_observe_worker import sample, scrape

__all__ = ["serve"]

ALLOWED_HOST = "127.0.0.2"
LIMIT_USD = 10.0
BODY = b"METADATA-CREDENTIALS-0xDEADBEEF"  # what an internal service might answer


@pytest.fixture(name="allowing_api")
def allowing_api_fixture(db: Engine, database_url: str, redis_url: str,
                         e2e_sim: RunningSimulator, tmp_path: Path) -> Iterator[Api]:
    """The API with ORCH_EGRESS_ALLOW=127.0.0.2."""
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 egress_allow=ALLOWED_HOST) as rig:
        a = start_api(rig, ApiConfig(key_cache_s=0))
        try:
            yield a
        finally:
            a.close()


def with_smtp(container: Container) -> None:
    """An SMTP host for the API process of ``container``: without one an email channel is
    refused at save (nothing is sent to it here)."""
    container.smtp = SmtpSettings(smtp_host="mail.example.com")


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


def put_budget(api: Api, channels: list[Any], scope: str = "tenant:acme") -> httpx.Response:
    return api.admin().put("/v1/budgets", json={
        "scope": scope, "period": "month", "limit_usd": LIMIT_USD,
        "alert_thresholds": [1.0], "channels": channels})


def stored_channels(db: Engine) -> dict[str, Any]:
    with db.connect() as conn:
        return {r.scope: r.channels for r in conn.execute(
            text("SELECT scope, channels FROM budgets")).all()}


def spend_it_all(rig: Rig, scope: str) -> uuid.UUID:
    """A job settled at the budget's limit: its 100 % alert."""
    job = uuid.uuid4()
    rig.container.ledger.hold(job, (scope,), int(LIMIT_USD * 1_000_000))
    (alert,) = rig.container.ledger.settle(job, int(LIMIT_USD * 1_000_000)).alert_ids
    return alert


def deliveries(db: Engine) -> dict[tuple[str, int], Any]:
    with db.connect() as conn:
        rows = conn.execute(text(
            "SELECT b.scope, d.channel_index, d.status, d.attempts, d.last_error, d.target, "
            "d.claim_token "
            "FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id "
            "JOIN budgets b ON b.id = a.budget_id")).all()
    return {(r.scope, r.channel_index): r for r in rows}


def all_tried(db: Engine, n: int) -> Callable[[], bool]:
    """``n`` delivery rows, each tried and its outcome recorded (a leased row has a claim
    token until its outcome is written)."""

    def check() -> bool:
        got = deliveries(db).values()
        return len(got) == n and all(d.attempts >= 1 and d.claim_token is None for d in got
                                     if d.status == "pending" or d.attempts)
    return check


def deliver_with_worker(rig: Rig, log_file: Path, done: Callable[[], bool],
                        allow: str = ALLOWED_HOST, metrics_port: int | None = None) -> None:
    """Run ``orchestrator.deliver_alerts`` once in a real worker process (the rig's, logging
    at INFO into ``log_file``, serving its metrics on ``metrics_port``) until ``done``."""
    with log_file.open("ab") as out:
        rig.workers.append(subprocess.Popen(  # the rig stops it with its own
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool",
             "threads", "-c", "2", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-Q", "jobs.normal,maintenance", "--loglevel", "INFO"],
            cwd=ROOT, env={**rig.env, "ORCH_EGRESS_ALLOW": allow, **(
                {"ORCH_WORKER_METRICS_PORT": str(metrics_port)} if metrics_port else {})},
            start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT))
    rig.wait_worker_ready()
    enqueue = rig.container.enqueue
    assert isinstance(enqueue, CeleryEnqueue)
    enqueue.app.send_task("orchestrator.deliver_alerts", queue="maintenance")
    rig.wait_for("the worker's alert delivery", done, timeout=60)


# -- 1. refused at save ------------------------------------------------------------------------


INTERNAL_URLS = [
    "http://127.0.0.1:{port}/hooks/T000/B000/tok3n",
    "https://127.0.0.1:{port}/hooks",
    "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://localhost:{port}/hooks",  # the system resolver (/etc/hosts) says 127.0.0.1
    "https://2130706433:{port}/hooks",
    "https://0x7f.1:{port}/hooks",
    "https://[::1]:{port}/hooks",
    "https://[::ffff:127.0.0.1]:{port}/hooks",
    "https://10.0.0.8/hooks",
    "http://93.184.216.34/hooks",  # public, but plain http
]


def test_internal_channel_urls_are_refused_at_save_naming_the_field(
    api: Api, serve: Callable[..., Receiver],
) -> None:
    with_smtp(api.rig.container)
    inside = serve(reply=BODY)
    port = inside.url.split(":")[2].split("/")[0]
    email = {"type": "email", "to": ["ops@example.com"]}
    for url in INTERNAL_URLS:
        for channel in ({"type": "webhook", "url": url.format(port=port), "secret": SECRET},
                        {"type": "slack", "url": url.format(port=port)}):
            err = _error(put_budget(api, [email, channel]), 422, "invalid_request")
            assert err["details"]["field"] == "channels[1].url", (url, err)
            assert err["message"].startswith("channels[1].url: "), err
            assert "tok3n" not in err["message"] and SECRET not in err["message"]
    assert inside.hits == []  # saving never calls the URL
    assert stored_channels(api.rig.engine) == {}
    assert api.admin().get("/v1/budgets").json() == {"budgets": []}


def test_port_99999_is_422_nothing_is_committed_and_budgets_still_list(api: Api) -> None:
    with_smtp(api.rig.container)
    email = {"type": "email", "to": ["ops@example.com"]}
    assert put_budget(api, [email]).status_code == 200
    before = stored_channels(api.rig.engine)
    for channel in ({"type": "webhook", "url": "https://hooks.example.com:99999/h",
                     "secret": SECRET},
                    {"type": "slack", "url": "https://hooks.example.com:0/h"}):
        r = api.admin().put("/v1/budgets", json={
            "scope": "tenant:acme", "period": "month", "limit_usd": 99.0,
            "channels": [email, channel]})
        err = _error(r, 422, "invalid_request")
        assert err["details"]["field"] == "channels[1].url"
        assert err["message"] == "channels[1].url: port must be between 1 and 65535"
    assert stored_channels(api.rig.engine) == before
    for client in (api.admin(), api.tenant()):
        r = client.get("/v1/budgets")
        assert r.status_code == 200
        assert [b["limit_usd"] for b in r.json()["budgets"]] == [LIMIT_USD]


def test_without_a_key_a_secret_is_never_stored(api: Api, tmp_path: Path) -> None:
    settings = api.rig.container.settings.model_copy(
        update={"secret_key": None, "data_dir": tmp_path / "no-key"})
    container = Container(settings, enqueue=api.rig.container.enqueue)
    with_smtp(container)
    running = start_in_thread(container)
    try:
        with httpx.Client(base_url=running.url, timeout=15,
                          headers={"Authorization": f"Bearer {api.admin_key}"}) as c:
            for channel in ({"type": "webhook", "url": "https://93.184.216.34/h",
                             "secret": SECRET},
                            {"type": "slack", "url": "https://93.184.216.34/services/x"}):
                r = c.put("/v1/budgets", json={"scope": "tenant:acme", "period": "month",
                                               "limit_usd": 5, "channels": [channel]})
                err = _error(r, 503, "secret_key_missing")
                assert "ORCH_SECRET_KEY" in err["message"]
            assert stored_channels(api.rig.engine) == {}
            email = {"type": "email", "to": ["ops@example.com"]}  # nothing secret: fine
            r = c.put("/v1/budgets", json={"scope": "tenant:acme", "period": "month",
                                           "limit_usd": 5, "channels": [email]})
            assert r.status_code == 200, r.text
    finally:
        running.stop()


# -- 2 and 3. delivery by a real worker --------------------------------------------------------


def test_secrets_are_ciphertext_and_an_allowed_receiver_gets_signed_deliveries_no_redirect(
    allowing_api: Api, serve: Callable[..., Receiver], tmp_path: Path,
) -> None:
    api = allowing_api
    hook = serve(host=ALLOWED_HOST, secret=SECRET)
    chat = serve(host=ALLOWED_HOST)
    elsewhere = serve(host=ALLOWED_HOST)
    moved = serve(host=ALLOWED_HOST, always_status=302, location=elsewhere.url)
    channels = [{"type": "webhook", "url": hook.url, "secret": SECRET},
                {"type": "slack", "url": chat.url},
                {"type": "slack", "url": moved.url}]
    r = put_budget(api, channels)
    assert r.status_code == 200, r.text
    assert [c["label"] for c in r.json()["channels"]] == [
        f"webhook {hook.url.rsplit('/hooks', 1)[0]}", f"slack {chat.url.rsplit('/hooks', 1)[0]}",
        f"slack {moved.url.rsplit('/hooks', 1)[0]}"]

    stored = stored_channels(api.rig.engine)["tenant:acme"]
    as_text = str(stored)
    assert SECRET not in as_text and "tok3n" not in as_text and "/hooks" not in as_text
    box = Fernet(api.rig.secret_key.encode())
    assert box.decrypt(stored[0]["secret"]["fernet"].encode()).decode() == SECRET
    assert box.decrypt(stored[1]["url"]["fernet"].encode()).decode() == chat.url

    alert = spend_it_all(api.rig, "tenant:acme")
    log_file = tmp_path / "worker.log"
    port = free_port()
    deliver_with_worker(api.rig, log_file, all_tried(api.rig.engine, 3), metrics_port=port)

    assert [b["alert_id"] for b in hook.accepted] == [str(alert)]  # verified with SECRET
    assert hook.hits[0].headers["Host"] == hook.url.split("/")[2]
    assert len(chat.accepted) == 1
    got = deliveries(api.rig.engine)
    assert (got[("tenant:acme", 0)].status, got[("tenant:acme", 1)].status) == (
        "delivered", "delivered")
    redirected = got[("tenant:acme", 2)]
    assert (redirected.status, redirected.last_error) == ("failed", "http_302")
    assert len(moved.hits) == 1 and elsewhere.hits == []  # the 3xx was not followed
    sent = scrape(port)  # an operator sees the failure without reading tables
    assert {(c, o): sample(sent, "orchestrator_alert_deliveries_total", channel=c, outcome=o)
            for c, o in (("webhook", "delivered"), ("slack", "delivered"),
                         ("slack", "failed"), ("slack", "retrying"))} == {
        ("webhook", "delivered"): 1, ("slack", "delivered"): 1, ("slack", "failed"): 1,
        ("slack", "retrying"): None}
    log = log_file.read_text()
    assert "delivered" in log  # the log is being written ...
    assert SECRET not in log and "tok3n" not in log  # ... without secrets


def test_old_rows_are_never_called_keep_no_reply_body_and_block_no_other_alert(
    allowing_api: Api, serve: Callable[..., Receiver], tmp_path: Path,
) -> None:
    api = allowing_api
    inside = serve(reply=BODY)  # 127.0.0.1: not in the allow list
    failing = serve(host=ALLOWED_HOST, always_status=500, reply=BODY)
    good = serve(host=ALLOWED_HOST, secret=SECRET)
    # rows an older API wrote: plain text, unchecked, and worse
    old_rows: list[Any] = [
        {"type": "webhook", "url": inside.url, "secret": SECRET},
        {"type": "slack", "url": "https://hooks.example.com:99999/services/T/B/tok3n"},
        "not a channel at all",
        {"type": "slack", "url": {"fernet": "not-a-token"}, "key": "slack:0123abcd",
         "origin": "https://hooks.example.com"},
        {"type": "slack", "url": failing.url},
    ]
    with api.rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=10_000_000,
                   now=utcnow(), thresholds_bp=(10000,), channels=old_rows)
    r = put_budget(api, [{"type": "webhook", "url": good.url, "secret": SECRET}],
                   scope="tenant:globex")
    assert r.status_code == 200, r.text

    shown = {b["scope"]: b["channels"] for b in api.admin().get("/v1/budgets").json()["budgets"]}
    assert [c["label"] for c in shown["tenant:acme"]] == [
        f"webhook {inside.url.rsplit('/hooks', 1)[0]}", "invalid channel", "invalid channel",
        "slack https://hooks.example.com", f"slack {failing.url.rsplit('/hooks', 1)[0]}"]

    bad_alert = spend_it_all(api.rig, "tenant:acme")
    good_alert = spend_it_all(api.rig, "tenant:globex")
    log_file = tmp_path / "worker.log"

    deliver_with_worker(api.rig, log_file, all_tried(api.rig.engine, 6))

    assert [b["alert_id"] for b in good.accepted] == [str(good_alert)]
    assert inside.hits == []  # never called
    got = deliveries(api.rig.engine)
    summary = {i: (got[("tenant:acme", i)].status, got[("tenant:acme", i)].last_error)
               for i in range(5)}
    assert summary[0][0] == "failed"
    assert summary[0][1].startswith("egress_refused: 127.0.0.1 is a loopback address")
    assert summary[1] == ("failed", "invalid_channel: channels[1].url: port must be between "
                                    "1 and 65535")
    assert summary[2] == ("failed", "invalid_channel: channels[2]: must be an object")
    assert summary[3] == ("pending", "secret_unreadable")  # retried: a key may be late
    assert summary[4] == ("pending", "http_500")  # retried later; the reply is not kept
    assert len(failing.hits) == 1
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM alerts WHERE id = :id"),
                            {"id": good_alert}).scalar_one() == "delivered"
        assert conn.execute(text("SELECT status FROM alerts WHERE id = :id"),
                            {"id": bad_alert}).scalar_one() == "pending"
        dump = conn.execute(text(
            "SELECT string_agg(d::text, ' ') FROM alert_deliveries d")).scalar_one()
    log = log_file.read_text()
    assert "egress_refused" in log and "http_500" in log  # the failures are logged ...
    for text_ in (dump, log):  # ... and no reply body, secret or token reaches a table or log
        assert BODY.decode() not in text_ and SECRET not in text_ and "tok3n" not in text_

    # the worker (it has the key) sealed the old plain rows on its way
    acme = stored_channels(api.rig.engine)["tenant:acme"]
    assert SECRET not in str(acme) and "tok3n" not in str(acme) and inside.url not in str(acme)
    assert acme[2] == "not a channel at all"


# -- job webhook_url ---------------------------------------------------------------------------


REFUSED_WEBHOOK_URLS = (
    "http://127.0.0.1:9/cb", "https://127.0.0.1/", "https://169.254.169.254/latest/meta-data/",
    "https://2130706433/cb", "https://0x7f.1/cb", "https://localhost/cb",
    "https://[::ffff:10.0.0.1]/cb", "https://hooks.example.com:99999/cb",
    "http://93.184.216.34/cb", "https://0177.0.0.1/", "https://[fec0::1]/cb",
    "https://192.0.0.8/cb")


def test_a_job_webhook_url_is_checked_at_submission_and_quote_alike(api: Api) -> None:
    api.budget("tenant:acme", 100_000_000)
    for url in REFUSED_WEBHOOK_URLS:
        r = api.tenant().post("/v1/jobs", json=video(webhook_url=url))
        err = _error(r, 422, "invalid_request")
        assert err["details"]["field"] == "webhook_url", (url, err)
        assert err["message"].startswith("webhook_url: ")
        quoted = api.tenant().post("/v1/quotes", json=video(webhook_url=url))
        assert _error(quoted, 422, "invalid_request") == err, url  # the same refusal
    octal = api.tenant().post("/v1/jobs", json=video(webhook_url="https://0177.0.0.1/"))
    assert _error(octal, 422, "invalid_request")["message"] == (
        "webhook_url: host is not an IP address in standard form (nor a hostname)")
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM holds")).scalar_one() == 0
    ok = api.tenant().post("/v1/jobs", json=video(webhook_url="https://93.184.216.34/cb"))
    assert ok.status_code == 202, ok.text
    quote = api.tenant().post("/v1/quotes", json=video(webhook_url="https://93.184.216.34/cb"))
    assert quote.status_code == 200, quote.text


def test_a_quote_admits_the_webhook_url_that_orch_egress_allow_admits(
    allowing_api: Api,
) -> None:
    client = allowing_api.tenant()
    allowed = client.post("/v1/quotes", json=video(webhook_url=f"http://{ALLOWED_HOST}:9/cb"))
    assert allowed.status_code == 200, allowed.text
    refused = client.post("/v1/quotes", json=video(webhook_url="http://127.0.0.3:9/cb"))
    assert _error(refused, 422, "invalid_request")["details"]["field"] == "webhook_url"
