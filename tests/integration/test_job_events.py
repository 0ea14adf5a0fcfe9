"""Job events over real HTTP: the tenant feed and job streams (SSE), resumption with
Last-Event-ID, results, and the SDK's wait() on the stream and, when a proxy refuses the
stream, by polling. Real PostgreSQL, Redis, Celery worker processes and the simulator."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import httpx_sse
import pytest
from sqlalchemy import text

from orchestrator.api import RunningApi
from orchestrator.client import AsyncClient, Client

from .api_fixture import PING_S, Api, api_fixture, pinging_fixture, video  # noqa: F401
from .e2e_support import Rig


def _feed(api: Api, out: queue.Queue[Any], ready: threading.Event, stop: threading.Event,
          since: str | None = None) -> None:
    """Read the tenant feed into ``out`` (each SSE) until ``stop``."""
    params = {} if since is None else {"since": since}
    try:
        with api.tenant() as client, httpx_sse.connect_sse(
                client, "GET", "/v1/events", params=params,
                timeout=httpx.Timeout(10.0, read=60.0)) as source:
            assert source.response.status_code == 200
            ready.set()
            for sse in source.iter_sse():
                if not sse.data:
                    continue  # the feed's start: an id alone (test_a_feed_dropped_before_…)
                out.put(sse)
                if stop.is_set():
                    return
    except httpx.TransportError:
        if not stop.is_set():  # the test closed the API under a stream it no longer reads
            raise


def _take(q: queue.Queue[Any], until: Any, timeout: float = 60.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        got.append(q.get(timeout=max(0.1, deadline - time.monotonic())))
    return got


def test_a_feed_opened_before_submission_sees_queued_started_succeeded(api: Api) -> None:
    sut = api.rig
    sut.start_worker()
    out: queue.Queue[Any] = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(target=_feed, args=(api, out, ready, stop), daemon=True)
    reader.start()
    assert ready.wait(15)
    r = api.tenant().post("/v1/jobs", json=video(webhook_events=["job.started"]))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    events = _take(out, lambda got: any(e.event == "job.succeeded" for e in got))
    stop.set()
    mine = [json.loads(e.data) for e in events if json.loads(e.data)["job_id"] == job_id]
    assert [e["type"] for e in mine] == ["job.queued", "job.started", "job.succeeded"]
    assert [e["seq"] for e in mine] == [1, 2, 3]
    assert all(e["tenant"] == "acme" for e in mine)
    # the contract's fields, each event
    assert all({"id", "type", "job_id", "tenant", "seq", "at", "data"} <= e.keys() for e in mine)
    # never the prompt, anywhere in an event
    assert not any("lighthouse" in e.data for e in events)
    # each message's id: is its event's id (the contract's), one per event; its data
    # carries its place in the feed, as a JSON page's items do: that same id (never the
    # feed's counters, which count other tenants' events too)
    assert [e.id for e in events] == [json.loads(e.data)["id"] for e in events]
    assert len({e.id for e in events}) == len(events)
    assert [json.loads(e.data)["cursor"] for e in events] == [e.id for e in events]
    done = mine[-1]["data"]
    assert done["backend"] == mine[1]["data"]["backend"] == "vid-cheap"
    assert done["result"] and done["cost"]["total_micros"] > 0
    assert done["cost"]["attempts"][0]["backend"] == "vid-cheap"
    # the result route says the same as the event, and the job row
    res = api.tenant().get(f"/v1/jobs/{job_id}/result").json()
    assert res["output"] == done["result"]
    assert res["cost"]["total_usd"] == done["cost"]["total_usd"] == sut.job(
        uuid.UUID(job_id)).cost_micros / 1e6
    # a feed resumed from an event's id: gets exactly what came after it
    assert _first_of_feed(api, events[0].id).id == events[1].id
    # and from a JSON page's cursor for it
    page = _json_feed(api, since="0", limit=500)["items"]
    cursor = next(e["cursor"] for e in page if e["id"] == events[0].id)
    assert _first_of_feed(api, cursor).id == events[1].id
    # an id the feed no longer holds (retention deletes the oldest first), or never held
    # (another tenant's): from the feed's oldest event, never a refusal, never theirs
    theirs = api.tenant("globex").post("/v1/jobs", json=video())
    assert theirs.status_code == 202, theirs.text
    foreign = _json_feed(api, "globex", since="0")["items"][0]["id"]
    oldest = _json_feed(api, since="0", limit=1)["items"][0]["id"]
    for unknown in (str(uuid.uuid4()), foreign):
        assert _first_of_feed(api, unknown).id == oldest
    for bad in ("x", "1-", "\u00b2"):  # neither an id nor a cursor
        r = api.tenant().get("/v1/events", params={"since": bad})
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "query.since"


def _first_of_feed(api: Api, since: str) -> Any:
    """The first message of the tenant feed resumed after ``since``."""
    out: queue.Queue[Any] = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    stop.set()  # returns after the first event it reads
    threading.Thread(target=_feed, args=(api, out, ready, stop, since), daemon=True).start()
    return out.get(timeout=15)


def test_a_feed_dropped_before_its_first_event_resumes_from_where_it_began(api: Api) -> None:
    with api.tenant() as client, httpx_sse.connect_sse(
            client, "GET", "/v1/events", timeout=httpx.Timeout(10.0, read=60.0)) as source:
        began = next(source.iter_sse())  # then the connection drops
    # an id and no data: an EventSource takes it as its Last-Event-ID and fires nothing
    assert began.data == "" and began.id
    job_id = api.tenant().post("/v1/jobs", json=video()).json()["id"]  # while it is away
    first = _first_of_feed(api, began.id)  # reconnected as EventSource does
    assert json.loads(first.data)["job_id"] == job_id and first.event == "job.queued"
    # a <txid>-<position> cursor of earlier releases, whatever it names, resumes from the
    # oldest event kept (as an id the feed no longer holds), never refused
    for old in ("1000000000000000-1", "1-1", "99999999999999999999-1"):
        assert _first_of_feed(api, old).id == first.id


def _json_feed(api: Api, tenant: str = "acme", **params: Any) -> dict[str, Any]:
    r = api.tenant(tenant).get("/v1/events", params=params,
                               headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    return r.json()


def test_the_feed_as_json_pages_from_a_cursor_and_answers_at_once(api: Api) -> None:
    start = _json_feed(api)  # no since: nothing yet, and where to poll from
    assert start["items"] == [] and start["next_cursor"]
    ids = [api.tenant().post("/v1/jobs", json=video()).json()["id"] for _ in range(2)]
    deadline = time.monotonic() + 15
    while len(_json_feed(api, since=start["next_cursor"])["items"]) < 2:
        assert time.monotonic() < deadline, "the queued events never showed"
        time.sleep(0.05)
    first = _json_feed(api, since=start["next_cursor"], limit=1)
    second = _json_feed(api, since=first["next_cursor"], limit=1)
    got = first["items"] + second["items"]
    assert [e["job_id"] for e in got] == ids and {e["type"] for e in got} == {"job.queued"}
    assert first["next_cursor"] == first["items"][0]["cursor"]
    assert {"id", "type", "job_id", "tenant", "seq", "at", "data"} <= got[0].keys()
    # nothing after the last: the same cursor back, to poll again
    rest = _json_feed(api, since=second["next_cursor"])
    assert rest == {"items": [], "next_cursor": second["next_cursor"]}
    assert _json_feed(api, "globex", since="0")["items"] == []  # never another tenant's


def _job_stream(api: Api, job_id: str, last: int | str | None, n: int | None) -> list[Any]:
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    got = []
    with api.tenant() as client, httpx_sse.connect_sse(
            client, "GET", f"/v1/jobs/{job_id}/events", headers=headers,
            timeout=httpx.Timeout(10.0, read=60.0)) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            got.append(sse)
            if n is not None and len(got) == n:
                break
    return got


def test_a_job_stream_resumes_with_last_event_id_without_gaps(api: Api) -> None:
    sut = api.rig
    sut.control("vid-cheap", mode="down")  # attempt 1 fails: a failover, two starts
    sut.start_worker()
    job_id = api.tenant().post("/v1/jobs", json=video()).json()["id"]
    first = _job_stream(api, job_id, None, 2)  # then the client goes away
    assert [json.loads(e.data)["seq"] for e in first] == [1, 2]
    rest = _job_stream(api, job_id, first[-1].id, None)  # ends after the terminal one
    seen = first + rest
    data = [json.loads(e.data) for e in seen]
    assert [e.id for e in seen] == [d["id"] for d in data]  # id: is the event's id
    assert [d["seq"] for d in data] == list(range(1, len(seen) + 1))
    assert [e.event for e in seen] == [
        "job.queued", "job.started", "job.failover", "job.started", "job.succeeded"]
    failover = json.loads(seen[2].data)["data"]
    assert failover["from"] == "vid-cheap" and failover["to"] == "vid-mid"
    assert failover["why"] and failover["attempt"] == 2
    # resumed after the terminal event: 204, which stops an EventSource reconnecting (it
    # reconnects after any 200 stream that ends), and the SDK's iteration ends
    done = api.tenant().get(f"/v1/jobs/{job_id}/events",
                            headers={"Last-Event-ID": seen[-1].id})
    assert done.status_code == 204 and done.content == b"", done.text
    with Client(base_url=api.url, api_key=api.keys["acme"]) as sdk:
        assert list(sdk.events(job_id, after=5)) == []
    # resumed after a seq (the id: of earlier releases): what came after it
    assert [e.id for e in _job_stream(api, job_id, 3, None)] == [d["id"] for d in data[3:]]
    # an empty Last-Event-ID is none (an EventSource sends none when its last id was empty)
    assert [e.id for e in _job_stream(api, job_id, "", None)] == [e.id for e in seen]
    # the events table holds the same, once each
    with sut.engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, type FROM job_events WHERE job_id = :j "
                                 "ORDER BY seq"), {"j": job_id}).all()
    assert [(r.seq, r.type) for r in rows] == [(d["seq"], d["type"]) for d in data]
    # another tenant's job is not there
    assert api.tenant("globex").get(f"/v1/jobs/{job_id}/events").status_code == 404
    # resumed after an event's own id (what a webhook receiver has): what came after it
    after_failover = _job_stream(api, job_id, json.loads(seen[2].data)["id"], None)
    assert [json.loads(e.data)["seq"] for e in after_failover] == [4, 5]
    other = api.tenant().post("/v1/jobs", json=video()).json()["id"]
    foreign = json.loads(_job_stream(api, other, None, 1)[0].data)["id"]
    for last in ("x", foreign, "\u00b2".encode("latin-1"), "-1"):  # not of this job's stream
        bad = api.tenant().get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last})
        assert bad.status_code == 422, (last, bad.text)
        assert bad.json()["error"]["details"]["field"] == "header.Last-Event-ID"


def test_a_late_charge_after_the_terminal_event_is_streamed_and_resumable(api: Api) -> None:
    """A cancelled job whose attempt is billed afterwards gets ``job.charged`` after
    ``job.cancelled``: a stream opened later sends both and ends; one resumed after the
    terminal event sends the charge; one resumed after the charge has nothing (204)."""
    job_id = api.tenant().post("/v1/jobs", json=video()).json()["id"]  # no worker: queued
    assert api.tenant().post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    with api.rig.engine.begin() as conn:  # what the ending of an attempt in flight writes
        conn.execute(text("UPDATE jobs SET cost_micros = 123456 WHERE id = :j"), {"j": job_id})
    seen = _job_stream(api, job_id, None, None)
    assert [e.event for e in seen] == ["job.queued", "job.cancelled", "job.charged"]
    charged = json.loads(seen[-1].data)["data"]
    assert charged["status"] == "cancelled"
    assert (charged["cost"]["total_usd"], charged["cost"]["previous_total_usd"]) == (0.123456, 0)
    resumed = _job_stream(api, job_id, seen[1].id, None)
    assert [e.id for e in resumed] == [seen[2].id]
    done = api.tenant().get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": seen[2].id})
    assert done.status_code == 204


def test_a_stream_waits_for_the_charge_of_an_attempt_closed_before_its_conclusion(
        api: Api, pinging: RunningApi) -> None:
    """A failover step closes a cancelled job's attempt with its bill on its own; the
    conclusion that finishes the hold and writes ``job.charged`` is a later step (after a
    crash, the sweeper's). Between the two no attempt is open, yet the charge is to come:
    the stream, and a reconnection, must wait for it."""
    job_id = api.tenant().post("/v1/jobs", json=video()).json()["id"]  # no worker: queued
    assert api.tenant().post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    with api.rig.engine.begin() as conn:  # the hold as that closing leaves it
        conn.execute(text("UPDATE holds SET status = 'held', charged_micros = NULL, "
                          "finished_at = NULL WHERE job_id = :j"), {"j": job_id})
    key = api.keys["acme"]
    live = _Following(pinging.url, key, job_id)
    api.rig.wait_for("the stream to send job.cancelled",
                     lambda: "job.cancelled" in live.types(), 30)
    cancelled = next(e.id for e in live.got if e.event == "job.cancelled")
    resumed = _Following(pinging.url, key, job_id, last=cancelled)
    assert not live.ended.wait(10 * PING_S), "the stream ended before the charge"
    assert resumed.status == 200 and not resumed.ended.is_set()
    with api.rig.engine.begin() as conn:  # the conclusion: the hold finished, the bill
        conn.execute(text("UPDATE jobs SET cost_micros = 123456 WHERE id = :j"), {"j": job_id})
        conn.execute(text("UPDATE holds SET status = 'released', charged_micros = 0, "
                          "finished_at = now() WHERE job_id = :j"), {"j": job_id})
    assert live.ended.wait(30) and resumed.ended.wait(30)
    assert live.types() == ["job.queued", "job.cancelled", "job.charged"]
    assert resumed.types() == ["job.charged"]


class _Following:
    """A job's stream read to its end in a thread, as an EventSource client reads it: each
    message kept, the answer's status, and whether the stream ended on its own."""

    def __init__(self, base_url: str, key: str, job_id: str, last: str | None = None) -> None:
        self.got: list[Any] = []
        self.status: int | None = None
        self.ended = threading.Event()
        headers = {"Authorization": f"Bearer {key}"}
        if last is not None:
            headers["Last-Event-ID"] = last

        def read() -> None:
            try:
                with httpx.Client(base_url=base_url, headers=headers) as client, \
                        httpx_sse.connect_sse(client, "GET", f"/v1/jobs/{job_id}/events",
                                              timeout=httpx.Timeout(10.0, read=60.0)) as src:
                    self.status = src.response.status_code
                    if self.status == 200:
                        for sse in src.iter_sse():
                            self.got.append(sse)
            finally:
                self.ended.set()

        threading.Thread(target=read, daemon=True).start()

    def types(self) -> list[str]:
        return [e.event for e in self.got]


def _created(api: Api, **kw: Any) -> str:
    job_id: str = api.tenant().post("/v1/jobs", json=video(**kw)).json()["id"]
    api.rig.wait_for("the prediction to be created", lambda: any(
        a.external_id for a in api.rig.attempts(uuid.UUID(job_id))), 30)
    return job_id


def test_a_stream_open_across_a_cancel_ends_after_the_late_charge(
        api: Api, pinging: RunningApi) -> None:
    """A job cancelled while its provider works ends at once, and the attempt's bill comes
    afterwards as ``job.charged``. A stream must carry it: one open across the cancel, and
    one resumed after ``job.cancelled`` before the charge (an EventSource reconnects right
    after a stream ends, and stops for good on a 204). Ending at the terminal event, or
    answering 204 after it, lost the charge to every such client. Once the attempt
    concluded, a stream resumed after the charge has nothing: 204."""
    rig = api.rig
    key = api.keys["acme"]
    rig.control("vid-cheap", duration_ms=5000, ignore_cancel=True)  # billed in full, later
    rig.start_worker()
    job_id = _created(api)
    live = _Following(api.url, key, job_id)
    # the SDK's events(), both clients, and so `orchestrator jobs watch`: a late charge too
    by_sdk: dict[str, list[str]] = {}

    def follow_sync() -> None:
        with Client(api.url, key) as client:
            by_sdk["sync"] = [e.type for e in client.events(job_id, timeout=60)]

    async def follow_async() -> None:
        async with AsyncClient(api.url, key) as client:
            by_sdk["async"] = [e.type async for e in client.events(job_id, timeout=60)]

    sdk = [threading.Thread(target=follow_sync),
           threading.Thread(target=lambda: asyncio.run(follow_async()))]
    for t in sdk:
        t.start()
    rig.wait_for("the stream to send job.started", lambda: "job.started" in live.types(), 30)
    assert api.tenant().post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    rig.wait_for("the stream to send job.cancelled",
                 lambda: "job.cancelled" in live.types(), 30)
    cancelled = next(e.id for e in live.got if e.event == "job.cancelled")
    resumed = _Following(api.url, key, job_id, last=cancelled)  # before the charge comes
    assert live.ended.wait(60) and resumed.ended.wait(60)
    assert live.types() == ["job.queued", "job.started", "job.cancelled", "job.charged"]
    assert (resumed.status, resumed.types()) == (200, ["job.charged"])
    for t in sdk:
        t.join(60)
    assert by_sdk == {"sync": live.types(), "async": live.types()}
    charged = json.loads(live.got[-1].data)
    assert charged["data"]["cost"]["total_micros"] == rig.job(uuid.UUID(job_id)).cost_micros
    assert resumed.got[0].id == charged["id"]
    after = api.tenant().get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": charged["id"]})
    assert after.status_code == 204, after.text

    # an attempt that concludes with no bill writes no event: the stream ends all the same
    # (at its next ping, PING_S on this API), with no charge
    rig.control("vid-cheap", duration_ms=60_000, ignore_cancel=False, cancel_bill_fraction=0)
    job_id = _created(api)
    quiet = _Following(pinging.url, key, job_id)
    rig.wait_for("the stream to send job.started", lambda: "job.started" in quiet.types(), 30)
    assert api.tenant().post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert quiet.ended.wait(30)
    assert quiet.types() == ["job.queued", "job.started", "job.cancelled"]
    assert rig.job(uuid.UUID(job_id)).cost_micros == 0


def _terminal_at(sut: Rig, job_id: str) -> datetime:
    with sut.engine.connect() as conn:
        at = conn.execute(text("SELECT created_at FROM job_events WHERE job_id = :j AND type "
                               "IN ('job.succeeded', 'job.failed', 'job.cancelled')"),
                          {"j": job_id}).scalar_one()
    assert isinstance(at, datetime)
    return at


def test_sdk_wait_returns_within_100_ms_of_the_terminal_event_by_the_stream(api: Api) -> None:
    sut = api.rig
    sut.control("vid-cheap", latency_ms=1500)
    sut.start_worker()
    sut.wait_worker_ready()
    counting = Counting()
    with Client(base_url=api.url, api_key=api.keys["acme"], transport=counting) as sdk:
        job = sdk.submit(kind="video", input={"prompt": "fog", "duration_s": 4}, tier="draft")
        done = sdk.wait(job.id, timeout=60, poll_interval=30)  # polling would be 30 s late
        returned = time.time()
    assert done.status == "succeeded"
    lag = returned - _terminal_at(sut, job.id).timestamp()
    assert 0 <= lag < 0.1, lag
    # submit, one stream, one GET of the final job: no polling
    assert counting.paths == ["/v1/jobs", f"/v1/jobs/{job.id}/events", f"/v1/jobs/{job.id}"]


class Counting(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


class RefusingProxy:
    """A tiny HTTP proxy in front of the API that refuses every ``/events`` request (as a
    proxy that buffers or blocks streams would) and forwards the rest."""

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=15.0)
        self.refused = 0
        self.forwarded: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # head and body go out as two writes: without TCP_NODELAY, Nagle and the
            # client's delayed ACK hold every answer back some 40 ms
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if "/events" in self.path:
                    proxy.refused += 1
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._forward("GET", b"")

            def do_POST(self) -> None:
                self._forward("POST", self.rfile.read(int(self.headers["Content-Length"])))

            def _forward(self, method: str, body: bytes) -> None:
                proxy.forwarded.append(f"{method} {self.path}")
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "content-type",
                                            "idempotency-key")}
                r = proxy.upstream.request(method, self.path, content=body, headers=headers)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.sock.close()
        self.server = ThreadingHTTPServer(("127.0.0.1", int(self.url.rsplit(":", 1)[1])),
                                          Handler)
        self.server.serve_forever()

    def close(self) -> None:
        self.server.shutdown()
        self.upstream.close()


