"""Running the simulator: ``serve`` (blocking, for ``orchestrator simulator``) and
``start_in_thread`` (a real uvicorn server on 127.0.0.1 in a background thread, for tests,
benches and in-process use)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvicorn

from orchestrator.domain.catalogue import Catalogue, load_catalogue
from orchestrator.simulator.app import create_app


def default_address() -> tuple[str, int]:
    """Host and port of ``ORCH_SIMULATOR_URL`` (default http://127.0.0.1:8100)."""
    from orchestrator.settings import get_settings

    parts = urlsplit(get_settings().simulator_url)
    return parts.hostname or "127.0.0.1", parts.port or 8100


def _catalogue(catalogue: Catalogue | None, backends_file: str | Path | None) -> Catalogue:
    if catalogue is not None:
        return catalogue
    if backends_file is None:
        from orchestrator.settings import get_settings

        backends_file = get_settings().backends_path()
    return load_catalogue(backends_file)


def serve(
    host: str | None = None,
    port: int | None = None,
    *,
    catalogue: Catalogue | None = None,
    backends_file: str | Path | None = None,
    log_level: str = "warning",
) -> None:
    """Serve every backend of the catalogue (default: ORCH_BACKENDS_FILE) until stopped.
    Host and port default to those of ORCH_SIMULATOR_URL."""
    cat = _catalogue(catalogue, backends_file)
    if host is None or port is None:
        dhost, dport = default_address()
        host, port = host or dhost, port or dport
    uvicorn.run(create_app(cat), host=host, port=port, log_level=log_level, access_log=False)


@dataclass
class RunningSimulator:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    catalogue: Catalogue | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    backends_file: str | Path | None = None,
    ready_timeout: float = 10.0,
) -> RunningSimulator:
    """Start a real simulator server (port 0: a free one) and return once it answers."""
    app = create_app(_catalogue(catalogue, backends_file))
    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (else ~40 ms
    # per request from Nagle + delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="simulator", daemon=True
    )
    thread.start()
    url = f"http://{host}:{bound_port}"
    running = RunningSimulator(url=url, server=server, thread=thread)
    deadline = time.monotonic() + ready_timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the simulator server thread exited during start-up")
            try:
                if server.started and client.get(f"{url}/healthz").status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                running.stop()
                raise RuntimeError(f"the simulator did not answer at {url} within {ready_timeout}s")
            time.sleep(0.01)
