"""The FastAPI application: ``create_app(container)``.

Routes (CONTRACT "HTTP API"): jobs and quotes (:mod:`.routes_jobs`), job events as
Server-Sent Events (:mod:`.routes_events`), webhooks (:mod:`.routes_webhooks`), backends and budgets
(:mod:`.routes_admin`), keys (:mod:`.routes_keys`), cost reports (:mod:`.routes_reports`), all
under ``/v1`` and authenticated by :class:`.gate.Gate` before their body is read; and the
unauthenticated ``/healthz``, ``/readyz``, ``/metrics``, docs (:mod:`.docs_ui`: Swagger UI,
nothing from a CDN) and the web console's static
files at ``/console`` (:mod:`orchestrator.console`; its data comes from ``/v1``). Errors are
the envelope of :mod:`.errors`. Request bodies are never logged.

The ASGI stack, outermost first: RequestMetrics (count and time every request by route
template) → PathHeaders (the console's strict headers on every answer under ``/console``,
when it is served, and under ``/docs``) → NoStore (``/v1`` answers: ``Cache-Control:
no-store``, nosniff) → CatchAll (a 500 envelope for anything unhandled) → Gate (auth,
failed-auth and tenant limits) → IdentityBodies (415 for a Content-Encoding) → BodyDeadline
(408) → BodySizeLimit (413) → HeadAsGet (HEAD on a GET route) → FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator import console, metrics
from orchestrator.api import (
    docs_ui,
    errors,
    routes_admin,
    routes_events,
    routes_jobs,
    routes_keys,
    routes_reports,
    routes_webhooks,
)
from orchestrator.api.config import ApiConfig
from orchestrator.api.context import ApiContext, _err
from orchestrator.api.encoding import IdentityBodies
from orchestrator.api.errors import error_response
from orchestrator.api.gate import Gate
from orchestrator.api.headers import NoStore, PathHeaders
from orchestrator.api.limits import AuthFailures, RateLimiter, RedisOutage
from orchestrator.api.middleware import (
    BodyDeadline,
    BodySizeLimit,
    CatchAll,
    HeadAsGet,
    RequestMetrics,
)
from orchestrator.api.query import known_query
from orchestrator.api.schemas import HealthOut, ReadyOut
from orchestrator.api.security import Authenticator
from orchestrator.bootstrap import Container
from orchestrator.events.hub import EventHub
from orchestrator.outage import RETRY_AFTER_S

DESCRIPTION = """Cost-aware orchestrator for long-running generation jobs.

Authenticate with `Authorization: Bearer <API key>` (every route under `/v1`). Errors are
`{"error": {"code", "message", "details"}}`; see the responses of each route.
"""


def create_app(container: Container, config: ApiConfig | None = None) -> FastAPI:
    """The API over ``container``. ``config`` defaults to the limits in its settings."""
    cfg = config or ApiConfig.from_settings(container.settings)
    t = min(2.0, container.settings.redis_timeout_s)  # readiness and limits: never wait long
    rds = Redis.from_url(container.redis_url, socket_timeout=t, socket_connect_timeout=t)
    limiter_redis = AsyncRedis.from_url(container.redis_url, socket_timeout=t,
                                        socket_connect_timeout=t)
    outage = RedisOutage()  # one Redis behind both counters: one failure skips both
    ctx = ApiContext(container=container, config=cfg,
                     auth=Authenticator(container.engine, cfg.key_cache_s),
                     limiter=RateLimiter(limiter_redis, cfg, outage=outage),
                     failures=AuthFailures(limiter_redis, cfg, outage=outage), redis=rds)
    hub = EventHub(container.engine, ping_s=container.settings.events_ping_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.close()

    # FastAPI's /docs and /redoc load their scripts from a CDN: ours is docs_ui
    app = FastAPI(title="orchestrator", version="1", description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  # no 307 from /v1/jobs/ to a Location built from the client's Host header
                  # (and http:// behind a TLS proxy): a path with a trailing slash is a 404
                  redirect_slashes=False)
    app.state.ctx = ctx
    app.state.hub = hub
    errors.install(app)
    for v1 in (routes_jobs.router(ctx), routes_events.router(ctx, hub),
               routes_webhooks.router(ctx), routes_admin.router(ctx), routes_keys.router(ctx),
               routes_reports.router(ctx)):  # an unknown query parameter: 422, not ignored
        app.include_router(v1, dependencies=[Depends(known_query)])
    _ops(app, ctx)
    docs_ui.mount(app)  # /docs: Swagger UI from an installed package, strict CSP
    if container.settings.console_enabled:
        console.mount(app)  # static files; they call /v1 like any client
    # add_middleware wraps: the last added is the outermost
    app.add_middleware(HeadAsGet)  # innermost: the others see the HEAD it is
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(BodyDeadline, timeout_s=cfg.body_timeout_s)
    app.add_middleware(IdentityBodies)  # after the gate: a stranger learns nothing from it
    app.add_middleware(Gate, auth=ctx.auth, limiter=ctx.limiter, failures=ctx.failures)
    app.add_middleware(CatchAll)
    app.add_middleware(NoStore)  # outside CatchAll and Gate: their errors get it too
    # the console's strict headers on every answer under it and under /docs
    app.add_middleware(PathHeaders, prefix=docs_ui.PATH, fixed=console.SECURITY_HEADERS)
    if container.settings.console_enabled:
        app.add_middleware(PathHeaders, prefix=console.PATH, fixed=console.SECURITY_HEADERS)
    app.add_middleware(RequestMetrics, routes=app.router.routes)
    return app


def _ops(app: FastAPI, ctx: ApiContext) -> None:
    @app.get("/healthz", response_model=HealthOut, tags=["ops"], summary="Liveness")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyOut, tags=["ops"],
             summary="Readiness: PostgreSQL and Redis answer",
             responses={503: _err("a dependency is down")})
    def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            with ctx.container.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except SQLAlchemyError as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            ctx.redis.ping()
            checks["redis"] = "ok"
        except RedisError as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        return error_response(503, "not_ready", "a dependency is not reachable",
                              {"checks": checks}, headers={"Retry-After": str(RETRY_AFTER_S)})

    if ctx.container.settings.metrics_addr:  # served there instead (api.server.serve)
        return

    @app.get("/metrics", tags=["ops"], summary="Prometheus exposition",
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    def prometheus() -> Response:
        body, content_type = metrics.prometheus_payload()
        return Response(content=body, media_type=content_type)