@pytest.fixture()
def refusing_proxy(api: Api) -> Iterator[RefusingProxy]:
    p = RefusingProxy(api.url)
    deadline = time.monotonic() + 10
    while not hasattr(p, "server"):
        assert time.monotonic() < deadline
        time.sleep(0.01)  # until its thread has bound the port again
    yield p
    p.close()


def test_sdk_wait_falls_back_to_polling_when_the_stream_is_blocked(
        api: Api, refusing_proxy: RefusingProxy) -> None:
    sut = api.rig
    sut.control("vid-cheap", latency_ms=1500)
    sut.start_worker()
    sut.wait_worker_ready()
    with Client(base_url=refusing_proxy.url, api_key=api.keys["acme"], retries=0) as sdk:
        job = sdk.submit(kind="video", input={"prompt": "fog", "duration_s": 4}, tier="draft")
        done = sdk.wait(job.id, timeout=60, poll_interval=0.01, max_poll_interval=0.01)
        returned = time.time()
    assert done.status == "succeeded"
    assert refusing_proxy.refused >= 1  # the stream was tried, and refused
    polls = [f for f in refusing_proxy.forwarded if f == f"GET /v1/jobs/{job.id}"]
    assert len(polls) >= 2  # it polled
    lag = returned - _terminal_at(sut, job.id).timestamp()
    assert 0 <= lag < 0.1, lag


