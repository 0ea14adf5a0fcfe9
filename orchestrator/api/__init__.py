"""The HTTP API (FastAPI): routes, auth, rate limits, error mapping.

    from orchestrator.api import create_app, serve, start_in_thread

    serve(host, port)                          # orchestrator api (blocking, uvicorn)
    running = start_in_thread(container)       # tests, benches, `orchestrator up`
    running.url; running.stop()
"""

from orchestrator.api.app import create_app
from orchestrator.api.config import ApiConfig
from orchestrator.api.server import RunningApi, serve, start_in_thread

__all__ = ["ApiConfig", "RunningApi", "create_app", "serve", "start_in_thread"]
