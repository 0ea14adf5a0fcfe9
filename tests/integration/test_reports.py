"""Cost reports from the ledger against real PostgreSQL: every grouping adds up, to the
micro-dollar, to the ledger's committed totals; estimate accuracy per backend; the HTTP route
(tenant scoping) and the `orchestrator report` command against the live API."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from orchestrator.domain.budgets import covering_scopes
from orchestrator.ledger import Ledger
from orchestrator.reports import GroupBy, cost_report, estimate_accuracy
from orchestrator.store import jobs as repo

from .api_fixture import Api, api_fixture  # noqa: F401
from .ledger_helpers import FakeClock, assert_sound, make_budget

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
BIG = 10**12
BACKENDS = ("vid-a", "vid-b", "img-a")


@dataclass
class Charged:
    tenant: str
    project: str | None
    backend: str | None
    tier: str
    day: str
    micros: int


def insert_job(
    engine: Engine, job_id: uuid.UUID, tenant: str, *, tier: str = "draft",
    project: str | None = None, candidates: dict[str, int], worst: int | None = None,
    at: datetime = NOV_1,
) -> None:
    route = {"candidates": [{"backend": b, "estimated_cost_micros": e,
                             "estimated_cost_usd": e / 1e6} for b, e in candidates.items()]}
    spec = {"kind": "video", "metadata": {"project": project} if project else {}}
    with engine.begin() as tx:
        repo.insert_job(tx, job_id=job_id, tenant=tenant, kind="video", tier=tier, spec=spec,
                        route=route, estimated_cost_micros=worst or max(candidates.values()),
                        deadline_at=at + timedelta(hours=1), chain_token=uuid.uuid4(),
                        wake_at=at)


def finish_job(engine: Engine, job_id: uuid.UUID, status: str, backend: str | None,
               cost: int | None, at: datetime) -> None:
    with engine.begin() as tx:
        tx.execute(text("UPDATE jobs SET status = :s, backend = :b, cost_micros = :c, "
                        "finished_at = :at WHERE id = :id"),
                   {"s": status, "b": backend, "c": cost, "at": at, "id": job_id})


def run_workload(db: Engine, seed: int = 11, n: int = 60) -> list[Charged]:
    """Jobs through the real ledger across tenants, projects, backends, tiers and days
    (two months); returns what each job was charged."""
    for scope in ("global", "tenant:acme", "tenant:acme/project:p1", "tenant:globex"):
        make_budget(db, scope, "month", BIG)
    rng = random.Random(seed)
    clock = FakeClock(NOV_1)
    ledger = Ledger(db, clock=clock)
    charged: list[Charged] = []
    for _ in range(n):
        tenant = rng.choice(["acme", "acme", "globex"])
        project = rng.choice([None, "p1", "p2"])
        tier = rng.choice(["draft", "standard"])
        backend = rng.choice(BACKENDS)
        clock.at = NOV_1 + timedelta(days=rng.choice([0, 1, 2, 29, 30, 31]),
                                     seconds=rng.randrange(86_400))
        estimates = {b: rng.randrange(100_000, 5_000_000) for b in BACKENDS}
        worst = max(estimates.values())
        job = uuid.uuid4()
        insert_job(db, job, tenant, tier=tier, project=project, candidates=estimates,
                   at=clock.at)
        ledger.hold(job, covering_scopes(tenant, project), worst)
        outcome = rng.choice(["settle", "settle", "settle", "partial", "release", "held"])
        micros = 0
        if outcome == "settle":
            # up to 10 % above the worst case: an overage, charged in full and reported
            micros = round(estimates[backend] * rng.uniform(0.9, 1.1))
            ledger.settle(job, micros)
            finish_job(db, job, "succeeded", backend, micros, clock.at)
        elif outcome == "partial":
            micros = rng.randrange(1, worst)
            ledger.release(job, charge_micros=micros)
            finish_job(db, job, "failed", backend, micros, clock.at)
        elif outcome == "release":
            ledger.release(job)
            finish_job(db, job, "cancelled", None, 0, clock.at)
        if micros:
            charged.append(Charged(tenant, project, backend, tier,
                                   clock.at.date().isoformat(), micros))
    assert_sound(db)
    with db.connect() as conn:  # some bills went past their hold
        assert conn.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'overage'")).scalar_one() > 0
    return charged


def ledger_committed(db: Engine, scope: str) -> int:
    """sum(committed) of the ledger entries of one budget, over all its periods."""
    with db.connect() as conn:
        return int(conn.execute(text(
            "SELECT COALESCE(SUM(e.committed_delta_micros), 0) FROM ledger_entries e "
            "JOIN budget_periods bp ON bp.id = e.budget_period_id "
            "JOIN budgets b ON b.id = bp.budget_id WHERE b.scope = :s"), {"s": scope}
        ).scalar_one())


def expected(charged: list[Charged], group_by: GroupBy, tenant: str | None) -> dict[Any, int]:
    out: dict[Any, int] = defaultdict(int)
    for c in charged:
        if tenant is None or c.tenant == tenant:
            key = getattr(c, group_by.value)
            if group_by is GroupBy.PROJECT and tenant is None and key is not None:
                key = f"{c.tenant}/{key}"  # one tenant's p1 is not another's
            out[key] += c.micros
    return dict(out)


@pytest.mark.parametrize("group_by", list(GroupBy))
def test_every_grouping_adds_up_to_the_ledger_to_the_micro_dollar(
    db: Engine, group_by: GroupBy
) -> None:
    charged = run_workload(db)
    with db.connect() as conn:
        every = cost_report(conn, group_by)
        acme = cost_report(conn, group_by, tenant="acme")
        globex = cost_report(conn, group_by, tenant="globex")
    # each job once, though its charge sits in 2-3 budgets: equal to any one covering budget
    assert every.total_micros == ledger_committed(db, "global") > 0
    assert acme.total_micros == ledger_committed(db, "tenant:acme") > 0
    assert globex.total_micros == ledger_committed(db, "tenant:globex") > 0
    assert acme.total_micros + globex.total_micros == every.total_micros
    for rep, tenant in ((every, None), (acme, "acme"), (globex, "globex")):
        assert {g.key: g.cost_micros for g in rep.groups} == expected(charged, group_by, tenant)
        assert rep.jobs == sum(1 for c in charged if tenant in (None, c.tenant))
    if group_by is GroupBy.PROJECT:  # each project's group is what its budget committed
        p1 = next(g for g in acme.groups if g.key == "p1")
        assert p1.cost_micros == ledger_committed(db, "tenant:acme/project:p1")
        across = {g.key: g.cost_micros for g in every.groups}
        assert across["acme/p1"] == p1.cost_micros
        assert {"acme/p1", "globex/p1"} <= across.keys() and "p1" not in across
    if group_by is GroupBy.TENANT:
        assert {g.key: g.cost_micros for g in every.groups} == {
            "acme": ledger_committed(db, "tenant:acme"),
            "globex": ledger_committed(db, "tenant:globex")}


def test_from_and_to_select_charges_by_ledger_time(db: Engine) -> None:
    charged = run_workload(db)
    start, end = NOV_1 + timedelta(days=1), NOV_1 + timedelta(days=30)
    with db.connect() as conn:
        rep = cost_report(conn, GroupBy.DAY, start=start, end=end)
    want = {c.day for c in charged if "2026-11-02" <= c.day < "2026-12-01"}
    assert {g.key for g in rep.groups} == want and want
    assert rep.total_micros == sum(c.micros for c in charged if c.day in want)
    with pytest.raises(ValueError, match="after"), db.connect() as conn:
        cost_report(conn, GroupBy.DAY, start=end, end=start)


def test_by_backend_each_charge_goes_to_the_backends_whose_attempts_billed_it(
        db: Engine) -> None:
    """A provider's invoice can be checked against its group: a failed-over job's first bill
    stays with the backend that sent it, a failed job's partial bill is not left without a
    backend, and a charge split over two backends adds up to the micro-dollar."""
    make_budget(db, "tenant:acme", "month", BIG)
    ledger = Ledger(db, clock=FakeClock(NOV_1))

    def job_billed_by(bills: list[tuple[str, int]], backend: str | None, hold: int) -> None:
        job = uuid.uuid4()
        insert_job(db, job, "acme", candidates={"vid-a": hold})
        ledger.hold(job, covering_scopes("acme", None), hold)
        with db.begin() as tx:
            for number, (name, cost) in enumerate(bills, 1):
                tx.execute(text(
                    "INSERT INTO attempts (job_id, number, backend, outcome, cost_micros) "
                    "VALUES (:j, :n, :b, 'failed', :c)"), {"j": job, "n": number, "b": name,
                                                          "c": cost})
        total = sum(cost for _, cost in bills)
        if backend is None:  # failed, its partial bill charged
            ledger.release(job, charge_micros=total)
        else:
            ledger.settle(job, total)
        finish_job(db, job, "failed" if backend is None else "succeeded", backend, total,
                   NOV_1)

    job_billed_by([("vid-b", 300_000), ("vid-a", 700_000)], "vid-a", hold=2_000_000)
    job_billed_by([("img-a", 250_001)], None, hold=1_000_000)
    # past its hold: a settle and an overage, each split over the two backends
    job_billed_by([("vid-b", 300_001), ("vid-a", 400_000)], "vid-a", hold=500_000)

    with db.connect() as conn:
        rep = cost_report(conn, GroupBy.BACKEND, tenant="acme")
        overages = conn.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'overage'")).scalar_one()
    assert overages > 0
    groups = {g.key: g for g in rep.groups}
    assert set(groups) == {"img-a", "vid-a", "vid-b"}
    assert rep.total_micros == ledger_committed(db, "tenant:acme") == 1_950_002
    assert (groups["img-a"].cost_micros, groups["img-a"].jobs) == (250_001, 1)
    # each of the third job's two charges is split with its own rounding: within 1 each
    assert abs(groups["vid-b"].cost_micros - 600_001) <= 2
    assert abs(groups["vid-a"].cost_micros - 1_100_000) <= 2
    assert (groups["vid-a"].jobs, groups["vid-b"].jobs) == (2, 2)
    assert rep.jobs == 3  # a job in two groups counts once


def test_accuracy_compares_each_backends_own_estimate_with_the_actual(db: Engine) -> None:
    # vid-a estimated $1.00 (the worst case was $3.00 on vid-b): actual / estimate
    ratios = {"vid-a": [0.9, 0.95, 1.0, 1.04, 1.06], "vid-b": [1.0, 1.2]}
    for backend, rs in ratios.items():
        for r in rs:
            job = uuid.uuid4()
            est = 1_000_000 if backend == "vid-a" else 3_000_000
            insert_job(db, job, "acme", candidates={"vid-a": 1_000_000, "vid-b": 3_000_000})
            finish_job(db, job, "succeeded", backend, round(est * r), NOV_1)
    other = uuid.uuid4()  # no candidate for its backend: the job's estimate is used
    insert_job(db, other, "globex", candidates={"vid-a": 2_000_000})
    finish_job(db, other, "succeeded", "img-a", 2_100_000, NOV_1)
    failed = uuid.uuid4()  # only succeeded jobs count
    insert_job(db, failed, "acme", candidates={"vid-a": 1_000_000})
    finish_job(db, failed, "failed", "vid-a", 10, NOV_1)

    with db.connect() as conn:
        acc = {a.backend: a for a in estimate_accuracy(conn)}
        mine = {a.backend for a in estimate_accuracy(conn, tenant="acme")}
        later = estimate_accuracy(conn, start=NOV_1 + timedelta(seconds=1))
    assert mine == {"vid-a", "vid-b"} and later == []
    a = acc["vid-a"]
    assert a.jobs == 5 and a.within_tolerance == 3 and a.within_share == 0.6  # 0.95 counts
    assert a.estimate_micros == 5_000_000 and a.actual_micros == 4_950_000
    assert a.mean_ratio == pytest.approx(0.99)
    assert a.p50_ratio == pytest.approx(1.0) and a.p95_ratio == pytest.approx(1.056)
    b = acc["vid-b"]
    assert (b.jobs, b.within_tolerance) == (2, 1) and b.p50_ratio == pytest.approx(1.1)
    assert acc["img-a"].within_tolerance == 1 and acc["img-a"].mean_ratio == pytest.approx(1.05)


def test_accuracy_counts_only_what_the_backend_that_ran_the_job_billed(db: Engine) -> None:
    """A failed-over job's cost includes the bill of the backend that failed (a run billed
    for its time, an uncertain attempt concluded billed): that is not the estimate error of
    the backend it succeeded on. Its accuracy, before and after calibration, compares that
    backend's own bill (its succeeded attempt's, what calibration learns) with its
    estimate and expected cost."""
    job = uuid.uuid4()
    insert_job(db, job, "acme", candidates={"vid-b": 600_000, "vid-a": 1_200_000})
    with db.begin() as tx:  # the route's expected costs: vid-a calibrated at x 0.5
        tx.execute(text(
            "UPDATE jobs SET route = jsonb_set(route, '{candidates,1,expected_cost_micros}', "
            "'600000') WHERE id = :id"), {"id": job})
        for number, (name, outcome, cost) in enumerate(
                [("vid-b", "failed", 400_000), ("vid-a", "succeeded", 600_000)], 1):
            tx.execute(text(
                "INSERT INTO attempts (job_id, number, backend, outcome, cost_micros) "
                "VALUES (:j, :n, :b, :o, :c)"), {"j": job, "n": number, "b": name,
                                                 "o": outcome, "c": cost})
    finish_job(db, job, "succeeded", "vid-a", 1_000_000, NOV_1)

    with db.connect() as conn:
        (a,) = estimate_accuracy(conn)
    assert (a.backend, a.jobs, a.estimate_micros) == ("vid-a", 1, 1_200_000)
    assert a.actual_micros == 600_000  # not vid-b's 400_000 on top
    assert a.p50_ratio == pytest.approx(0.5) and a.err_p95 == pytest.approx(0.5)
    assert a.expected_micros == 600_000
    assert a.calibrated_within == 1 and a.calibrated_err_p95 == pytest.approx(0.0)


# -- over HTTP ---------------------------------------------------------------------------------

def test_the_route_is_tenant_scoped_and_exact(api: Api) -> None:
    charged = run_workload(api.rig.engine, n=30)
    acme = api.tenant("acme").get("/v1/reports/costs", params={"group_by": "tier"})
    assert acme.status_code == 200, acme.text
    body = acme.json()
    assert body["tenant"] == "acme" and body["group_by"] == "tier"
    assert {g["key"]: g["cost_micros"] for g in body["groups"]} == expected(
        charged, GroupBy.TIER, "acme")
    assert body["total_micros"] == ledger_committed(api.rig.engine, "tenant:acme")
    assert body["total_usd"] == body["total_micros"] / 1e6
    assert all(g["cost_usd"] == g["cost_micros"] / 1e6 for g in body["groups"])

    denied = api.tenant("acme").get("/v1/reports/costs", params={"tenant": "globex"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    everyone = api.admin().get("/v1/reports/costs", params={"group_by": "backend"}).json()
    assert everyone["tenant"] is None
    assert everyone["total_micros"] == ledger_committed(api.rig.engine, "global")
    one = api.admin().get("/v1/reports/costs", params={"tenant": "globex"}).json()
    assert one["total_micros"] == ledger_committed(api.rig.engine, "tenant:globex")

    bad = api.tenant().get("/v1/reports/costs", params={"group_by": "colour"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    backwards = api.tenant().get("/v1/reports/costs",
                                 params={"from": "2026-11-05", "to": "2026-11-01"})
    assert backwards.status_code == 422
    window = api.tenant().get("/v1/reports/costs", params={
        "group_by": "day", "from": "2026-11-02T00:00:00", "to": "2026-12-01T00:00:00Z"}).json()
    assert all("2026-11-02" <= g["key"] < "2026-12-01" for g in window["groups"])
    assert window["from"] == "2026-11-02T00:00:00+00:00"


def test_the_report_command_prints_the_same_numbers(api: Api, cli: typer.Typer) -> None:
    run_workload(api.rig.engine, n=20)
    opts = ["--api-url", api.url, "--api-key", api.keys["acme"]]
    as_json = CliRunner().invoke(cli, ["report", "--group-by", "project", "--json", *opts])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data == api.tenant().get("/v1/reports/costs",
                                    params={"group_by": "project"}).json()
    shown = CliRunner().invoke(cli, ["report", "--group-by", "project", *opts])
    assert shown.exit_code == 0, shown.output
    total_micros = data["total_micros"]
    assert f"${total_micros // 10**6}.{total_micros % 10**6:06d}" in shown.stdout
    assert "costs by project for acme" in shown.stdout and "(none)" in shown.stdout
    bad = CliRunner().invoke(cli, ["report", "--tenant", "globex", *opts])
    assert bad.exit_code == 1
    assert bad.stderr.strip().startswith("error: forbidden: ")


def test_a_charge_across_a_period_end_is_in_its_holds_budget_period_and_the_reports_later_window(
        db: Engine) -> None:
    """What docs/api.md tells a finance reader: a budget period counts a job where its hold
    was made; the report dates the charge when it was made. Held on the last second of
    November and settled in December, the job is in November's budget and December's
    report (the monthly figures differ by the jobs in flight across the month's end)."""
    budget = make_budget(db, "tenant:acme", "month", BIG)
    clock = FakeClock(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    ledger = Ledger(db, clock=clock)
    job = uuid.uuid4()
    insert_job(db, job, "acme", candidates={"vid-a": 2_000_000}, at=clock.at)
    ledger.hold(job, covering_scopes("acme"), 2_000_000)
    clock.at = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
    ledger.settle(job, 1_500_000)
    with db.connect() as conn:
        periods = conn.execute(text(
            "SELECT period_start, committed_micros, held_micros FROM budget_periods "
            "WHERE budget_id = :b ORDER BY period_start"), {"b": budget}).all()
        november = cost_report(conn, GroupBy.DAY, start=NOV_1, end=datetime(2026, 12, 1,
                                                                           tzinfo=UTC))
        december = cost_report(conn, GroupBy.DAY, start=datetime(2026, 12, 1, tzinfo=UTC),
                               end=datetime(2027, 1, 1, tzinfo=UTC))
    assert [(p.period_start, p.committed_micros, p.held_micros) for p in periods] == [
        (NOV_1, 1_500_000, 0)]  # the hold came back to November, which was charged
    assert november.total_micros == 0
    assert [(g.key, g.cost_micros) for g in december.groups] == [("2026-12-01", 1_500_000)]
    assert_sound(db)
