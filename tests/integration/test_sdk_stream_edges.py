"""The SDK's job streams against a small real SSE server that misbehaves as networks and
proxies do: keep-alive comments that never end (the time limit must still hold), and a
connection cut in the middle of a chunked body (the stream resumes with Last-Event-ID)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from orchestrator.cli.main import app as cli_app
from orchestrator.client import ApiError, AsyncClient, Client, JobEvent, WaitTimeout

JOB = "8b0c7d3e-0000-4000-8000-000000000001"
Reply = Callable[["Handler"], None]


def event(seq: int, type_: str) -> dict[str, Any]:
    return {"id": f"ev-{seq}", "type": type_, "job_id": JOB, "tenant": "acme", "seq": seq,
            "created_at": "2026-12-06T10:00:00+00:00", "data": {"backend": "vid-draft"}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SseServer

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Last-Event-ID")))
        if self.path.endswith("/events"):
            self.server.next_reply()(self)
            return
        if self.server.statuses:  # the job's status at each look, in turn
            self.server.job_status = self.server.statuses.pop(0)
        if self.server.job_status is None:
            self.send_json(404, {"error": {"code": "not_found", "message": f"no job {JOB}",
                                           "details": {"job_id": JOB}}})
            return
        self.send_json(200, {"id": JOB, "status": self.server.job_status, "kind": "video",
                             "tier": "draft", "created_at": "2026-12-06T10:00:00+00:00",
                             "finished_at": "2026-12-06T10:00:09+00:00"})

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def send_event(self, ev: dict[str, Any]) -> None:
        self.chunk(f"id: {ev['seq']}\nevent: {ev['type']}\ndata: {json.dumps(ev)}\n\n")

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


class SseServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, replies: list[Reply]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.replies = replies
        self.seen: list[tuple[str, str | None]] = []
        self.job_status: str | None = "running"
        self.statuses: list[str | None] = []
        self.stop = threading.Event()

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def serve() -> Iterator[Callable[[list[Reply]], SseServer]]:
    servers: list[SseServer] = []

    def start(replies: list[Reply]) -> SseServer:
        s = SseServer(replies)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop.set()
        s.shutdown()
        s.server_close()


def pings_forever(h: Handler) -> None:
    """Keep-alive comments every 0.1 s and never an event, as a server does for a job
    that runs on."""
    h.start_stream()
    try:
        while not h.server.stop.wait(0.1):
            h.chunk(": ping\n\n")
    except OSError:  # the client left
        pass


def queued_then_cut(h: Handler) -> None:
    """Event 1, then the connection drops in the middle of the chunked body."""
    h.start_stream()
    h.send_event(event(1, "job.queued"))
    h.connection.shutdown(2)


def started_then_succeeded(h: Handler) -> None:
    h.start_stream()
    h.send_event(event(2, "job.started"))
    h.send_event(event(3, "job.succeeded"))
    h.end_stream()


def cut_at_once(h: Handler) -> None:
    h.start_stream()
    h.connection.shutdown(2)


def test_events_timeout_holds_while_keep_alive_comments_flow(serve: Any) -> None:
    server = serve([pings_forever])
    with Client(server.url, "orch_k") as sdk:
        began = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            for _ in sdk.events(JOB, timeout=1.0):
                pass
        took = time.monotonic() - began
    # unbounded before (each comment restarted httpx's read timeout): ~60 s, or never
    assert 1.0 <= took < 5, took


def test_async_events_timeout_holds_while_keep_alive_comments_flow(serve: Any) -> None:
    server = serve([pings_forever])

    async def go() -> float:
        async with AsyncClient(server.url, "orch_k") as sdk:
            began = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                async for _ in sdk.events(JOB, timeout=1.0):
                    pass
            return time.monotonic() - began

    took = asyncio.run(go())
    assert 1.0 <= took < 5, took  # unbounded before: ~60 s, or never


def test_wait_raises_at_its_timeout_while_the_stream_only_pings(serve: Any) -> None:
    server = serve([pings_forever])
    with Client(server.url, "orch_k") as sdk:
        began = time.monotonic()
        with pytest.raises(WaitTimeout) as info:
            sdk.wait(JOB, timeout=1.0, poll_interval=0.2)
        took = time.monotonic() - began
    assert info.value.job is not None and info.value.job.status == "running"
    assert 1.0 <= took < 5, took  # unbounded before: ~60 s, or never


def test_events_resume_after_a_cut_with_last_event_id(serve: Any) -> None:
    server = serve([queued_then_cut, started_then_succeeded])
    with Client(server.url, "orch_k") as sdk:
        got = [(e.seq, e.type) for e in sdk.events(JOB, timeout=10)]
    assert got == [(1, "job.queued"), (2, "job.started"), (3, "job.succeeded")]
    assert server.seen == [(f"/v1/jobs/{JOB}/events", None),
                           (f"/v1/jobs/{JOB}/events", "1")]


def test_async_events_resume_after_a_cut_with_last_event_id(serve: Any) -> None:
    server = serve([queued_then_cut, started_then_succeeded])

    async def go() -> list[JobEvent]:
        async with AsyncClient(server.url, "orch_k") as sdk:
            return [e async for e in sdk.events(JOB, timeout=10)]

    assert [e.seq for e in asyncio.run(go())] == [1, 2, 3]
    assert [h for _, h in server.seen] == [None, "1"]


def test_events_give_up_after_three_cuts_in_a_row_that_bring_nothing(serve: Any) -> None:
    server = serve([cut_at_once])
    pauses: list[float] = []
    with Client(server.url, "orch_k", sleep=pauses.append) as sdk, pytest.raises(
            httpx.TransportError):
        list(sdk.events(JOB, after=4, timeout=10))
    assert server.seen == [(f"/v1/jobs/{JOB}/events", "4")] * 3
    assert pauses == [0.25, 0.5]  # before each reconnection


def test_watch_decides_by_the_job_when_the_stream_shows_no_end(serve: Any) -> None:
    def ended(h: Handler) -> None:  # --after past the terminal event: nothing left to send
        h.start_stream()
        h.end_stream()

    server = serve([ended])
    server.job_status = "failed"
    runner = CliRunner()
    out = runner.invoke(cli_app, ["jobs", "watch", JOB, "--after", "5", "--api-url",
                                  server.url, "--api-key", "orch_k"])
    assert out.exit_code == 1, out.output
    assert f"job {JOB} failed" in out.output
    server.job_status = "succeeded"
    out = runner.invoke(cli_app, ["jobs", "watch", JOB, "--after", "5", "--api-url",
                                  server.url, "--api-key", "orch_k"])
    assert out.exit_code == 0, out.output


def no_such_route(h: Handler) -> None:
    """What a server older than event streams answers (FastAPI's own 404)."""
    h.send_json(404, {"detail": "Not Found"})


def test_watch_polls_a_server_without_event_streams(serve: Any) -> None:
    server = serve([no_such_route])
    server.statuses = ["running", "running", "succeeded"]
    out = CliRunner().invoke(cli_app, ["jobs", "watch", JOB, "--api-url", server.url,
                                       "--api-key", "orch_k"])
    assert out.exit_code == 0, out.output
    assert "no event streams: polling" in out.output
    assert out.output.rstrip().endswith("2026-12-06T10:00:09+00:00  succeeded"), out.output
    assert [path for path, _ in server.seen] == [
        f"/v1/jobs/{JOB}/events", *[f"/v1/jobs/{JOB}"] * 3]

    server.statuses = ["running", "failed"]
    out = CliRunner().invoke(cli_app, ["jobs", "watch", JOB, "--json", "--api-url",
                                       server.url, "--api-key", "orch_k"])
    assert out.exit_code == 1, out.output
    assert json.loads(out.output.splitlines()[-2])["status"] == "failed", out.output
    assert f"job {JOB} failed" in out.output.splitlines()[-1]


def test_watch_does_not_take_a_404_after_events_for_a_server_without_streams(
        serve: Any) -> None:
    """The stream was there (an event came), then a reconnection got 404: that is an
    answer about the job, not a server older than streams."""
    server = serve([queued_then_cut, no_such_route])
    server.job_status = "succeeded"  # what polling would find, and wrongly end on
    out = CliRunner().invoke(cli_app, ["jobs", "watch", JOB, "--api-url", server.url,
                                       "--api-key", "orch_k"])
    assert out.exit_code == 1, out.output
    assert "job.queued" in out.output and "polling" not in out.output
    assert out.output.strip().splitlines()[-1].startswith("error: "), out.output


def test_watch_of_a_job_that_does_not_exist_says_so_on_a_server_without_streams(
        serve: Any) -> None:
    server = serve([no_such_route])
    server.job_status = None
    out = CliRunner().invoke(cli_app, ["jobs", "watch", JOB, "--api-url", server.url,
                                       "--api-key", "orch_k"])
    assert out.exit_code == 1, out.output
    assert out.output.strip().splitlines()[-1] == f"error: no job {JOB}", out.output
    assert "polling" not in out.output


def a_page(h: Handler) -> None:
    """A 200 that is no event stream: a proxy's or another site's page at a wrong URL."""
    body = b"<html>Welcome</html>"
    # in one write: the client leaves once it has read the head, and a write after that
    # would fail (the server's traceback landing in the CLI's captured output)
    with contextlib.suppress(OSError):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                      b"\r\n%s" % (len(body), body))


