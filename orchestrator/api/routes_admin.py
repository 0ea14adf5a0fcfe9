"""/v1/backends and /v1/budgets (read: a tenant its own scopes, an admin all and their alert
channels; write: admin)."""


import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends

from orchestrator.api.bodies import UniqueKeysRoute
from orchestrator.api.context import ADMIN_ERRORS, AUTH_ERRORS, ApiContext, _err
from orchestrator.api.principal import Principal, sees_budget
from orchestrator.api.schemas import BackendsOut, BudgetIn, BudgetOut, BudgetsOut
from orchestrator.api.views import backend_resource, budget_resource
from orchestrator.domain.budgets import thresholds_to_bp, validate_scope
from orchestrator.domain.money import usd_to_micros
from orchestrator.errors import InvalidRequest
from orchestrator.ledger.budgets import list_budgets, set_budget
from orchestrator.ledger.service import utcnow
from orchestrator.notify.stored import prepare_channels

T = TypeVar("T")


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1", route_class=UniqueKeysRoute)
    Caller = Annotated[Principal, Depends(ctx.principal_dep())]
    Admin = Annotated[Principal, Depends(ctx.admin_dep())]
    c = ctx.container
    _ = c.secrets  # a bad ORCH_SECRET_KEY or key file stops the API at start, not at a PUT

    @r.get("/backends", response_model=BackendsOut, tags=["backends"], responses=AUTH_ERRORS,
           summary="Catalogue with breaker state and observed health")
    def backends(p: Caller) -> dict[str, Any]:
        cat = c.catalogue()
        health = c.health.snapshot(cat.names)
        now = time.time()
        factors = c.calibrator.factors()
        return {"backends": [backend_resource(b, health[b.name], now, factors.get(b.name))
                             for b in cat.backends]}

    @r.get("/budgets", response_model=BudgetsOut, tags=["budgets"], responses=AUTH_ERRORS,
           summary="The caller's tenant and project budgets (admin: all, with channels)")
    def budgets(p: Caller) -> dict[str, Any]:
        now = utcnow()
        with c.engine.connect() as conn:
            views = list_budgets(conn, now=now)
        return {"budgets": [budget_resource(v, now, channels=p.admin) for v in views
                            if sees_budget(p, v.scope)]}

    @r.put("/budgets", response_model=BudgetOut, tags=["budgets"],
           responses={**ADMIN_ERRORS, 503: _err(
               "secret_key_missing: a channel secret cannot be stored without a key")},
           summary="Create or update a budget (admin)")
    def put_budget(body: BudgetIn, p: Admin) -> dict[str, Any]:
        scope = _checked("scope", validate_scope, body.scope)
        # None (left out): the budget keeps its own, as `orchestrator budgets set` does
        thresholds = None if body.alert_thresholds is None else _thresholds(
            "alert_thresholds", body.alert_thresholds)
        forecast_thresholds = None if body.forecast_thresholds is None else _thresholds(
            "forecast_thresholds", body.forecast_thresholds)
        # validated, egress-checked and sealed before anything is written: a refusal (422
        # naming the field: an email channel this process has no ORCH_SMTP_HOST for, too)
        # or a missing key (503 secret_key_missing) changes nothing
        channels = None if body.channels is None else prepare_channels(
            body.channels, c.egress, c.secrets, smtp_host=c.smtp.smtp_host)
        now = utcnow()
        with c.engine.begin() as tx:
            set_budget(tx, scope=scope, period=body.period,
                       limit_micros=usd_to_micros(body.limit_usd), now=now,
                       thresholds_bp=thresholds, channels=channels,
                       forecast_thresholds_bp=forecast_thresholds)
            views = list_budgets(tx, now=now, scopes=(scope,))
        view = next(v for v in views if v.period == body.period)
        return budget_resource(view, now)

    return r


def _thresholds(field: str, fractions: list[float]) -> tuple[int, ...]:
    """The thresholds in basis points; a bad one is a 422 naming its item
    (``alert_thresholds[1]``), as a value of the wrong type is."""
    for i, f in enumerate(fractions):
        _checked(f"{field}[{i}]", thresholds_to_bp, [f])
    return thresholds_to_bp(fractions)


def _checked(field: str, check: Callable[[Any], T], value: Any) -> T:
    """``check(value)``; its ValueError is a 422 naming ``field``, as pydantic's are."""
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field=field) from None
