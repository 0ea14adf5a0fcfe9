"""Running the API: ``serve`` (blocking, for ``orchestrator api``) and ``start_in_thread`` (a
real uvicorn server on 127.0.0.1 in a background thread, for tests, benches and ``up``)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import uvicorn

from orchestrator.api.app import create_app
from orchestrator.api.config import ApiConfig
from orchestrator.bootstrap import Container


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    container: Container | None = None,
    config: ApiConfig | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve the API until stopped. Builds the default container from settings, and starts the
    metric sinks for the ``api`` role. Access logs carry method, path and status only."""
    from orchestrator import metrics
    from orchestrator.bootstrap import container as default_container

    c = container or default_container()
    metrics.configure_from_settings("api", c.settings)
    try:
        uvicorn.run(create_app(c, config), host=host, port=port, log_level=log_level,
                    access_log=access_log, proxy_headers=False, server_header=False)
    finally:
        metrics.shutdown()


@dataclass
class RunningApi:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    container: Container,
    *,
    config: ApiConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_timeout: float = 10.0,
) -> RunningApi:
    """Start the API on ``host:port`` (0: a free port) and return once /healthz answers."""
    app = create_app(container, config)
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (no Nagle stalls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="off", server_header=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api",
                              daemon=True)
    thread.start()
    running = RunningApi(url=f"http://{host}:{bound}", server=server, thread=thread)
    deadline = time.monotonic() + ready_timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the API server thread exited during start-up")
            try:
                if server.started and client.get(f"{running.url}/healthz").status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                running.stop()
                raise RuntimeError(f"the API did not answer at {running.url}")
            time.sleep(0.01)