def test_a_200_that_is_no_event_stream_is_an_invalid_response_not_a_cut(serve: Any) -> None:
    # httpx-sse's SSEError is an httpx.TransportError: it was taken for a cut connection,
    # asked again three times, and then by `jobs watch` for an outage to wait out
    server = serve([a_page])
    with Client(server.url, "orch_k") as sdk, pytest.raises(ApiError) as info:
        list(sdk.events(JOB, timeout=10))
    assert (info.value.code, info.value.status) == ("invalid_response", 200)
    assert "Welcome" not in str(info.value)

    async def go() -> None:
        async with AsyncClient(server.url, "orch_k") as sdk:
            with pytest.raises(ApiError) as info:
                [e async for e in sdk.events(JOB, timeout=10)]
            assert info.value.code == "invalid_response"

    asyncio.run(go())
    assert [path for path, _ in server.seen] == [f"/v1/jobs/{JOB}/events"] * 2
    # wait() polls instead, as for a stream a proxy refuses
    server.statuses = ["running", "succeeded"]
    with Client(server.url, "orch_k") as sdk:
        assert sdk.wait(JOB, timeout=10, poll_interval=0.05).status == "succeeded"
    began = time.monotonic()
    out = CliRunner().invoke(cli_app, ["jobs", "watch", JOB, "--api-url", server.url,
                                       "--api-key", "orch_k"])
    assert out.exit_code == 1 and time.monotonic() - began < 5, out.output
    assert out.output == (f"error: GET /v1/jobs/{JOB}/events: the server sent no event "
                          "stream; is the API URL right?\n"), out.output


