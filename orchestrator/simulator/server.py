"""Running the simulator: ``serve`` (blocking, for ``orchestrator simulator``) and
``start_in_thread`` (a real uvicorn server on 127.0.0.1 in a background thread, for tests,
benches and in-process use)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from orchestrator.domain.catalogue import Catalogue, load_catalogue
from orchestrator.runtime import serving
from orchestrator.runtime.serving import ThreadedServer
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


RunningSimulator = ThreadedServer


def start_in_thread(
    catalogue: Catalogue | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    backends_file: str | Path | None = None,
    ready_timeout: float = 10.0,
) -> RunningSimulator:
    """Start a real simulator server (port 0: a free one) and return once it answers."""
    return serving.start_in_thread(create_app(_catalogue(catalogue, backends_file)),
                                   name="simulator", host=host, port=port,
                                   ready_timeout=ready_timeout)
