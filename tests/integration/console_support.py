"""The console's browser tests: ``orchestrator up`` as a user runs it (a subprocess on
embedded PostgreSQL and Redis, its own worker, beat and simulator) and Debian's headless
Chromium driven by playwright. Screenshots go to ``test-artifacts/console/``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from orchestrator.embedded._ports import free_port

from .test_up import ROOT, wait_for

CHROMIUM = Path("/usr/bin/chromium")
# never `playwright install` (nothing may be downloaded): Debian's chromium, quiet offline
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "console"
# views poll every 2-5 s; on a loaded 2-core machine a condition may take a few polls
expect.set_options(timeout=20_000)
SAVED: list[Path] = []  # the screenshots of this session (named at the end of the run)
VIDEO = {"prompt": "a lighthouse at dusk", "duration_s": 4}  # the jobs the tests submit


@dataclass
class Stack:
    url: str
    sim_url: str
    creds: dict[str, Any]
    env: dict[str, str]

    def control(self, backend: str, **knobs: Any) -> None:
        httpx.post(f"{self.sim_url}/_control/{backend}", json=knobs,
                   timeout=10).raise_for_status()

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15,
                            headers={"Authorization": f"Bearer {self.creds['admin_key']}"})


# fixtures under their own names, so a test module imports them without shadowing the names
@pytest.fixture(scope="module", name="stack")
def stack_fixture() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="orch-console-") as tmp:
        data = Path(tmp) / "data"
        port, sim_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("ORCH_DATABASE_URL", "ORCH_REDIS_URL", "ORCH_API_URL",
                            "ORCH_API_KEY", "ORCH_METRICS_ADDR", "ORCH_CONSOLE_ENABLED")}
        # quick polls; an open breaker stays open for the test to see it
        env.update(ORCH_SIMULATOR_URL=f"http://127.0.0.1:{sim_port}", ORCH_DATA_DIR=str(data),
                   ORCH_POLL_MIN_S="0.2", ORCH_POLL_MAX_S="0.5", ORCH_BREAKER_COOLDOWN_S="300")
        up = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
        reader.start()
        try:
            wait_for("`up` to say it is running",
                     lambda: any("running;" in ln for ln in lines) or up.poll() is not None,
                     timeout=180)
            assert up.poll() is None, "".join(lines)
            creds = json.loads((data / "credentials.json").read_text())
            assert f"console:    {creds['api_url']}/console" in "".join(lines)
            yield Stack(creds["api_url"], env["ORCH_SIMULATOR_URL"], creds, env)
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=120)
            reader.join(timeout=10)


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    assert CHROMIUM.exists(), (
        "the console tests need Debian's chromium: apt-get install chromium "
        "(make test installs it when run as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(name="page")
def page_fixture(browser: Browser) -> Iterator[Page]:
    """A fresh tab in a fresh context (its own sessionStorage), laptop-sized."""
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def shot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SAVED.append(path)
    return path


def sign_in(page: Page, stack: Stack, key: str, identity: str, *, base: str | None = None,
            query: str = "") -> None:
    """Sign in at ``base`` (the API, or a proxy in front of it); ``query``: the console's own
    options, e.g. ``?poll=600``."""
    page.goto(f"{base or stack.url}/console/{query}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#identity")).to_contain_text(identity)


def view(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", level=2).first).to_contain_text(name)


class EventsBlockingProxy:
    """A small HTTP proxy in front of the API that answers 404 to every ``/events`` path (an
    API from before the event streams, or a proxy that does not pass them) and forwards the
    rest, headers included (the console's Content-Security-Policy)."""

    HOP = frozenset({"host", "connection", "accept-encoding", "keep-alive",
                     "transfer-encoding", "content-length", "content-encoding"})

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=30.0)
        self.refused: list[str] = []
        self.forwarded: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stall per answer

            def do_GET(self) -> None:
                if "/events" in self.path.split("?")[0]:
                    proxy.refused.append(self.path)
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._forward(b"")

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _forward(self, body: bytes) -> None:
                proxy.forwarded.append(f"{self.command} {self.path}")
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in proxy.HOP}
                r = proxy.upstream.request(self.command, self.path, content=body,
                                           headers=headers)
                self.send_response(r.status_code)
                for k, v in r.headers.multi_items():
                    if k.lower() not in proxy.HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()
