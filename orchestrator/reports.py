"""Cost reports from the ledger, and how good the estimates were (the query layer of
``GET /v1/reports/costs`` and ``orchestrator report``).

**Costs** come from the ledger: the committed deltas of ``ledger_entries`` (settle, a
release that charged a partial cost, and the overage of a bill above its hold), joined to
``jobs`` for tier and project. Each step writes the same charge into every budget period that
covers the job (global, tenant, project), so a job's charge is counted once: one value per
(job, step). The groups therefore add up, to the micro-dollar, to the committed sum of any
one budget that covers all the jobs reported (e.g. the tenant's budget). By **backend**, a
charge goes to the backends whose attempts billed it, split in proportion to their bills
(cumulative rounding, so the shares add up to the charge exactly): a failed-over job's first
bill stays with the provider that sent it, and a failed job's partial bill is not left
without a backend; so the groups can be checked against each provider's invoice. A charge
with no billed attempt (none recorded) goes to the job's backend. A job billed by two
backends counts in both groups' ``jobs``; the report's ``jobs`` counts it once. Spend under
no budget writes no ledger entry and is not in the report. A charge is dated by its ledger
entry (``created_at``, the ledger's clock); ``start`` is inclusive, ``end`` exclusive;
``day`` groups by UTC day.

**Accuracy** compares, per backend, each succeeded job's actual cost there (what its
succeeded attempt on that backend was billed, as calibration counts it; ``jobs.cost_micros``
for a job without one: a failed-over job's earlier bills are the other backends', not this
one's estimate error) with the estimate routing made for the backend that ran it (its
candidate in ``jobs.route``; the job's worst-case estimate where the route has none): mean,
p50 and p95 of
actual / estimate, and the share within ±5 % of the estimate. The same figures *after
calibration* compare the actual cost with the candidate's calibrated expected cost
(``domain.calibration``; the estimate for a job routed before calibration existed or
without a factor yet), and ``err_p95`` / ``calibrated_err_p95`` are the p95 of
|actual - predicted| / predicted before and after. Jobs served from the result cache ($0,
nothing was estimated for them) are left out. Jobs are dated by ``finished_at``.

**Cache** counts, over the jobs created in the window, those that used the result cache
(``cache_key`` set), those served from it (``cached_from`` set and succeeded: a hit or a
coalesced follower) and what they saved: the cost of the jobs whose results they got.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Connection, text


class GroupBy(StrEnum):
    BACKEND = "backend"
    TIER = "tier"
    PROJECT = "project"
    DAY = "day"
    TENANT = "tenant"


_KEY_SQL: dict[GroupBy, str] = {  # by backend: _BY_BILLING_BACKEND
    GroupBy.TIER: "j.tier",
    GroupBy.PROJECT: "j.spec -> 'metadata' ->> 'project'",
    GroupBy.DAY: "to_char(c.charged_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    GroupBy.TENANT: "j.tenant",
}
# across tenants a project is named with its tenant: acme's p1 and globex's p1 are two
# projects, with two budgets, and one group would add up spend no budget sees as one
_PROJECT_OF_TENANT_SQL = "j.tenant || '/' || (j.spec -> 'metadata' ->> 'project')"

_CHARGES_CTE = """
    WITH charges AS (
        SELECT e.job_id, MAX(e.committed_delta_micros) AS micros, MIN(e.created_at) AS charged_at
        FROM ledger_entries e
        WHERE e.committed_delta_micros <> 0 {tenant_entries}
          AND (CAST(:start AS timestamptz) IS NULL OR e.created_at >= CAST(:start AS timestamptz))
          AND (CAST(:end AS timestamptz) IS NULL OR e.created_at < CAST(:end AS timestamptz))
        GROUP BY e.job_id, e.idempotency_key
    )
"""

# each group, and (``whole``) every charge: the report's job count, a job in two groups once
_GROUPED = """
    SELECT {key} AS key, SUM(c.micros) AS micros, COUNT(DISTINCT c.job_id) AS jobs,
           GROUPING({key}) AS whole
    FROM charges c JOIN jobs j ON j.id = c.job_id
    GROUP BY GROUPING SETS (({key}), ())
    ORDER BY whole, 1 NULLS LAST
