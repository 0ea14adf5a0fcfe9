"""``GET /v1/reports/costs``: spend from the ledger grouped by backend, tier, project, day or
tenant, exact to the micro-dollar, with the estimate-vs-actual accuracy per backend
(:mod:`orchestrator.reports`).

A tenant key sees its own tenant (``tenant=`` may only name it). An admin key sees every
tenant, or the one ``tenant=`` names.
"""


from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from orchestrator.api.bodies import UniqueKeysRoute
from orchestrator.api.context import AUTH_ERRORS, ApiContext, _err
from orchestrator.api.errors import Forbidden
from orchestrator.api.security import Principal
from orchestrator.domain.money import micros_to_usd
from orchestrator.errors import InvalidRequest
from orchestrator.reports import CostReport, GroupBy, cost_report


class CostGroupOut(BaseModel):
    key: str | None
    cost_micros: int
    cost_usd: float
    jobs: int


class CalibratedAccuracyOut(BaseModel):
    expected_micros: int
    p50_ratio: float
    p95_ratio: float
    within_5pct: int
    within_5pct_share: float
    err_p95: float


class AccuracyOut(BaseModel):
    backend: str
    jobs: int
    actual_micros: int
    estimate_micros: int
    mean_ratio: float
    p50_ratio: float
    p95_ratio: float
    within_5pct: int
    within_5pct_share: float
    err_p95: float = Field(description="p95 of |actual - estimate| / estimate")
    calibrated: CalibratedAccuracyOut = Field(
        description="the same against the calibrated expected cost")


class CacheOut(BaseModel):
    cacheable_jobs: int = Field(description="jobs created with the result cache on")
    served: int = Field(description="jobs served from it (hits and coalesced), succeeded")
    hit_rate: float
    saved_micros: int = Field(description="what the jobs whose results they got cost")
    saved_usd: float


class CostReportOut(BaseModel):
    group_by: GroupBy
    tenant: str | None
    from_: str | None = Field(alias="from")
    to: str | None
    groups: list[CostGroupOut]
    total_micros: int
    total_usd: float
    jobs: int
    accuracy: list[AccuracyOut]
    cache: CacheOut


def report_resource(rep: CostReport) -> dict[str, Any]:
    return {
        "group_by": rep.group_by.value,
        "tenant": rep.tenant,
        "from": rep.start.isoformat() if rep.start else None,
        "to": rep.end.isoformat() if rep.end else None,
        "groups": [{"key": g.key, "cost_micros": g.cost_micros,
                    "cost_usd": micros_to_usd(g.cost_micros), "jobs": g.jobs}
                   for g in rep.groups],
        "total_micros": rep.total_micros,
        "total_usd": micros_to_usd(rep.total_micros),
        "jobs": rep.jobs,
        "accuracy": [{"backend": a.backend, "jobs": a.jobs, "actual_micros": a.actual_micros,
                      "estimate_micros": a.estimate_micros,
                      "mean_ratio": round(a.mean_ratio, 6), "p50_ratio": round(a.p50_ratio, 6),
                      "p95_ratio": round(a.p95_ratio, 6), "within_5pct": a.within_tolerance,
                      "within_5pct_share": round(a.within_share, 6),
                      "err_p95": round(a.err_p95, 6),
                      "calibrated": {
                          "expected_micros": a.expected_micros,
                          "p50_ratio": round(a.calibrated_p50_ratio, 6),
                          "p95_ratio": round(a.calibrated_p95_ratio, 6),
                          "within_5pct": a.calibrated_within,
                          "within_5pct_share": round(a.calibrated_within_share, 6),
                          "err_p95": round(a.calibrated_err_p95, 6)}}
                     for a in rep.accuracy],
        "cache": {"cacheable_jobs": rep.cache.cacheable_jobs, "served": rep.cache.served,
                  "hit_rate": round(rep.cache.hit_rate, 6),
                  "saved_micros": rep.cache.saved_micros,
                  "saved_usd": micros_to_usd(rep.cache.saved_micros)},
    }


def _aware(at: datetime | None) -> datetime | None:
    if at is not None and at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1", route_class=UniqueKeysRoute, tags=["reports"])
    Caller = Annotated[Principal, Depends(ctx.principal_dep())]
    c = ctx.container

    @r.get("/reports/costs", response_model=CostReportOut,
           summary="Spend from the ledger, grouped; estimate accuracy",
           responses={**AUTH_ERRORS, 403: _err("tenant= names another tenant (admin only)")})
    def costs(
        p: Caller,
        group_by: Annotated[GroupBy, Query()] = GroupBy.BACKEND,
        start: Annotated[datetime | None, Query(
            alias="from", description="charges at or after (UTC if no offset)")] = None,
        end: Annotated[datetime | None, Query(
            alias="to", description="charges before (UTC if no offset)")] = None,
        tenant: Annotated[str | None, Query(
            pattern=r"^[A-Za-z0-9_.-]{1,64}$",
            description="admin: one tenant (default: all); others: their own")] = None,
    ) -> dict[str, Any]:
        if not p.admin:
            if tenant is not None and tenant != p.tenant:
                raise Forbidden("a tenant key reports on its own tenant only")
            tenant = p.tenant
        start, end = _aware(start), _aware(end)
        if start is not None and end is not None and end <= start:
            raise InvalidRequest("query.to: must be after query.from", field="query.to")
        with c.engine.connect() as conn:
            # one snapshot for the costs and the accuracy
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                rep = cost_report(conn, group_by, tenant=tenant, start=start, end=end)
        return report_resource(rep)

    return r
