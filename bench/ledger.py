"""Ledger throughput vs the same SQL done raw with psycopg (issue 2).

32 threads do hold→settle pairs on ONE hot budget for ~10 s through the Ledger service, then
the same statements raw with psycopg (one connection per thread, same transactions). An "op"
is one ledger step (a hold or a settle). Starts its own embedded PostgreSQL unless
ORCH_TEST_DATABASE_URL is set; by default with fsync off so that the Python overhead, not the
disk, is what the ratio shows (--durable for production settings).

Last line: ledger_ops_per_s=… raw_ops_per_s=… ratio=…
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy.engine import make_url

from orchestrator.domain.budgets import crossed_thresholds, period_window
from orchestrator.embedded.scratch import scratch_database, server_urls
from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import set_budget
from orchestrator.store.engine import make_engine

SCOPES = ("tenant:bench",)
AMOUNT, CHARGE = 1_000_000, 600_000


def run_threads(
    n: int, seconds: float, step: Callable[[], int], setup: Callable[[], None]
) -> float:
    counts = [0] * n
    stop = threading.Event()
    barrier = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        setup()
        barrier.wait()
        while not stop.is_set():
            counts[i] += step()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def bench_ledger(url: str, threads: int, seconds: float) -> float:
    engine = make_engine(url, pool_size=threads, max_overflow=4)
    ledger = Ledger(engine)

    def pair() -> int:
        job = uuid.uuid4()
        ledger.hold(job, SCOPES, AMOUNT)
        ledger.settle(job, CHARGE)
        return 2

    ops = run_threads(threads, seconds, pair, lambda: None)
    engine.dispose()
    return ops


RAW_HOLD = [
    "SELECT id, scope, period, limit_micros FROM budgets WHERE scope = ANY(%(scopes)s)",
    "INSERT INTO holds (job_id, amount_micros, expires_at) VALUES (%(job)s, %(amount)s, "
    "%(exp)s) ON CONFLICT (job_id) DO NOTHING RETURNING id",
    "UPDATE budget_periods SET held_micros = held_micros + %(amount)s WHERE id = %(pid)s "
    "AND committed_micros + held_micros + %(amount)s <= limit_micros RETURNING id",
    "WITH lines AS (INSERT INTO hold_lines (hold_id, budget_period_id, amount_micros) "
    "SELECT %(hold_id)s, pid, %(amount)s FROM unnest(%(pids)s::bigint[]) AS pid "
    "RETURNING budget_period_id) INSERT INTO ledger_entries (budget_period_id, job_id, kind, "
    "idempotency_key, held_delta_micros, committed_delta_micros) SELECT budget_period_id, "
    "%(job)s, 'hold', %(key)s, %(amount)s, 0 FROM lines",
]
RAW_SETTLE = [
    "WITH h AS (UPDATE holds SET status = 'settled', charged_micros = %(charge)s, "
    "finished_at = %(now)s WHERE job_id = %(job)s AND status = 'held' "
    "AND amount_micros >= %(charge)s RETURNING id, amount_micros) "
    "SELECT h.amount_micros, hl.budget_period_id, hl.amount_micros AS line_micros "
    "FROM h LEFT JOIN hold_lines hl ON hl.hold_id = h.id ORDER BY hl.budget_period_id",
    "UPDATE budget_periods bp SET held_micros = bp.held_micros - %(release)s, "
    "committed_micros = bp.committed_micros + %(charge)s FROM budgets b "
    "WHERE bp.id = %(pid)s AND b.id = bp.budget_id RETURNING bp.id, bp.budget_id, "
    "bp.period_start, bp.limit_micros, bp.committed_micros, bp.held_micros, b.scope, b.period, "
    "b.alert_thresholds_bp",
    "INSERT INTO ledger_entries (budget_period_id, job_id, kind, idempotency_key, "
    "held_delta_micros, committed_delta_micros) SELECT pid, job, CAST(%(kind)s AS text), "
    "CAST(%(kind)s AS text) || ':' || job, -held, committed FROM unnest(%(pids)s::bigint[], "
    "%(jobs)s::uuid[], %(helds)s::bigint[], %(commits)s::bigint[]) AS t(pid, job, held, committed)",
]


def bench_raw(url: str, threads: int, seconds: float, period_id: int) -> float:
    u = make_url(url)
    local = threading.local()

    def setup() -> None:
        local.conn = psycopg.connect(
            host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database
        )

    def pair() -> int:
        conn: psycopg.Connection = local.conn  # type: ignore[type-arg]
        job = uuid.uuid4()
        now = datetime.now(UTC)
        with conn.transaction():
            conn.execute(RAW_HOLD[0], {"scopes": list(SCOPES)}).fetchall()
            hold_id = conn.execute(
                RAW_HOLD[1], {"job": job, "amount": AMOUNT, "exp": now + timedelta(hours=6)}
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(RAW_HOLD[3], {"hold_id": hold_id, "pids": [period_id],
                                       "amount": AMOUNT, "job": job, "key": f"hold:{job}"})
            assert conn.execute(RAW_HOLD[2], {"amount": AMOUNT, "pid": period_id}).fetchone()
        with conn.transaction():
            rows = conn.execute(
                RAW_SETTLE[0], {"charge": CHARGE, "now": now, "job": job}
            ).fetchall()
            assert rows
            lines = [(None, r[1], r[2]) for r in rows if r[1] is not None]
            conn.execute(RAW_SETTLE[2], {"kind": "settle", "jobs": [job for _ in lines],
                                         "pids": [ln[1] for ln in lines],
                                         "helds": [ln[2] for ln in lines],
                                         "commits": [CHARGE for _ in lines]})
            for _, pid, amount in lines:
                p = conn.execute(
                    RAW_SETTLE[1], {"release": amount, "charge": CHARGE, "pid": pid}
                ).fetchone()
                assert p is not None
                crossed_thresholds(p[3], p[4] - CHARGE, p[4], tuple(p[8]))
        return 2

    return run_threads(threads, seconds, pair, setup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--durable", action="store_true")
    args = ap.parse_args()
    with server_urls(durable=args.durable) as (server, _), scratch_database(server) as url:
        engine = make_engine(url, pool_size=2)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            set_budget(conn, scope=SCOPES[0], period="month", limit_micros=10**17, now=now,
                       thresholds_bp=(5000, 8000, 10000))
        Ledger(engine).hold(uuid.uuid4(), SCOPES, 0)  # creates the period row
        with engine.connect() as conn:
            period_id = conn.exec_driver_sql(
                "SELECT id FROM budget_periods WHERE period_start = %(s)s",
                {"s": period_window("month", now).start},
            ).scalar_one()
        engine.dispose()
        ledger_ops = bench_ledger(url, args.threads, args.seconds)
        raw_ops = bench_raw(url, args.threads, args.seconds, period_id)
    print(json.dumps({"threads": args.threads, "seconds": args.seconds,
                      "durable": args.durable}))
    print(f"ledger_ops_per_s={ledger_ops:.0f} raw_ops_per_s={raw_ops:.0f} "
          f"ratio={ledger_ops / raw_ops:.2f}")


if __name__ == "__main__":
    main()
