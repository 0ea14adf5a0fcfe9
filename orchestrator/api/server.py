"""Running the API: ``serve`` (blocking, for ``orchestrator api``) and ``start_in_thread`` (a
real uvicorn server on 127.0.0.1 in a background thread, for tests, benches and ``up``)."""

from __future__ import annotations

import socket

import uvicorn

from orchestrator.api.app import create_app
from orchestrator.api.config import ApiConfig
from orchestrator.bootstrap import Container
from orchestrator.runtime import serving
from orchestrator.runtime.heap import freeze_startup_heap
from orchestrator.runtime.serving import ThreadedServer
from orchestrator.runtime.signals import sigterm_exits
from orchestrator.settings import split_address


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    container: Container | None = None,
    config: ApiConfig | None = None,
    log_level: str | None = None,
    access_log: bool = True,
    fd: int | None = None,
) -> None:
    """Serve the API until stopped. Builds the default container from settings, and starts the
    metric sinks for the ``api`` role (and ``/metrics`` on ``ORCH_METRICS_ADDR`` when set).
    uvicorn's limits come from ``config`` (default: from settings;
    :meth:`ApiConfig.uvicorn_options`). uvicorn's loggers (its access log: client, method, path
with query, status) go through the process's redacting handler (``orchestrator.logs``), not
handlers of their own.

    ``fd``: accept on this inherited listening socket instead of binding ``host:port``
    (``orchestrator up`` runs several API processes on one socket this way)."""
    from orchestrator import metrics
    from orchestrator.bootstrap import container as default_container

    c = container or default_container()
    cfg = config or ApiConfig.from_settings(c.settings)
    log_level = log_level or c.settings.log_level.lower()  # uvicorn's lines too (ORCH_LOG_LEVEL)
    metrics.configure_from_settings("api", c.settings)
    # uvicorn stops gracefully on SIGTERM (sse-starlette ends the open event streams), then
    # puts back the handler it found and raises the signal again: with the default one the
    # process died there, status -15, before this finally and atexit (the metric sinks' last
    # flush). With this one it leaves through them, status 0.
    with sigterm_exits(0):  # a stop asked for, done
        try:
            if c.settings.metrics_addr:  # /metrics there, not on the API's port (create_app)
                metrics_host, metrics_port = split_address(c.settings.metrics_addr)
                metrics.start_metrics_server(metrics_port, addr=metrics_host)
            app = create_app(c, cfg)
            freeze_startup_heap()
            if fd is None:
                uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=None,
                            access_log=access_log, **cfg.uvicorn_options())
            else:
                # socket(fileno=) reads the family and protocol back from the descriptor:
                # uvicorn's own fd= option would take it for AF_UNIX, and asyncio then would
                # not set TCP_NODELAY on accepted connections
                sock = socket.socket(fileno=fd)
                server = uvicorn.Server(uvicorn.Config(
                    app, log_level=log_level, log_config=None, access_log=access_log,
                    **cfg.uvicorn_options()))
                server.run(sockets=[sock])
        finally:
            metrics.shutdown()


RunningApi = ThreadedServer


def start_in_thread(
    container: Container,
    *,
    config: ApiConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_timeout: float = 10.0,
) -> RunningApi:
    """Start the API on ``host:port`` (0: a free port) and return once /healthz answers, with
    the same uvicorn limits as :func:`serve`."""
    cfg = config or ApiConfig.from_settings(container.settings)
    return serving.start_in_thread(create_app(container, cfg), name="API", host=host,
                                   port=port, ready_timeout=ready_timeout,
                                   options=cfg.uvicorn_options())