"""

# what each billed attempt's backend takes of a charge: floor(charge x bills up to and with
# the attempt / all the job's bills), less the same up to the attempt before it
_BY_BILLING_BACKEND = """
    , billed AS (
        SELECT a.job_id, a.backend, a.cost_micros AS cost,
               SUM(a.cost_micros) OVER (PARTITION BY a.job_id ORDER BY a.number) AS upto,
               SUM(a.cost_micros) OVER (PARTITION BY a.job_id) AS total
        FROM attempts a
        WHERE a.cost_micros > 0 AND a.job_id IN (SELECT job_id FROM charges)
    )
    SELECT COALESCE(b.backend, j.backend) AS key,
           SUM(CASE WHEN b.job_id IS NULL THEN c.micros
                    ELSE floor(c.micros * CAST(b.upto AS numeric) / b.total)
                         - floor(c.micros * CAST(b.upto - b.cost AS numeric) / b.total)
               END) AS micros,
           COUNT(DISTINCT c.job_id) AS jobs,
           GROUPING(COALESCE(b.backend, j.backend)) AS whole
    FROM charges c JOIN jobs j ON j.id = c.job_id
    LEFT JOIN billed b ON b.job_id = c.job_id
    GROUP BY GROUPING SETS ((COALESCE(b.backend, j.backend)), ())
    ORDER BY whole, 1 NULLS LAST