class AsyncCounting(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


def test_async_sdk_wait_follows_the_stream_too(api: Api) -> None:
    sut = api.rig
    sut.control("vid-cheap", latency_ms=1000)
    sut.start_worker()
    sut.wait_worker_ready()
    counting = AsyncCounting()

    async def go() -> tuple[str, float, str]:
        async with AsyncClient(base_url=api.url, api_key=api.keys["acme"],
                               transport=counting) as sdk:
            job = await sdk.submit(kind="video", input={"prompt": "fog", "duration_s": 4},
                                   tier="draft")
            done = await sdk.wait(job.id, timeout=60, poll_interval=30)
            return job.id, time.time(), done.status

    job_id, returned, status = asyncio.run(go())
    assert status == "succeeded"
    assert 0 <= returned - _terminal_at(sut, job_id).timestamp() < 0.1
    assert counting.paths == ["/v1/jobs", f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}"]


def test_a_stream_gets_its_events_across_a_dropped_listen_connection(api: Api) -> None:
    sut = api.rig
    job_id = api.tenant().post("/v1/jobs", json=video()).json()["id"]  # no worker: queued
    got: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        with api.tenant() as client, httpx_sse.connect_sse(
                client, "GET", f"/v1/jobs/{job_id}/events",
                timeout=httpx.Timeout(10.0, read=60.0)) as source:
            for sse in source.iter_sse():  # the stream ends after the terminal event
                got.put(sse.event)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert got.get(timeout=15) == "job.queued"
    # the API's LISTEN connection is cut (a PostgreSQL restart, a proxy timeout)
    listeners = text("SELECT pid FROM pg_stat_activity WHERE application_name = "
                     "'orchestrator-events' AND query LIKE 'LISTEN %' "
                     "AND datname = current_database()")

    def listening() -> list[Any]:
        with sut.engine.connect() as conn:
            return list(conn.execute(listeners).scalars())

    sut.wait_for("the API to listen", lambda: bool(listening()), timeout=15)
    with sut.engine.connect() as conn:
        for pid in listening():
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    # the job ends while nobody listens, or just after: the stream gets it either way
    assert api.tenant().post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert got.get(timeout=15) == "job.cancelled"
    # and the stream ends, before the test's clients are closed under its reader
    reader.join(timeout=15)
    assert not reader.is_alive()
