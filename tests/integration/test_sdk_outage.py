"""The SDK and the CLI while the API is down or restarting: the real API over real HTTP,
stopped (its port refuses connections) under a waiting client and started again on the same
port, as a restart or a deploy does. The job runs on meanwhile, so a wait rides the outage
out within its timeout, and nothing makes a second job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import typer
from sqlalchemy import text
from typer.testing import CliRunner

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.client import AsyncClient, Client, Job, RetryPolicy

from ..conditions import wait_for
from .api_fixture import Api, api_fixture, video  # noqa: F401

SUBMIT = ("submit", "--kind", "video", "--prompt", "a lighthouse at dusk", "--tier", "draft",
          "--param", "duration_s=4")
# a poll's retries spent within a fraction of a second, so a short outage outlasts them
QUICK = RetryPolicy(retries=1, base=0.05, cap=0.1)


def _jobs(api: Api, tenant: str = "acme") -> int:
    with api.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs WHERE tenant = :t"),
                                {"t": tenant}).scalar_one())


class Seen:
    """What a client's transport met: polls of the job (``GET /v1/jobs/{id}``) answered, and
    those that got no answer."""

    def __init__(self, job_id: str) -> None:
        self.poll_path = f"/v1/jobs/{job_id}"
        self.polls = 0
        self.failed_polls = 0
        self.lock = threading.Lock()

    def answered(self, request: httpx.Request, response: httpx.Response) -> None:
        if request.url.path == self.poll_path:
            with self.lock:
                self.polls += 1

    def refused(self, request: httpx.Request) -> None:
        if request.url.path == self.poll_path:
            with self.lock:
                self.failed_polls += 1


class Recording(httpx.HTTPTransport):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except httpx.TransportError:
            self.seen.refused(request)
            raise
        self.seen.answered(request, response)
        return response


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError:
            self.seen.refused(request)
            raise
        self.seen.answered(request, response)
        return response


@pytest.fixture()
def queued(api: Api) -> Iterator[Job]:
    """A job that stays queued (no worker here) until the test cancels it."""
    with Client(api.url, api.keys["acme"]) as c:
        yield c.submit(**video())


def _ride_out(api: Api, job: Job, seen: Seen, outcome: dict[str, Any],
              waiting: threading.Thread, stream: bool) -> None:
    """Down under the wait: from its start with ``stream`` (its stream refused, it polls),
    else once a poll has answered; up again once it polled on after a failed poll (each poll
    is two tries); then the job ends, and the wait returns it."""
    port = httpx.URL(api.url).port
    if stream:
        api.running.stop()
        waiting.start()
    else:
        waiting.start()
        wait_for("a poll to answer", lambda: seen.polls >= 1 or bool(outcome))
        api.running.stop()
    try:
        wait_for("a wait that found the API down to poll on",
                 lambda: seen.failed_polls >= 4 or bool(outcome), timeout=30)
        assert outcome == {}, f"the wait ended while the API was down: {outcome!r}"
    finally:
        api.running = start_in_thread(api.rig.container, config=ApiConfig(key_cache_s=0),
                                      port=port or 0)
    with Client(api.url, api.keys["acme"]) as c:
        assert c.cancel(job.id).status == "cancelled"
    waiting.join(30)
    assert not waiting.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["job"].id == job.id and outcome["job"].status == "cancelled"
    assert _jobs(api) == 1


@pytest.mark.parametrize("stream", [True, False])
def test_wait_rides_out_an_api_restart(api: Api, queued: Job, stream: bool) -> None:
    seen = Seen(queued.id)
    outcome: dict[str, Any] = {}
    sdk = Client(api.url, api.keys["acme"], transport=Recording(seen), retry_policy=QUICK)

    def wait() -> None:
        try:
            outcome["job"] = sdk.wait(queued.id, timeout=60, poll_interval=0.2,
                                      max_poll_interval=0.5, stream=stream)
        except Exception as exc:  # the test reads it
            outcome["error"] = exc

    try:
        _ride_out(api, queued, seen, outcome, threading.Thread(target=wait, daemon=True),
                  stream)
    finally:
        sdk.close()


@pytest.mark.parametrize("stream", [True, False])
def test_async_wait_rides_out_an_api_restart(api: Api, queued: Job, stream: bool) -> None:
    seen = Seen(queued.id)
    outcome: dict[str, Any] = {}

    async def go() -> None:
        async with AsyncClient(api.url, api.keys["acme"], transport=AsyncRecording(seen),
                               retry_policy=QUICK) as sdk:
            outcome["job"] = await sdk.wait(queued.id, timeout=60, poll_interval=0.2,
                                            max_poll_interval=0.5, stream=stream)

    def wait() -> None:
        try:
            asyncio.run(go())
        except Exception as exc:  # the test reads it
            outcome["error"] = exc

    _ride_out(api, queued, seen, outcome, threading.Thread(target=wait, daemon=True), stream)


# -- the CLI ----------------------------------------------------------------------------------

class Relay:
    """A TCP relay in front of the API, one request per connection (``Connection: close`` is
    put in each), recording each request line; a request ``lose`` picks is sent to the API,
    its answer read, and the client's connection closed without it (an answer lost on the
    way back, the job made all the same). ``down()`` cuts every connection and closes each
    new one at once, as a load balancer with no API behind it; ``up()`` ends that."""

    def __init__(self, upstream: str, lose: Callable[[str], bool] = lambda _: False) -> None:
        url = httpx.URL(upstream)
        self.upstream = (url.host, url.port or 80)
        self.lose = lose
        self.lines: list[str] = []
        self.refused = 0
        self.is_down = False
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        with self.lock:
            self.is_down = True
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        with self.lock:
            self.is_down = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                if self.is_down:
                    self.refused += 1
                    client.close()
                    continue
                self.open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            with client, socket.create_connection(self.upstream) as api:
                with self.lock:
                    self.open.add(api)
                self._relay(client, api)
        except OSError:  # cut by down()
            pass
        finally:
            with self.lock:
                self.open.discard(client)

    def _relay(self, client: socket.socket, api: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(h.split(":", 1)[1]) for h in lines[1:]
                       if h.lower().startswith("content-length:")), 0)
        while len(body) < length:
            body += client.recv(65536)
        self.lines.append(lines[0])
        kept = [h for h in lines if not h.lower().startswith("connection:")]
        api.sendall("\r\n".join([*kept, "Connection: close", "", ""]).encode("latin-1") + body)
        lost = self.lose(lines[0])
        while chunk := api.recv(65536):
            if not lost:
                client.sendall(chunk)

    def close(self) -> None:
        self.down()
        self.listener.close()


def test_submit_whose_answer_is_lost_names_the_key_that_gets_its_job(
        api: Api, cli: typer.Typer) -> None:
    relay = Relay(api.url, lose=lambda line: line.startswith("POST /v1/jobs "))
    try:
        out = CliRunner().invoke(cli, [*SUBMIT, "--api-url", relay.url,
                                       "--api-key", api.keys["acme"]])
    finally:
        relay.close()
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    [line] = out.stderr.strip().splitlines()
    # every try (the SDK's retries) sent the same key: the API made one job and replayed it
    assert len(relay.lines) == 4 and _jobs(api) == 1, relay.lines
    said = re.fullmatch(
        rf"error: cannot reach {relay.url}: .+ \(the job may have been made all the same; run "
        r"the same command with --idempotency-key (\S+) to get it rather than a second job\)",
        line)
    assert said is not None, line
    key = said.group(1)
    again = CliRunner().invoke(cli, [*SUBMIT, "--idempotency-key", key, "--json",
                                     "--api-url", api.url, "--api-key", api.keys["acme"]])
    assert again.exit_code == 0, again.output
    with api.rig.engine.connect() as conn:
        [made] = conn.execute(text("SELECT id FROM jobs WHERE tenant = 'acme'")).scalars()
    assert json.loads(again.stdout)["id"] == str(made) and _jobs(api) == 1


def test_an_idempotency_key_the_api_would_refuse_is_a_usage_error(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli.main import run as orchestrator

    for bad in ("a b", "", "x" * 201, "clé"):
        status = orchestrator([*SUBMIT, "--idempotency-key", bad, "--api-url", api.url,
                               "--api-key", api.keys["acme"]])
        out, err = capsys.readouterr()
        assert status == 2 and out == "", (bad, out, err)
        assert err == ("error: Invalid value for '--idempotency-key': 1 to 200 printable "
                       "ASCII characters, no spaces\n"), (bad, err)
    assert _jobs(api) == 0


# ``orchestrator`` with SIGINT raising KeyboardInterrupt, as in a terminal: a test run
# started in the background (CI's) ignores SIGINT, and its children inherit that, so Python
# would not install its handler and Ctrl-C would do nothing
AS_FROM_A_TERMINAL = ("import runpy, signal; "
                      "signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "runpy.run_module('orchestrator.cli', run_name='__main__')")


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_API_")}
    return subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_ctrl_c_during_submit_wait_names_the_job_that_runs_on(api: Api) -> None:
    relay = Relay(api.url)
    proc = _cli(*SUBMIT, "--wait", "--api-url", relay.url, "--api-key", api.keys["acme"])
    try:
        wait_for("submit --wait to follow its job's events",
                 lambda: any(line.startswith("GET /v1/jobs/") and "/events" in line
                             for line in relay.lines) or proc.poll() is not None, timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        relay.close()
    with api.rig.engine.connect() as conn:
        [job_id] = conn.execute(text("SELECT id FROM jobs WHERE tenant = 'acme'")).scalars()
    assert proc.returncode == 130 and out == "" and "Traceback" not in err, (out, err)
    assert err.strip().splitlines() == [
        f"error: interrupted: job {job_id} runs on; follow it with `orchestrator jobs watch "
        f"{job_id}`, or stop it with `orchestrator jobs cancel {job_id}`"], err


def test_watch_goes_on_after_an_outage(api: Api, queued: Job) -> None:
    relay = Relay(api.url)
    proc = _cli("jobs", "watch", queued.id, "--timeout", "60", "--api-url", relay.url,
                "--api-key", api.keys["acme"])
    streams = lambda: sum(line.startswith(f"GET /v1/jobs/{queued.id}/events")  # noqa: E731
                          for line in relay.lines)
    try:
        wait_for("the watch to follow the job's events",
                 lambda: streams() >= 1 or proc.poll() is not None, timeout=60)
        relay.down()  # its stream cut, and every connection after it
        try:
            # the SDK's events() gives up after three refused connections in a row
            wait_for("the watch to try again after the API was not there",
                     lambda: relay.refused >= 5 or proc.poll() is not None, timeout=30)
            assert proc.poll() is None, proc.communicate()
        finally:
            relay.up()
        with Client(api.url, api.keys["acme"]) as c:
            c.cancel(queued.id)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        relay.close()
    # job.queued once (resumed after it, never again), then its end: cancelled, status 1
    assert [line.split()[2] for line in out.splitlines()] == ["job.queued", "job.cancelled"]
    assert proc.returncode == 1 and err.strip() == f"error: job {queued.id} cancelled", err
