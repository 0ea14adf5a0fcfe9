"""An ASGI app on a real uvicorn server in a background thread (tests, benches, in-process
use): the API and the simulator both start this way."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from orchestrator.runtime.sockets import tcp_listener


@dataclass
class ThreadedServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(
    app: ASGIApp, *, name: str, host: str = "127.0.0.1", port: int = 0,
    ready_timeout: float = 10.0, server_header: bool = True,
    options: dict[str, Any] | None = None,
) -> ThreadedServer:
    """Serve ``app`` on ``host:port`` (0: a free port); return once its /healthz answers 200.
    ``options``: more ``uvicorn.Config`` arguments (limits, protocol)."""
    sock = tcp_listener(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    config = {"server_header": server_header, **(options or {})}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           log_config=None, lifespan="off", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name,
                              daemon=True)
    thread.start()
    running = ThreadedServer(url=url, server=server, thread=thread)
    deadline = time.monotonic() + ready_timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if not thread.is_alive():
                raise RuntimeError(f"the {name} server thread exited during start-up")
            try:
                if server.started and client.get(f"{url}/healthz").status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                running.stop()
                raise RuntimeError(f"the {name} did not answer at {url} within {ready_timeout}s")
            time.sleep(0.01)
