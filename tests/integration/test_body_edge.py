"""Request bodies at the API's edge over real sockets: a body the app never reads is bounded in
time and size by the protocol (orchestrator.api.protocol) as one it reads is by the middleware,
and a refusal closes the connection; bodies within the limits keep the connection alive."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from orchestrator.api import ApiConfig
from orchestrator.api.protocol import BODY_GRACE_S, BODY_SLACK_BYTES, edge_protocol
from orchestrator.runtime.serving import ThreadedServer, start_in_thread

from .api_fixture import Api, start_api, video
from .e2e_support import Rig
from .raw_http import closed_by_server, connect, head, read_answer


@contextmanager
def api_with(rig: Rig, **limits: Any) -> Iterator[Api]:
    a = start_api(rig, ApiConfig(key_cache_s=0, **limits))
    try:
        yield a
    finally:
        a.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def jobs_written(api: Api) -> int:
    with api.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


# -- the API: bodies nobody reads ------------------------------------------------------------
def test_an_unread_body_trickled_in_is_cut_by_the_body_timeout(rig: Rig) -> None:
    """GET /healthz never reads its body: connections trickling a declared one a byte at a
    time held the connection cap for as long as they liked. Now each is closed at the body
    deadline (its 200 is already out: just a close), and the cap is free again."""
    with api_with(rig, body_timeout_s=0.5, limit_concurrency=3, timeout_keep_alive_s=30) as api:
        held = [connect(api.url, timeout=8.0) for _ in range(3)]
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.1):  # one byte per connection per tick: the attack's pace
                for sock in held:
                    with suppress(OSError):
                        sock.send(b"x")

        trickler = threading.Thread(target=trickle, daemon=True)
        try:
            for sock in held:
                sock.sendall(head("GET", "/healthz", {"Content-Length": "1000000"}))
                assert read_answer(sock, "healthz, its body unread").status == 200
            trickler.start()
            over = httpx.get(f"{api.url}/healthz")  # the three hold the cap
            assert over.status_code == 503, over.text
            started = time.monotonic()
            for sock in held:
                assert closed_by_server(sock), "a trickled unread body held its connection"
            assert time.monotonic() - started < 0.5 + BODY_GRACE_S + 2.0
            assert httpx.get(f"{api.url}/healthz").status_code == 200
            assert api.tenant().get("/v1/jobs").status_code == 200
        finally:
            stop.set()
            if trickler.is_alive():
                trickler.join(5)
            for sock in held:
                sock.close()


def test_an_endless_chunked_body_to_healthz_is_cut_at_the_size_limit(rig: Rig) -> None:
    """The body timeout is long here: only the byte count can stop the stream. Without it the
    server read and discarded at loopback speed, so 64 MiB went through."""
    with api_with(rig, max_body_bytes=4096, body_timeout_s=60) as api, \
            connect(api.url) as sock:
        sock.sendall(head("GET", "/healthz", {"Transfer-Encoding": "chunked"})
                     + chunk(b"x" * 100))
        assert read_answer(sock, "healthz, a chunked body under way").status == 200
        piece, sent = chunk(b"y" * 16_384), 0
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        else:
            raise AssertionError(f"the server read {sent} body bytes and did not close")
        # what it took, kernel buffers on both ends included: far below the 64 MiB
        assert sent < 32 * 1024 * 1024


# -- the API: bodies the app reads -----------------------------------------------------------
def test_a_chunked_body_over_the_limit_is_413_and_closed(rig: Rig) -> None:
    with api_with(rig, max_body_bytes=4096) as api, connect(api.url) as sock:
        sock.sendall(head("POST", "/v1/jobs", {
            "Authorization": f"Bearer {api.keys['acme']}",
            "Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
        sock.sendall(chunk(b'{"kind": "video", "input": {"prompt": "')
                     + b"".join(chunk(b"z" * 1000) for _ in range(6)))  # and no end
        answer = read_answer(sock, "a chunked body past 4096 bytes")
        assert answer.status == 413, answer
        err = answer.error()
        assert err["code"] == "payload_too_large"
        assert err["details"] == {"max_bytes": 4096}
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock)
    assert jobs_written(api) == 0


def test_bodies_within_the_limits_keep_the_connection(rig: Rig) -> None:
    """Sequential and pipelined requests with bodies on one kept-alive connection; and the
    body deadline of an answered request does not close it later."""
    with api_with(rig, body_timeout_s=0.5, timeout_keep_alive_s=30) as api, \
            connect(api.url) as sock:
        auth = {"Authorization": f"Bearer {api.keys['acme']}",
                "Content-Type": "application/json"}

        def post() -> bytes:
            body = json.dumps(video()).encode()
            return head("POST", "/v1/jobs", {**auth, "Content-Length": str(len(body))}) + body

        sock.sendall(post())
        assert read_answer(sock, "a job").status == 202
        sock.sendall(post() + post())  # pipelined
        assert read_answer(sock, "the first pipelined job").status == 202
        assert read_answer(sock, "the second pipelined job").status == 202
        # the interval under test: past the body deadline of the requests answered above
        time.sleep(0.5 + BODY_GRACE_S + 0.5)
        sock.sendall(head("GET", "/v1/jobs", auth))
        answer = read_answer(sock, "a request after the body deadline")
        assert answer.status == 200 and "connection" not in answer.headers
    assert jobs_written(api) == 3


# -- the protocol under an app without the middleware ----------------------------------------
class BareApp:
    """``/slow`` never reads its body and answers only when the test lets it (then records
    what its ``receive`` saw); ``/drain`` reads its body for ever and never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: queue.Queue[str] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/slow":
            await asyncio.to_thread(self.release.wait, 10)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})
            self.seen.put((await receive())["type"])
            return
        if scope["path"] == "/drain":
            while (await receive())["type"] == "http.request":
                pass
            self.seen.put("http.disconnect")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def bare_server(app: BareApp) -> Iterator[ThreadedServer]:
    protocol = edge_protocol(10.0, 8192, None, body_timeout_s=0.3, max_body_bytes=1024)
    running = start_in_thread(app, name="edge", options={"http": protocol})
    try:
        yield running
    finally:
        app.release.set()
        running.stop()