@pytest.fixture()
def unanswered() -> Iterator[str]:
    """The URL of a port whose connections are never set up, as behind a firewall that drops
    packets: a listening socket that never accepts, its queue full, so the kernel drops the
    SYN of any further connection and connect() hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued: list[socket.socket] = []
    try:
        while True:  # queue connections until one hangs
            s = socket.socket()
            s.settimeout(0.3)
            queued.append(s)
            try:
                s.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            assert len(queued) < 20, "the kernel accepts every connection: no hang to test"
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_wait_is_bounded_by_its_timeout_when_the_stream_cannot_connect(
        unanswered: str) -> None:
    with Client(unanswered, "orch_k", retries=0) as sdk:
        began = time.monotonic()
        with pytest.raises(WaitTimeout):
            sdk.wait(JOB, timeout=1.0)
        took = time.monotonic() - began
    # the stream's connect took its own 10 s before: 11 s for a 1 s wait (1 s: the last look)
    assert took < 4, took


def test_async_wait_is_bounded_by_its_timeout_when_the_stream_cannot_connect(
        unanswered: str) -> None:
    async def go() -> float:
        async with AsyncClient(unanswered, "orch_k", retries=0) as sdk:
            began = time.monotonic()
            with pytest.raises(WaitTimeout):
                await sdk.wait(JOB, timeout=1.0)
            return time.monotonic() - began

    took = asyncio.run(go())
    assert took < 4, took


def test_watch_is_bounded_by_its_timeout_when_the_stream_cannot_connect(
        unanswered: str) -> None:
    began = time.monotonic()
    out = CliRunner().invoke(cli_app, ["jobs", "watch", JOB, "--timeout", "1", "--api-url",
                                       unanswered, "--api-key", "orch_k"])
    took = time.monotonic() - began
    assert out.exit_code == 1, out.output
    assert f"job {JOB}: no end within 1 s" in out.output
    assert took < 4, took
