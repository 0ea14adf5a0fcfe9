"""Backup and restore of a realistic database: the RPO/RTO figures of docs/operations.md.

Makes --jobs finished jobs in SQL (each with its attempt, settled hold, two hold lines and
four ledger entries: hold and settle in a global and a tenant budget, counters equal to the
entries), then times ``create_backup`` and ``restore_backup`` (into a fresh database,
including the ledger audit). Starts its own embedded PostgreSQL (durable: fsync on, as in
production) unless ORCH_TEST_DATABASE_URL is set.

Last line: backup_s=… restore_s=… jobs=… dump_mb=… db_mb=…
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text

from orchestrator.backup import PgTools, create_backup, restore_backup
from orchestrator.backup.pgtools import wheel_bin_dir
from orchestrator.embedded.scratch import scratch_database, server_urls
from orchestrator.ledger.budgets import set_budget
from orchestrator.ledger.periods import PeriodResolver
from orchestrator.store.engine import make_engine

TENANTS = 20
BIG = 10**15

_JOBS = """
INSERT INTO jobs (id, tenant, status, kind, tier, spec, route, backend, estimated_cost_micros,
                  cost_micros, result, idempotency_key, request_hash, deadline_at, created_at,
                  updated_at, started_at, finished_at)
SELECT gen_random_uuid(), 'bench' || (i % :tenants), 'succeeded', 'video', 'draft',
       jsonb_build_object('kind', 'video', 'tier', 'draft', 'max_cost_usd', 2.5,
           'input', jsonb_build_object('prompt', 'a lighthouse at dusk, take ' || i,
                                       'duration_s', 8, 'resolution', '720p')),
       jsonb_build_object('backends', jsonb_build_array('vid-draft', 'vid-std'),
           'candidates', jsonb_build_array(
               jsonb_build_object('backend', 'vid-draft', 'estimated_cost_micros', 2000000),
               jsonb_build_object('backend', 'vid-std', 'estimated_cost_micros', 3200000))),
       'vid-draft', 3200000, 1500000 + i % 1000,
       jsonb_build_object('url', 'http://127.0.0.1:8100/out/' || i || '.mp4'),
       'key-' || i, md5(i::text), :now + interval '1 hour', :now, :now, :now, :now
FROM generate_series(1, :n) AS i
"""
_ATTEMPTS = """
INSERT INTO attempts (job_id, number, backend, external_id, outcome, fault, cost_micros,
                      started_at, finished_at)
SELECT id, 1, 'vid-draft', 'pred_' || md5(id::text), 'succeeded', 'success', cost_micros,
       created_at, finished_at FROM jobs
"""
_HOLDS = """
INSERT INTO holds (job_id, amount_micros, charged_micros, status, expires_at, created_at,
                   finished_at)
SELECT id, estimated_cost_micros, cost_micros, 'settled', :now + interval '6 hours', :now, :now
FROM jobs
"""
# the period rows covering a job: the global one and its tenant's
_COVER = """
    FROM jobs j JOIN holds h ON h.job_id = j.id
    JOIN budgets b ON b.scope IN ('global', 'tenant:' || j.tenant)
    JOIN budget_periods bp ON bp.budget_id = b.id
"""
_LINES = f"INSERT INTO hold_lines (hold_id, budget_period_id, amount_micros) " \
         f"SELECT h.id, bp.id, h.amount_micros {_COVER}"
_ENTRIES = f"""
INSERT INTO ledger_entries (budget_period_id, job_id, kind, idempotency_key,
                            held_delta_micros, committed_delta_micros, created_at)
SELECT bp.id, j.id, 'hold', 'hold:' || j.id, h.amount_micros, 0, :now {_COVER}
UNION ALL
SELECT bp.id, j.id, 'settle', 'settle:' || j.id, -h.amount_micros, h.charged_micros, :now
{_COVER}
"""
_COUNTERS = """
UPDATE budget_periods bp SET committed_micros = s.c, held_micros = s.h
FROM (SELECT budget_period_id, SUM(committed_delta_micros) c, SUM(held_delta_micros) h
      FROM ledger_entries GROUP BY budget_period_id) s
WHERE s.budget_period_id = bp.id
"""


def populate(engine: Engine, jobs: int) -> None:
    now = datetime.now(UTC)
    scopes = ["global"] + [f"tenant:bench{t}" for t in range(TENANTS)]
    with engine.begin() as conn:
        for scope in scopes:
            set_budget(conn, scope=scope, period="month", limit_micros=BIG, now=now)
    with engine.begin() as conn:
        PeriodResolver(engine).covering_period_ids(conn, tuple(scopes), now)
        params = {"n": jobs, "tenants": TENANTS, "now": now}
        for sql in (_JOBS, _ATTEMPTS, _HOLDS, _LINES, _ENTRIES, _COUNTERS):
            conn.execute(text(sql), params)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    args = parser.parse_args()
    tools = PgTools.at(wheel_bin_dir())
    with server_urls(durable=True) as (server, _), \
            tempfile.TemporaryDirectory(prefix="orch-bench-backup-") as tmp, \
            scratch_database(server) as source:
        engine = make_engine(source, pool_size=2)
        t0 = time.perf_counter()
        populate(engine, args.jobs)
        with engine.connect() as conn:
            db_bytes = conn.execute(text("SELECT pg_database_size(current_database())")
                                    ).scalar_one()
            entries = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one()
        engine.dispose()
        print(f"generated {args.jobs:,} jobs, {entries:,} ledger entries in "
              f"{time.perf_counter() - t0:.1f} s; database {db_bytes / 1e6:.1f} MB")
        dump = Path(tmp) / "orch.dump"
        t0 = time.perf_counter()
        made = create_backup(source, dump, tools)
        backup_s = time.perf_counter() - t0
        print(made.summary())
        with scratch_database(server, migrate=False) as fresh:
            t0 = time.perf_counter()
            restored = restore_backup(fresh, dump, tools)
            restore_s = time.perf_counter() - t0
            if restored.problems:
                raise SystemExit(f"ledger audit after restore: {restored.problems[0]}")
            if restored.counts != made.counts:
                raise SystemExit(f"restored {restored.counts}, backed up {made.counts}")
            print(restored.summary())
    print(f"backup_s={backup_s:.2f} restore_s={restore_s:.2f} jobs={made.counts['jobs']} "
          f"dump_mb={made.size_bytes / 1e6:.1f} db_mb={db_bytes / 1e6:.1f}")


if __name__ == "__main__":
    main()
