"""Job webhooks against bad receivers, over real sockets and real PostgreSQL: the worker's
own sending step (``deliver_due``) with the worker's own HTTP client (``egress_client``),
against receivers that trickle, stall, redirect, hang up, answer 410 or an endless body, and
a receiver written from the docs' words alone (not from our signing code)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from orchestrator.egress import EgressPolicy, egress_client, post_pinned
from orchestrator.events import endpoints
from orchestrator.events.delivery import (
    FAILING_PROBES,
    Report,
    WebhookPolicy,
    deliver_due,
    deliver_run,
)
from orchestrator.notify.base import default_timeout
from orchestrator.secrets import SecretBox, new_key

from .certs import self_signed
from .raw_receiver import Behaviour, RawReceiver, Request, answer
from .webhook_jobs import insert_job

TIMEOUT_S = 1.0  # ORCH_WEBHOOK_TIMEOUT_S of these tests: one POST's whole time limit
BOX = SecretBox([new_key()])
EGRESS = EgressPolicy("127.0.0.1/32")  # 127.0.0.2 and the rest are not admitted
TOKEN = "tok-9f8e7d6c5b4a"  # in the URL's path: a bearer secret of the receiver's


@pytest.fixture(name="client")
def client_fixture() -> Iterator[httpx.Client]:
    with egress_client(default_timeout(TIMEOUT_S)) as c:
        yield c


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[RawReceiver]:
    r = RawReceiver().start()
    yield r
    r.close()


def _job(db: Engine, url: str, events: tuple[str, ...] = ("job.queued",)) -> uuid.UUID:
    with db.begin() as conn:
        return insert_job(conn, url, events=events)


def _send(db: Engine, client: httpx.Client, at: datetime | None = None) -> Report:
    return deliver_due(db, EGRESS, BOX, client, WebhookPolicy(), at or datetime.now(UTC))


def _rows(db: Engine) -> list[tuple[str, int, str | None]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
            "SELECT status, attempts, last_error FROM webhook_deliveries ORDER BY id"))]


def _later(s: float = 3600) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=s)  # past any backoff, within the window


def trickling(receiver: RawReceiver) -> Behaviour:
    """An answer whose head never ends: a byte every 0.2 s, each before any read timeout,
    for 12 s unless the receiver stops."""
    def trickle(sock: socket.socket, _: Request) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(60):
            if receiver.stop.wait(0.2):
                return
            sock.sendall(b"X")
    return trickle


def test_a_receiver_trickling_its_answer_is_cut_at_the_whole_time_limit(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """Each byte comes before the read timeout, so only a limit on the whole POST ends it:
    without one a worker thread (and its batch) is held as long as the receiver likes."""
    receiver.behave = trickling(receiver)
    _job(db, f"{receiver.url}/hook/{TOKEN}")
    started = time.monotonic()
    assert _send(db, client) == Report(retrying=1)
    took = time.monotonic() - started
    assert took < TIMEOUT_S + 2, f"a {TIMEOUT_S} s limit held the send for {took:.1f} s"
    assert _rows(db) == [("pending", 1, "timeout")]


def _tls_for_loopback(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a certificate of 127.0.0.1."""
    cert_file, key_file = self_signed(tmp, "127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


def test_an_https_receiver_trickling_its_answer_is_cut_at_the_limit_too(
        tmp_path: Path, receiver: RawReceiver) -> None:
    """Over TLS the socket to cut is the TLS one (TLS takes over the TCP socket's
    descriptor): cutting the TCP socket did nothing, and the POST lasted as long as the
    receiver trickled. Receivers must be https in production, and alerts share this POST."""
    receiver.tls, client_tls = _tls_for_loopback(tmp_path)
    receiver.behave = trickling(receiver)
    with egress_client(default_timeout(TIMEOUT_S), verify=client_tls) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post_pinned(client, EGRESS, f"{receiver.url}/hook", b"{}", {})
        took = time.monotonic() - started
    assert took < TIMEOUT_S + 2, f"a {TIMEOUT_S} s limit held the send for {took:.1f} s"
    assert [r.path for r in receiver.got()] == ["/hook"]  # it was sent, over TLS


def test_a_receiver_that_never_answers_is_a_timeout_within_the_limit(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    def silent(sock: socket.socket, _: Request) -> None:
        receiver.stop.wait(30)

    receiver.behave = silent
    _job(db, f"{receiver.url}/hook")
    started = time.monotonic()
    assert _send(db, client) == Report(retrying=1)
    assert time.monotonic() - started < TIMEOUT_S + 2
    assert _rows(db) == [("pending", 1, "timeout")]


def test_a_slow_2xx_is_sent_again_with_the_same_event_id(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """Past the limit the answer is not waited for: the receiver handled it, we retry it;
    it de-duplicates on the event id, which is the same."""
    def slow_once(sock: socket.socket, _: Request) -> None:
        if len(receiver.got()) == 1:
            receiver.stop.wait(TIMEOUT_S + 1)
        sock.sendall(answer(200))

    receiver.behave = slow_once
    _job(db, f"{receiver.url}/hook")
    assert _send(db, client) == Report(retrying=1)
    assert _send(db, client, _later()) == Report(delivered=1)
    first, second = receiver.got()
    assert first.headers["x-orchestrator-event-id"] == second.headers["x-orchestrator-event-id"]
    assert first.body == second.body
    assert _rows(db) == [("delivered", 2, None)]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_fails_the_delivery(
        db: Engine, client: httpx.Client, receiver: RawReceiver, status: int) -> None:
    inside = RawReceiver(host="127.0.0.2").start()  # not admitted by the egress policy
    try:
        receiver.behave = lambda sock, _: sock.sendall(
            answer(status, extra=f"Location: {inside.url}/metadata\r\n"))
        _job(db, f"{receiver.url}/hook")
        assert _send(db, client) == Report(failed=1)
        assert _send(db, client, _later()) == Report()
        assert len(receiver.got()) == 1 and inside.got() == []
        assert _rows(db) == [("failed", 1, f"http_{status}")]
    finally:
        inside.close()


def test_410_gone_fails_at_once_and_is_not_retried(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    receiver.behave = lambda sock, _: sock.sendall(answer(410, b"gone for good"))
    _job(db, f"{receiver.url}/hook")
    assert _send(db, client) == Report(failed=1)
    assert _send(db, client, _later()) == Report()
    assert _rows(db) == [("failed", 1, "http_410")]


def test_a_receiver_hanging_up_mid_request_is_retried(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    def hang_up_once(sock: socket.socket, _: Request) -> None:
        if len(receiver.got()) > 1:
            sock.sendall(answer(200))
        else:
            sock.shutdown(socket.SHUT_RDWR)  # read the request, then gone without a word

    receiver.behave = hang_up_once
    _job(db, f"{receiver.url}/hook")
    assert _send(db, client) == Report(retrying=1)
    [(status, attempts, error)] = _rows(db)
    assert (status, attempts) == ("pending", 1)
    assert error is not None and error.startswith("transport_error")
    assert _send(db, client, _later()) == Report(delivered=1)


def test_an_endless_answer_body_is_never_read_nor_logged(
        db: Engine, client: httpx.Client, receiver: RawReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    pushed: list[int] = []

    def endless(sock: socket.socket, _: Request) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        chunk = b"REMOTE-REPLY-" * 5000
        while not receiver.stop.is_set() and sum(pushed) < 10**9:
            sock.sendall(chunk)  # OSError once the sender has hung up: the point
            pushed.append(len(chunk))

    receiver.behave = endless
    _job(db, f"{receiver.url}/hook")
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        assert _send(db, client) == Report(delivered=1)
        assert time.monotonic() - started < TIMEOUT_S + 2
    assert sum(pushed) < 10**8  # the sender stopped reading at the head
    assert "REMOTE-REPLY" not in caplog.text


def test_one_jobs_failing_delivery_holds_back_its_own_later_events_only(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """The tenant's endpoint refuses job A's events (503) and takes job B's: A's later event
    waits for its earlier one, B's go through meanwhile; A's then arrive in order."""
    failing: set[str] = set()

    def by_job(sock: socket.socket, req: Request) -> None:
        sock.sendall(answer(503 if json.loads(req.body)["job_id"] in failing else 200))

    receiver.behave = by_job
    with db.begin() as conn:
        endpoints.put(conn, "acme", url=f"{receiver.url}/tenant", secret="s" * 20,
                      events=["job.queued", "job.cancelled"], policy=EGRESS, box=BOX)
    a = _job(db, f"{receiver.url}/unused", events=())
    failing.add(str(a))
    b = _job(db, f"{receiver.url}/unused", events=())
    assert _send(db, client) == Report(delivered=1, retrying=1)
    with db.begin() as conn:  # both jobs get a second event
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id IN (:a, :b)"),
                     {"a": a, "b": b})
    assert _send(db, client, _later(60)) == Report(delivered=1, retrying=1)
    sent = [(json.loads(r.body)["job_id"], json.loads(r.body)["seq"]) for r in receiver.got()]
    assert (str(b), 2) in sent and (str(a), 2) not in sent
    failing.clear()
    _send(db, client, _later(3600))
    _send(db, client, _later(3600))
    got_a = [json.loads(r.body)["seq"] for r in receiver.got()
             if json.loads(r.body)["job_id"] == str(a)]
    assert got_a[-2:] == [1, 2] and got_a.count(2) == 1
    assert {s for s, *_ in _rows(db)} == {"delivered"}


def test_one_run_sends_a_jobs_events_one_after_another_not_a_run_apart(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """A job's next event to an endpoint is due only once the one before it was delivered.
    One run of the sender (beat's, every ORCH_WEBHOOK_INTERVAL_S) must send it then, not
    leave it to the next run: a job's terminal event, its third or fifth, came that many
    intervals after it happened. Another tenant's endpoint marked failing still gets its two
    probes a run, not two a batch; and a receiver that is down ends the run at once."""
    receiver.behave = lambda sock, req: sock.sendall(answer(503 if req.path == "/g" else 200))
    with db.begin() as conn:
        endpoints.put(conn, "acme", url=f"{receiver.url}/tenant", secret="s" * 20,
                      events=["job.queued", "job.cancelled"], policy=EGRESS, box=BOX)
        endpoints.put(conn, "globex", url=f"{receiver.url}/g", secret="g" * 20,
                      events=["job.queued"], policy=EGRESS, box=BOX)
        for _ in range(4):
            insert_job(conn, None, tenant="globex")
    assert _send(db, client) == Report(retrying=4)  # globex's endpoint is marked failing
    job = _job(db, f"{receiver.url}/unused", events=())
    with db.begin() as conn:  # its second event, queued behind the first
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :j"), {"j": job})
    at = _later()  # globex's retries are due too
    assert deliver_run(db, EGRESS, BOX, client, WebhookPolicy(), lambda: at, for_s=30) == 4
    got = [(r.path, json.loads(r.body)) for r in receiver.got()]
    assert [(e["job_id"], e["seq"], e["type"]) for path, e in got if path == "/tenant"] == [
        (str(job), 1, "job.queued"), (str(job), 2, "job.cancelled")]
    assert sum(path == "/g" for path, _ in got) == 4 + FAILING_PROBES
    assert [s for s, *_ in _rows(db)].count("delivered") == 2
    receiver.behave = lambda sock, _: sock.sendall(answer(503))
    other = _job(db, f"{receiver.url}/unused", events=())
    with db.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :j"), {"j": other})
    started = time.monotonic()
    assert deliver_run(db, EGRESS, BOX, client, WebhookPolicy(), lambda: datetime.now(UTC),
                       for_s=30) == 1  # its first, to be retried; the second waits for it
    assert time.monotonic() - started < 10


def _docs_receiver(secret: str, req: Request, now: float, seen: set[str]) -> int:
    """docs/api.md "Webhooks", by hand: HMAC-SHA256 with the secret over
    "<timestamp>.<raw body>", hex after "sha256=", compared in constant time; a timestamp
    more than 5 minutes away is refused; a repeat of an event id is already handled."""
    ts = req.headers.get("x-orchestrator-timestamp", "")
    sig = req.headers.get("x-orchestrator-signature", "")
    if not ts.isdigit() or abs(now - int(ts)) > 300 or not sig.startswith("sha256="):
        return 401
    mine = hmac.new(secret.encode(), f"{ts}.".encode() + req.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mine, sig.removeprefix("sha256=")):
        return 401
    event_id = req.headers["x-orchestrator-event-id"]
    if event_id in seen:
        return 200
    seen.add(event_id)
    return 200


def test_a_receiver_written_from_the_docs_verifies_and_refuses_an_old_replay(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    _job(db, f"{receiver.url}/hook")
    with db.begin() as conn:
        secret = endpoints.open_secret(endpoints.ensure_secret(conn, "acme", BOX), BOX)
    assert secret is not None
    seen: set[str] = set()
    receiver.behave = lambda sock, req: sock.sendall(
        answer(_docs_receiver(secret, req, time.time(), seen)))
    assert _send(db, client) == Report(delivered=1)
    [req] = receiver.got()
    event = json.loads(req.body)
    assert req.headers["x-orchestrator-event-id"] == event["id"] and seen == {event["id"]}
    assert req.headers["content-type"] == "application/json"
    assert _docs_receiver(secret, req, time.time() + 301, set()) == 401  # replayed late
    assert _docs_receiver(secret, req, time.time() - 301, set()) == 401  # from the future
    forged = Request(req.head, req.headers, req.body.replace(b"job.", b"jab."))
    assert _docs_receiver(secret, forged, time.time(), set()) == 401
    assert _docs_receiver("x" * 40, req, time.time(), set()) == 401


def test_no_send_starts_after_its_claims_lease_so_a_job_stays_in_order(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """A run whose batch takes longer than its claim's lease (slow receivers ahead in the
    batch) must not send what another run has claimed again since: that run delivers it and
    the job's next event, then the late send arrives after them (seq 1, 2, 1)."""
    held = threading.Event()
    release = threading.Event()

    def hold_first(sock: socket.socket, req: Request) -> None:
        if req.path == "/slow" and not held.is_set():
            held.set()
            release.wait(20)
        sock.sendall(answer(200))

    receiver.behave = hold_first
    _job(db, f"{receiver.url}/slow")  # first in the batch
    j = _job(db, f"{receiver.url}/j", events=("job.queued", "job.cancelled"))
    with db.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :j"), {"j": j})
    rules = WebhookPolicy(lease_s=1.5)
    reports: list[Report] = []
    with egress_client(default_timeout(10.0)) as patient:
        first = threading.Thread(target=lambda: reports.append(deliver_due(
            db, EGRESS, BOX, patient, rules, datetime.now(UTC), max_workers=1)))
        first.start()
        try:
            assert held.wait(10), "the first run never sent"
            since = time.monotonic()
            while time.monotonic() - since < rules.lease_s + 0.5:  # the scenario's clock
                release.wait(0.1)
            for _ in range(3):  # other runs meanwhile, as beat's next ticks would be
                _send(db, client)
        finally:
            release.set()
            first.join(30)
    for _ in range(3):
        _send(db, client, _later())
    seqs = [json.loads(r.body)["seq"] for r in receiver.got() if r.path == "/j"]
    assert seqs == sorted(seqs), f"job j's events arrived as {seqs}"
    assert {s for s, *_ in _rows(db)} == {"delivered"}


def test_a_name_resolving_inside_at_send_time_is_never_called(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """Saved while public, resolving to a private address by the time it is sent (DNS
    rebinding): refused at the send, nothing connected to, and final."""
    answers = {"hooks.rebind.test": [str(receiver.host)]}  # a loopback not admitted here
    rebinding = EgressPolicy("", resolver=lambda host, port: answers[host])
    _job(db, f"http://hooks.rebind.test:{receiver.port}/hook")
    report = deliver_due(db, rebinding, BOX, client, WebhookPolicy(), datetime.now(UTC))
    assert report == Report(failed=1) and receiver.got() == []
    [(status, attempts, error)] = _rows(db)
    assert (status, attempts) == ("failed", 1)
    assert error is not None and error.startswith("egress_refused")
    assert TOKEN not in error and "hooks.rebind.test:" not in error


def test_removing_the_url_fails_what_was_pending_without_marking_the_endpoint_failing(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """``url`` null with deliveries pending: they fail (``endpoint_removed``, nowhere to send
    them), but the endpoint is not failing: no delivery to it can succeed any more, so a mark
    would stay for ever, and an operator watching ``failing_since`` would chase a receiver
    that is not there."""
    receiver.behave = lambda sock, _: sock.sendall(answer(503))
    with db.begin() as conn:
        endpoints.put(conn, "acme", url=f"{receiver.url}/tenant", secret="s" * 20,
                      events=["job.queued"], policy=EGRESS, box=BOX)
    _job(db, f"{receiver.url}/unused", events=())
    assert _send(db, client) == Report(retrying=1)
    with db.begin() as conn:
        shown = endpoints.put(conn, "acme", url=None, secret=None, events=None,
                              policy=EGRESS, box=BOX).view()
    assert shown["failing_since"] is None and shown["last_error"] is None
    assert _send(db, client, _later()) == Report(failed=1)
    assert _rows(db) == [("failed", 2, "endpoint_removed")]
    with db.connect() as conn:
        shown = endpoints.get(conn, "acme").view()  # type: ignore[union-attr]
    assert (shown["url_set"], shown["failing_since"], shown["last_error"]) == (False, None, None)


def test_a_retry_and_a_delivery_are_dated_when_the_attempt_ended_not_when_the_run_began(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """A run's sends take up to its lease (130 s by default) while the backoff starts at 5 s:
    counted from the run's start, a failed attempt's retry was due before the attempt had
    even ended (sent again at once, the receiver's backoff lost), and ``delivered_at`` was
    earlier than the receiver got it."""
    answered: dict[str, float] = {}

    def slow(sock: socket.socket, req: Request) -> None:
        receiver.stop.wait(TIMEOUT_S * 0.6)
        sock.sendall(answer(503 if req.path == "/refuses" else 200))
        answered[req.path] = time.time()

    receiver.behave = slow
    _job(db, f"{receiver.url}/refuses")
    _job(db, f"{receiver.url}/takes")
    rules = WebhookPolicy(backoff_s=0.2, backoff_cap_s=0.2)  # each retry 0.1-0.2 s later
    report = deliver_due(db, EGRESS, BOX, client, rules, datetime.now(UTC), max_workers=1)
    assert report == Report(delivered=1, retrying=1)
    with db.connect() as conn:
        rows = dict(conn.execute(text(
            "SELECT status, COALESCE(delivered_at, next_attempt_at) FROM webhook_deliveries")
        ).all())
    assert rows["pending"].timestamp() >= answered["/refuses"], "retry due before it failed"
    assert rows["delivered"].timestamp() >= answered["/takes"] - 0.05  # its answer, sent


def test_after_a_secret_rotation_the_retries_of_earlier_events_carry_the_new_signature(
        db: Engine, client: httpx.Client, receiver: RawReceiver) -> None:
    """docs/operations.md "Rotating secrets": a delivery claimed after the ``PUT`` is signed
    with the new secret, whatever its event's age; the old one verifies none of it."""
    old, new = "old-secret-0123456789", "new-secret-0123456789"
    with db.begin() as conn:
        endpoints.put(conn, "acme", url=f"{receiver.url}/tenant", secret=old,
                      events=["job.queued"], policy=EGRESS, box=BOX)
    verifies_with = [old]

    def first_down(sock: socket.socket, req: Request) -> None:  # a 401 when it fails to verify
        verdict = _docs_receiver(verifies_with[0], req, time.time(), set())
        sock.sendall(answer(503 if verdict == 200 and len(receiver.got()) == 1 else verdict))

    receiver.behave = first_down
    _job(db, f"{receiver.url}/unused", events=())
    assert _send(db, client) == Report(retrying=1)  # verified with the old one, then a 503
    with db.begin() as conn:
        endpoints.put(conn, "acme", url=endpoints.KEEP, secret=new, events=None,
                      policy=EGRESS, box=BOX)
    verifies_with[0] = new
    assert _send(db, client, _later()) == Report(delivered=1)
    first, second = receiver.got()
    assert _docs_receiver(old, first, time.time(), set()) == 200
    assert _docs_receiver(new, second, time.time(), set()) == 200
    assert _docs_receiver(old, second, time.time(), set()) == 401