"""

# one tenant's entries, found through its jobs (ix_jobs_tenant_created, ix_ledger_entries_job):
# a tenant's report then reads that tenant's history, not every tenant's ledger
_TENANT_ENTRIES = "AND e.job_id IN (SELECT id FROM jobs WHERE tenant = CAST(:tenant AS text))"

_ACCURACY = text(
    """
    WITH done AS (
        -- what the backend that ran the job billed for it (its succeeded attempt there),
        -- not the job's whole cost: a failed-over job's earlier bills are other backends'
        -- (the calibration window's actual, ``service.calibration``)
        SELECT j.backend,
               COALESCE(
                   (SELECT a.cost_micros FROM attempts a
                    WHERE a.job_id = j.id AND a.backend = j.backend
                      AND a.outcome = 'succeeded' AND a.cost_micros IS NOT NULL
                    LIMIT 1), j.cost_micros) AS actual,
               CASE WHEN chosen.c ->> 'expected_cost_micros' ~ '^[0-9]+$'
                    THEN CAST(chosen.c ->> 'expected_cost_micros' AS bigint)
                    ELSE -1 END AS expected,
               CASE WHEN chosen.c ->> 'estimated_cost_micros' ~ '^[0-9]+$'
                    THEN CAST(chosen.c ->> 'estimated_cost_micros' AS bigint)
                    ELSE j.estimated_cost_micros END AS estimate
        FROM jobs j
        -- the route's candidate the job ended on: its quoted estimate and expected cost
        LEFT JOIN LATERAL (
            SELECT c FROM jsonb_array_elements(
                CASE WHEN jsonb_typeof(j.route -> 'candidates') = 'array'
                     THEN j.route -> 'candidates' ELSE '[]'::jsonb END) AS c
            WHERE c ->> 'backend' = j.backend
            LIMIT 1) AS chosen ON true
        WHERE j.status = 'succeeded' AND j.backend IS NOT NULL AND j.cost_micros IS NOT NULL
          AND j.cached_from IS NULL
          AND (CAST(:tenant AS text) IS NULL OR j.tenant = CAST(:tenant AS text))
          AND (CAST(:start AS timestamptz) IS NULL OR j.finished_at >= CAST(:start AS timestamptz))
          AND (CAST(:end AS timestamptz) IS NULL OR j.finished_at < CAST(:end AS timestamptz))
    ), rated AS (
        SELECT backend, actual, estimate,
               CASE WHEN expected > 0 THEN expected ELSE estimate END AS expected
        FROM done WHERE estimate > 0
    )
    SELECT backend, COUNT(*) AS jobs,
           SUM(actual) AS actual_micros, SUM(estimate) AS estimate_micros,
           AVG(CAST(actual AS double precision) / estimate) AS mean_ratio,
           percentile_cont(0.5) WITHIN GROUP
               (ORDER BY CAST(actual AS double precision) / estimate) AS p50_ratio,
           percentile_cont(0.95) WITHIN GROUP
               (ORDER BY CAST(actual AS double precision) / estimate) AS p95_ratio,
           COUNT(*) FILTER (WHERE :den * ABS(actual - estimate) <= :num * estimate)
               AS within,
           percentile_cont(0.95) WITHIN GROUP
               (ORDER BY ABS(actual - estimate) / CAST(estimate AS double precision))
               AS err_p95,
           SUM(expected) AS expected_micros,
           percentile_cont(0.5) WITHIN GROUP
               (ORDER BY CAST(actual AS double precision) / expected) AS c_p50_ratio,
           percentile_cont(0.95) WITHIN GROUP
               (ORDER BY CAST(actual AS double precision) / expected) AS c_p95_ratio,
           COUNT(*) FILTER (WHERE :den * ABS(actual - expected) <= :num * expected)
               AS c_within,
           percentile_cont(0.95) WITHIN GROUP
               (ORDER BY ABS(actual - expected) / CAST(expected AS double precision))
               AS c_err_p95
    FROM rated
    GROUP BY backend ORDER BY backend
    """
)


@dataclass(frozen=True, slots=True)
class CostGroup:
    key: str | None  # None: jobs without that attribute (no backend yet, no project)
    cost_micros: int
    jobs: int


@dataclass(frozen=True, slots=True)
class BackendAccuracy:
    backend: str
    jobs: int
    actual_micros: int
    estimate_micros: int
    mean_ratio: float
    p50_ratio: float
    p95_ratio: float
    within_tolerance: int  # jobs whose actual is within the tolerance of the estimate
    err_p95: float = 0.0  # p95 of |actual - estimate| / estimate
    # after calibration: against the calibrated expected cost
    expected_micros: int = 0
    calibrated_p50_ratio: float = 0.0
    calibrated_p95_ratio: float = 0.0
    calibrated_within: int = 0
    calibrated_err_p95: float = 0.0

    @property
    def within_share(self) -> float:
        return self.within_tolerance / self.jobs if self.jobs else 0.0

    @property
    def calibrated_within_share(self) -> float:
        return self.calibrated_within / self.jobs if self.jobs else 0.0


@dataclass(frozen=True, slots=True)
class CacheSummary:
    cacheable_jobs: int  # created with the cache on
    served: int  # served from it (hits and coalesced followers that succeeded)
    saved_micros: int  # what the jobs whose results they got cost

    @property
    def hit_rate(self) -> float:
        return self.served / self.cacheable_jobs if self.cacheable_jobs else 0.0


_CACHE = text(
    """
    SELECT COUNT(*) FILTER (WHERE j.cache_key IS NOT NULL) AS cacheable,
           COUNT(*) FILTER (WHERE j.cached_from IS NOT NULL AND j.status = 'succeeded')
               AS served,
           COALESCE(SUM(o.cost_micros) FILTER (
               WHERE j.cached_from IS NOT NULL AND j.status = 'succeeded'), 0) AS saved
    FROM jobs j LEFT JOIN jobs o ON o.id = j.cached_from
    WHERE (CAST(:tenant AS text) IS NULL OR j.tenant = CAST(:tenant AS text))
      AND (CAST(:start AS timestamptz) IS NULL OR j.created_at >= CAST(:start AS timestamptz))
      AND (CAST(:end AS timestamptz) IS NULL OR j.created_at < CAST(:end AS timestamptz))
    """
)


@dataclass(frozen=True, slots=True)
class CostReport:
    group_by: GroupBy
    tenant: str | None
    start: datetime | None
    end: datetime | None
    groups: tuple[CostGroup, ...]
    accuracy: tuple[BackendAccuracy, ...]
    tolerance_bp: int
    jobs: int  # the jobs charged (a job in two groups counts once)
    cache: CacheSummary = CacheSummary(0, 0, 0)

    @property
    def total_micros(self) -> int:
        return sum(g.cost_micros for g in self.groups)


def costs_by(
    conn: Connection, group_by: GroupBy | str, *, tenant: str | None = None,
    start: datetime | None = None, end: datetime | None = None,
) -> tuple[list[CostGroup], int]:
    """Ledger charges grouped by ``group_by`` (tenant None: every tenant, and a project's key
    is ``tenant/project``), and how many jobs were charged (a job in two groups counts once),
    in one read of the ledger."""
    g = GroupBy(group_by)
    key = _PROJECT_OF_TENANT_SQL if g is GroupBy.PROJECT and tenant is None else _KEY_SQL.get(g)
    sql = _CHARGES_CTE.format(tenant_entries=_TENANT_ENTRIES if tenant is not None else "") + (
        _BY_BILLING_BACKEND if key is None else _GROUPED.format(key=key))
    rows = conn.execute(text(sql), {"tenant": tenant, "start": start, "end": end}).all()
    groups = [CostGroup(r.key, int(r.micros), int(r.jobs)) for r in rows if not r.whole]
    return groups, next((int(r.jobs) for r in rows if r.whole), 0)


def estimate_accuracy(
    conn: Connection, *, tenant: str | None = None, start: datetime | None = None,
    end: datetime | None = None, tolerance_bp: int = 500,
) -> list[BackendAccuracy]:
    """Per backend: actual vs estimated cost of succeeded jobs (``tolerance_bp`` 500 = ±5 %)."""
    rows = conn.execute(
        _ACCURACY,
        {"tenant": tenant, "start": start, "end": end, "num": tolerance_bp, "den": 10000},
    ).all()
    return [
        BackendAccuracy(
            backend=r.backend, jobs=int(r.jobs), actual_micros=int(r.actual_micros),
            estimate_micros=int(r.estimate_micros), mean_ratio=float(r.mean_ratio),
            p50_ratio=float(r.p50_ratio), p95_ratio=float(r.p95_ratio),
            within_tolerance=int(r.within), err_p95=float(r.err_p95),
            expected_micros=int(r.expected_micros),
            calibrated_p50_ratio=float(r.c_p50_ratio), calibrated_p95_ratio=float(r.c_p95_ratio),
            calibrated_within=int(r.c_within), calibrated_err_p95=float(r.c_err_p95),
        )
        for r in rows
    ]


def cache_summary(conn: Connection, *, tenant: str | None = None,
                  start: datetime | None = None, end: datetime | None = None) -> CacheSummary:
    """The result cache's use over the jobs created in [start, end)."""
    r = conn.execute(_CACHE, {"tenant": tenant, "start": start, "end": end}).one()
    return CacheSummary(int(r.cacheable), int(r.served), int(r.saved))


def cost_report(
    conn: Connection, group_by: GroupBy | str, *, tenant: str | None = None,
    start: datetime | None = None, end: datetime | None = None, tolerance_bp: int = 500,
) -> CostReport:
    """Both halves, read in one snapshot when ``conn`` is in a REPEATABLE READ transaction."""
    if start is not None and end is not None and end <= start:
        raise ValueError("the report's end must be after its start")
    g = GroupBy(group_by)
    groups, jobs = costs_by(conn, g, tenant=tenant, start=start, end=end)
    return CostReport(
        group_by=g, tenant=tenant, start=start, end=end,
        groups=tuple(groups),
        accuracy=tuple(estimate_accuracy(conn, tenant=tenant, start=start, end=end,
                                         tolerance_bp=tolerance_bp)),
        tolerance_bp=tolerance_bp,
        jobs=jobs,
        cache=cache_summary(conn, tenant=tenant, start=start, end=end),
    )