def test_an_unread_body_before_any_response_is_408_and_later_sends_are_dropped() -> None:
    app = BareApp()
    with bare_server(app) as running, connect(running.url) as sock:
        sock.sendall(head("GET", "/slow", {"Content-Length": "100"}) + b"0123456789")
        answer = read_answer(sock, "a body that stopped after 10 of 100 bytes")
        assert answer.status == 408, answer
        err = answer.error()
        assert err["code"] == "request_timeout" and "0.3 s" in err["message"]
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock)
        app.release.set()  # the app answers now: nothing of it may reach the client
        assert app.seen.get(timeout=10) == "http.disconnect"


def test_a_body_read_past_the_limit_without_the_middleware_is_413() -> None:
    app = BareApp()
    with bare_server(app) as running, connect(running.url) as sock:
        sock.sendall(head("POST", "/drain", {"Transfer-Encoding": "chunked"}))
        total, piece = 0, b"d" * 8192
        while total + len(piece) <= 1024 + BODY_SLACK_BYTES:
            sock.sendall(chunk(piece))
            total += len(piece)
        # the crossing chunk's data, without its closing CRLF: nothing is left unread
        rest = 1024 + BODY_SLACK_BYTES + 1 - total
        sock.sendall(b"%x\r\n" % rest + b"d" * rest)
        answer = read_answer(sock, "a body read past the limit")
        assert answer.status == 413, answer
        err = answer.error()
        assert err["code"] == "payload_too_large" and err["details"] == {"max_bytes": 1024}
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock)
        assert app.seen.get(timeout=10) == "http.disconnect"

