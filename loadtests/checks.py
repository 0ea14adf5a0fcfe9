"""The promises, checked against the database and the simulator's bills.

- **No budget overrun**: :class:`BudgetSampler` reads every budget period during the run; a
  period with ``committed + held > limit + excess`` in any sample is an overrun.
- **No job lost**: :func:`drain` waits (bounded) until every job of the run is final and owes
  no more work (``wake_at`` is NULL exactly then: its attempt concluded, its hold settled).
- **No money spent twice**: :func:`paid_twice` counts, per job and period, more than one
  settle/release/expire entry (or more than one overage); :func:`bills` counts provider bills
  whose reference (the attempt's Idempotency-Key, ``job:<id>:attempt:<n>``) was billed more
  than once, and provider jobs created beyond the attempts the database recorded there.
- The ledger audit (:func:`orchestrator.ledger.audit.audit`) must be clean.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.ledger.audit import audit

FINAL = ("succeeded", "failed", "cancelled")


# -- budgets during the run ------------------------------------------------------------------
@dataclass
class Overrun:
    period_id: int
    committed: int
    held: int
    limit: int
    excess: int


@dataclass
class BudgetSampler:
    """Reads every budget period every ``every_s`` seconds on a thread of its own."""

    engine: Engine
    every_s: float = 1.0
    samples: int = 0
    errors: int = 0
    overruns: list[Overrun] = field(default_factory=list)
    max_utilisation: float = 0.0  # (committed + held) / limit, over periods with a limit
    periods_with_excess: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="budget-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sample()  # and once more after the run

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):  # the sampling period
            self.sample()

    def unchecked(self) -> str | None:
        """A miss when a sample could not read the budgets: ``overruns`` says nothing of
        those moments (no sample at all reads as zero overruns)."""
        if not self.errors and self.samples:
            return None
        return (f"budgets unread at {self.errors} of {self.errors + self.samples} samples: "
                "overruns unchecked then")

    def sample(self) -> None:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT id, committed_micros, held_micros, limit_micros, excess_micros "
                    "FROM budget_periods")).all()
        except SQLAlchemyError:
            self.errors += 1
            return
        self.samples += 1
        for r in rows:
            used = r.committed_micros + r.held_micros
            if used > r.limit_micros + r.excess_micros:
                self.overruns.append(Overrun(r.id, r.committed_micros, r.held_micros,
                                             r.limit_micros, r.excess_micros))
            if r.excess_micros:
                self.periods_with_excess.add(r.id)
            if r.limit_micros > 0:
                self.max_utilisation = max(self.max_utilisation, used / r.limit_micros)


# -- jobs after the run ----------------------------------------------------------------------
@dataclass
class Drained:
    jobs: int  # every job of the run: accepted ones and any the database has for its tenants
    lost: list[str]  # not final (or never written) when the bound passed
    unsettled: list[str]  # final, but still owing work (an attempt to conclude, a hold)
    unreported: int  # in the database but never answered 202 to a client (e.g. cut off)
    waited_s: float


def run_jobs(engine: Engine, tenants: list[str]) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id FROM jobs WHERE tenant = ANY(:t)"),
                            {"t": tenants}).all()
    return {str(r.id) for r in rows}


def drain(engine: Engine, accepted: set[str], tenants: list[str], timeout_s: float,
          poll_s: float = 0.5) -> Drained:
    """Until every job of the run is final and owes nothing, or ``timeout_s`` passes."""
    started = time.monotonic()
    in_db = run_jobs(engine, tenants)
    every = accepted | in_db
    ids = [uuid.UUID(i) for i in every]
    while True:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT id, status, wake_at IS NOT NULL AS owed FROM jobs WHERE id = ANY(:ids)"),
                {"ids": ids}).all()
        seen = {str(r.id): r for r in rows}
        lost = sorted(i for i in every if i not in seen or seen[i].status not in FINAL)
        unsettled = sorted(i for i, r in seen.items() if r.status in FINAL and r.owed)
        if (not lost and not unsettled) or time.monotonic() - started > timeout_s:
            return Drained(len(every), lost, unsettled, len(in_db - accepted),
                           time.monotonic() - started)
        time.sleep(poll_s)  # a poll interval: the loop re-reads the condition


# -- money -----------------------------------------------------------------------------------
def ledger_problems(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return audit(conn)


def paid_twice(engine: Engine) -> int:
    """Jobs finished (or charged an overage) more than once in a period."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            """
            SELECT count(*) FROM (
                SELECT job_id, budget_period_id, kind = 'overage' AS overage
                FROM ledger_entries WHERE kind IN ('settle', 'release', 'expire', 'overage')
                GROUP BY 1, 2, 3 HAVING count(*) > 1) twice
            """)).scalar_one())


_REFERENCE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
                        r"\D+(\d+)$")


@dataclass
class Bills:
    bills: int
    billed_micros: int
    billed_twice: list[str]  # references billed more than once
    created_beyond_attempts: dict[str, int]  # backend -> provider jobs beyond attempts there
    charged_vs_billed: list[str]  # jobs whose ledger charge differs from their bills
    counters: dict[str, dict[str, int]]  # backend -> the simulator's counters


def bills(engine: Engine, simulator_url: str, jobs: set[str], exclusive: bool) -> Bills:
    """The simulator's bills of the run's jobs against the database's attempts and charges.
    ``exclusive``: nothing but this run used the simulator, so its counters are all ours."""
    snap: dict[str, Any] = httpx.get(f"{simulator_url.rstrip('/')}/_control",
                                     timeout=60).json()
    refs: Counter[str] = Counter()
    ours_by_backend: dict[str, set[str]] = defaultdict(set)  # provider ids of our jobs
    billed_by_job: Counter[str] = Counter()
    total = micros = 0
    for backend, state in snap.items():
        for b in state["bills"]:
            m = _REFERENCE.search(b["reference"] or "")
            if m is None or m.group(1) not in jobs:
                continue
            total += 1
            micros += b["cost_micros"]
            refs[f"{backend} {b['reference']}"] += 1
            ours_by_backend[backend].add(b["id"])
            billed_by_job[m.group(1)] += b["cost_micros"]
    ids = [uuid.UUID(j) for j in jobs]
    with engine.connect() as conn:
        attempts = {r.backend: (r.ours, r.every) for r in conn.execute(text(
            "SELECT backend, count(*) FILTER (WHERE job_id = ANY(:ids)) AS ours, "
            "count(*) AS every FROM attempts GROUP BY backend"), {"ids": ids})}
        charged = {str(r.job_id): r.charged for r in conn.execute(text(
            "SELECT job_id, COALESCE(charged_micros, 0) AS charged FROM holds "
            "WHERE job_id = ANY(:ids)"), {"ids": ids})}
    beyond: dict[str, int] = {}
    for backend, state in snap.items():
        ours, every = attempts.get(backend, (0, 0))
        created = state["counters"]["created"] if exclusive else len(ours_by_backend[backend])
        limit = every if exclusive else ours
        if created > limit:
            beyond[backend] = created - limit
    mismatched = sorted(j for j in jobs if charged.get(j, 0) != billed_by_job.get(j, 0))
    return Bills(total, micros, sorted(r for r, n in refs.items() if n > 1), beyond,
                 mismatched, {b: s["counters"] for b, s in snap.items()})


# -- failover --------------------------------------------------------------------------------
def failover_report(engine: Engine, backend: str, down_at: datetime,
                    up_at: datetime | None, tenants: list[str]) -> dict[str, Any]:
    """How jobs fared while ``backend`` was down: attempts there by outcome, the jobs that
    tried it in the window (failed over and succeeded elsewhere, or failed) and their median
    time to finish against that of the jobs it ran before, and whether it ran jobs again
    once up (its breaker closed: after a cooldown of ORCH_BREAKER_COOLDOWN_S, default 30 s)."""
    until = up_at or datetime.max.replace(tzinfo=down_at.tzinfo)
    params = {"b": backend, "d": down_at, "u": until, "t": tenants}
    with engine.connect() as conn:
        outcomes = {r.outcome or "open": r.n for r in conn.execute(text(
            "SELECT outcome, count(*) AS n FROM attempts "
            "WHERE backend = :b AND started_at >= :d AND started_at < :u GROUP BY outcome"),
            params)}
        jobs = conn.execute(text(
            """
            SELECT count(*) AS tried,
                   count(*) FILTER (WHERE j.status = 'succeeded' AND j.backend <> :b) AS moved,
                   count(*) FILTER (WHERE j.status = 'failed') AS failed,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM
                       j.finished_at - j.created_at)) AS p50_s
            FROM jobs j WHERE j.tenant = ANY(:t) AND EXISTS (
                SELECT 1 FROM attempts a WHERE a.job_id = j.id AND a.backend = :b
                  AND a.started_at >= :d AND a.started_at < :u)
            """), params).one()
        baseline = conn.execute(text(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM
                       finished_at - created_at)) AS p50_s
            FROM jobs WHERE tenant = ANY(:t) AND status = 'succeeded' AND backend = :b
              AND created_at < :d
            """), params).one()
        back = conn.execute(text(
            "SELECT count(*) FROM attempts WHERE backend = :b AND started_at >= :u "
            "AND outcome = 'succeeded'"), params).scalar_one() if up_at else 0
    return {"backend": backend, "attempts_while_down": sum(outcomes.values()),
            "outcomes_while_down": outcomes, "jobs_tried_it": jobs.tried,
            "failed_over_ok": jobs.moved, "failed": jobs.failed,
            "p50_job_s_affected": _round(jobs.p50_s), "p50_job_s_before": _round(baseline.p50_s),
            "succeeded_there_after_up": back}


def _round(x: Any) -> float | None:
    return None if x is None else round(float(x), 3)
