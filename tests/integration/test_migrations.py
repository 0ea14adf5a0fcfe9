"""Migrations run forward from empty, back to base, and match the models; migration 0019
builds its index concurrently (writes to ``attempts`` go on) and replaces a failed build's
INVALID leftover; 0020 builds the index of pending webhook deliveries the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError

from orchestrator.embedded.scratch import scratch_database
from orchestrator.store import jobs as repo
from orchestrator.store.engine import make_engine
from orchestrator.store.migrate import (
    alembic_config,
    downgrade,
    migration_lock,
    schema_behind,
    upgrade,
)
from orchestrator.store.models import Base
from tests.conditions import wait_for

HEAD = "0021"
INDEX = "ix_attempts_backend_external_id"
# as the transactional build of 0019 made it, and as the model declares it
DEFINITION = (f"CREATE INDEX {INDEX} ON public.attempts USING btree (backend, external_id) "
              "WHERE (external_id IS NOT NULL)")
_STATE = text("SELECT pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready FROM pg_index i "
              "WHERE i.indexrelid = to_regclass(:name)")
_OPEN = text("INSERT INTO attempts (job_id, number, backend) VALUES (:j, :n, 'b1')")
# a backend of this database waiting for a lock in a statement about the index (not us)
_BUILD_WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE :q")


def test_upgrade_from_empty_downgrade_to_base_and_up_again(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], migrate=False) as url:
        engine = make_engine(url, pool_size=1)
        try:
            upgrade(url)
            with engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
            assert {t.name for t in Base.metadata.sorted_tables} <= tables

            downgrade(url, "base")
            with engine.connect() as conn:
                assert set(inspect(conn).get_table_names()) == {"alembic_version"}

            upgrade(url)
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
        finally:
            engine.dispose()


@contextmanager
def _database(servers: tuple[str, str], revision: str) -> Iterator[tuple[str, Engine]]:
    with scratch_database(servers[0], migrate=False) as url:
        upgrade(url, revision)
        engine = make_engine(url, pool_size=4)
        try:
            yield url, engine
        finally:
            engine.dispose()


def _index(engine: Engine, name: str = INDEX) -> tuple[str, bool, bool] | None:
    with engine.connect() as conn:
        row = conn.execute(_STATE, {"name": name}).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


def _revision(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


def _job(conn: Connection) -> uuid.UUID:
    job_id, now = uuid.uuid4(), datetime.now(UTC)
    repo.insert_job(conn, job_id=job_id, tenant="acme", kind="text", tier="standard",
                    spec={"kind": "text", "input": {}}, route={}, estimated_cost_micros=1,
                    deadline_at=now + timedelta(hours=1), chain_token=uuid.uuid4(), wake_at=now)
    return job_id


def test_0019_builds_a_valid_index_from_empty_and_from_0018(servers: tuple[str, str]) -> None:
    with _database(servers, "base") as (url, engine):
        upgrade(url)
        assert _index(engine) == (DEFINITION, True, True)

        downgrade(url, "0018")
        assert _index(engine) is None and _revision(engine) == "0018"
        upgrade(url)
        assert _index(engine) == (DEFINITION, True, True) and _revision(engine) == HEAD


DUE = "ix_webhook_deliveries_due"
DUE_DEFINITION = (f"CREATE INDEX {DUE} ON public.webhook_deliveries USING btree (tenant, target, "
                  "next_attempt_at, id) WHERE ((status)::text = 'pending'::text)")


def test_0020_builds_a_valid_index_of_pending_deliveries_from_0019(
        servers: tuple[str, str]) -> None:
    with _database(servers, "0019") as (url, engine):
        with engine.begin() as conn:
            _job(conn)
        upgrade(url)
        assert _index(engine, DUE) == (DUE_DEFINITION, True, True)
        assert _revision(engine) == HEAD
        downgrade(url, "0019")
        assert _index(engine, DUE) is None


def test_0019_replaces_the_invalid_leftover_of_a_failed_build(servers: tuple[str, str]) -> None:
    with _database(servers, "0018") as (url, engine):
        with engine.begin() as conn:
            job = _job(conn)
        # A concurrent build waits for the transactions writing to the table; one that gives
        # up (lock_timeout here, a cancel or a full disk in production) leaves its index
        # INVALID. Another definition than 0019's, so that keeping it would show.
        with engine.connect() as writer, engine.connect() as builder:
            writer.begin()
            writer.execute(_OPEN, {"j": job, "n": 1})
            builder = builder.execution_options(isolation_level="AUTOCOMMIT")
            builder.execute(text("SET lock_timeout = '100ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                builder.execute(text(f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} "
                                     "ON attempts (backend)"))
            builder.execute(text("RESET lock_timeout"))  # the connection goes back to the pool
            writer.rollback()
        leftover = _index(engine)
        assert leftover is not None and leftover[1] is False

        upgrade(url)
        assert _index(engine) == (DEFINITION, True, True) and _revision(engine) == HEAD


def test_writes_to_attempts_go_on_while_0019_builds(servers: tuple[str, str]) -> None:
    with _database(servers, "0018") as (url, engine):
        with engine.begin() as conn:
            job, another = _job(conn), _job(conn)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                upgrade(url)
            except BaseException as exc:  # asserted on in the test's thread
                errors.append(exc)

        upgrading = threading.Thread(target=run, name="upgrade-0019")
        with engine.connect() as writer:
            # a job's progress, its transaction still open: the build waits for it to end
            writer.begin()
            writer.execute(_OPEN, {"j": job, "n": 1})
            upgrading.start()
            try:
                def build_waits() -> bool:
                    if errors:
                        raise AssertionError(f"the upgrade failed: {errors[0]!r}")
                    with engine.connect() as conn:
                        return bool(conn.execute(_BUILD_WAITING, {"q": f"%{INDEX}%"}).scalar())

                wait_for("the index build to wait for the open transaction", build_waits)
                # another job's progress meanwhile: a transactional CREATE INDEX (share lock
                # requested) would hold it until the build ended
                with engine.begin() as other:
                    other.execute(text("SET LOCAL lock_timeout = '2s'"))
                    other.execute(_OPEN, {"j": another, "n": 1})
                writer.commit()
            finally:
                writer.rollback()  # a failed test must not leave the build waiting
                upgrading.join(timeout=60)
        assert not upgrading.is_alive() and errors == []
        assert _index(engine) == (DEFINITION, True, True) and _revision(engine) == HEAD


def test_a_connection_in_a_transaction_is_refused(servers: tuple[str, str]) -> None:
    """0019 commits the migrations' transaction: Alembic can do that with one it began only
    (with the caller's, an AssertionError inside Alembic)."""
    with _database(servers, "0018") as (url, engine):
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            with pytest.raises(RuntimeError, match="not in a transaction"):
                command.upgrade(cfg, "head")
        with engine.connect() as conn:  # not in a transaction: migrates
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            assert not conn.in_transaction()
        assert _index(engine) == (DEFINITION, True, True) and _revision(engine) == HEAD



# a migrator of the scratch database waiting for a lock (by its application_name: the
# tests' own connections are not counted)
_MIGRATOR_WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = :name AND wait_event_type = 'Lock'")
_WAITS_ITS_TURN = "another migration of this database is running"


def test_two_migrations_at_once_run_one_after_the_other(
        servers: tuple[str, str], tmp_path: Path) -> None:
    """Two `orchestrator migrate` at once (two one-shot services, two replicas' init steps):
    the second waits for the first and finds nothing left to do. Without that both ran
    0013 on top of each other and one died of "relation already exists" (or of Alembic's
    "expected to match one row"), a failed deployment step."""
    with _database(servers, "0012") as (url, engine):
        with engine.begin() as conn:
            job = _job(conn)

        def migrate(name: str) -> tuple[subprocess.Popen[str], Path]:
            env = {**os.environ, "ORCH_DATABASE_URL": f"{url}?application_name={name}"}
            err = tmp_path / f"{name}.err"
            with err.open("w") as sink:
                proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "migrate"],
                                        env=env, cwd=tmp_path, text=True,
                                        stdout=subprocess.DEVNULL, stderr=sink)
            return proc, err

        def lock_wait(name: str) -> Callable[[], bool]:
            def check() -> bool:
                with engine.connect() as conn:
                    return conn.execute(_MIGRATOR_WAITING, {"name": name}).scalar_one() == 1
            return check

        procs: list[tuple[subprocess.Popen[str], Path]] = []
        with engine.connect() as writer:
            # a job's progress, its transaction still open: 0013's tables on jobs wait
            writer.begin()
            writer.execute(text("UPDATE jobs SET wake_at = now() WHERE id = :j"), {"j": job})
            try:
                procs.append(migrate("migrator-a"))
                wait_for("the first migration to wait for the open transaction",
                          lock_wait("migrator-a"))
                procs.append(migrate("migrator-b"))
                # it says so once, then asks again between idle pauses (not in a statement)
                wait_for("the second migration to wait its turn",
                          lambda: _WAITS_ITS_TURN in procs[1][1].read_text())
                assert lock_wait("migrator-a")()  # the first is still at work meanwhile
            finally:
                writer.rollback()
                outcomes = []
                for p, err in procs:
                    try:
                        p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
                    outcomes.append((p.returncode, err.read_text().strip()[-300:]))
        assert [code for code, _ in outcomes] == [0, 0], outcomes
        assert not any("error" in err for _, err in outcomes), outcomes
        assert _WAITS_ITS_TURN in outcomes[1][1], outcomes
        assert _revision(engine) == HEAD and _index(engine) == (DEFINITION, True, True)


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_process_on_an_older_schema_stops_at_its_start_in_one_line(
        servers: tuple[str, str], command: str) -> None:
    """`orchestrator api` on a database at 0012 started and reported itself ready, then
    answered 500 to whatever 0013 on had changed; a worker failed its tasks."""
    with _database(servers, "0012") as (url, _):
        env = {**os.environ, "ORCH_DATABASE_URL": url, "ORCH_REDIS_URL": servers[1]}
        env.pop("ORCH_BACKENDS_FILE", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", command,
             *(["--port", "0"] if command == "api" else [])],
            env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"`orchestrator {command}` started on a schema at 0012") from None
        assert proc.returncode == 1, err
        assert err == ("error: the database is at revision 0012, and this release needs "
                       f"{HEAD}: run `orchestrator migrate` first\n"), err


def test_the_schema_check_passes_at_head_on_a_newer_schema_and_without_a_database(
        servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], migrate=False) as url:
        assert schema_behind(url) == ("the database has no schema of this project, and this "
                                      f"release needs {HEAD}: run `orchestrator migrate` first")
        upgrade(url)
        assert schema_behind(url) is None
        engine = make_engine(url, pool_size=1)
        try:
            with engine.begin() as conn:  # a later release's migration ran
                conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        finally:
            engine.dispose()
        assert schema_behind(url) is None
    # unreachable now: the process starts, and its readiness says why until it can connect
    assert schema_behind("postgresql+psycopg://postgres@127.0.0.1:1/postgres") is None


def test_migrate_to_a_revision_that_does_not_exist_says_so_in_one_line(
        servers: tuple[str, str]) -> None:
    with _database(servers, "0018") as (url, engine):
        env = {**os.environ, "ORCH_DATABASE_URL": url}
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "migrate", "--revision",
                              "nope"], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1
        assert out.stderr == "error: Can't locate revision identified by 'nope'\n", out.stderr
        assert _revision(engine) == "0018"


@pytest.mark.parametrize("start", ["0007", "0012"])
def test_an_upgrade_keeps_the_ledger_and_a_hold_taken_before_it_settles_after(
        servers: tuple[str, str], start: str) -> None:
    """A database with money in it, at an older revision: the upgrade keeps every entry, and
    a hold taken before it is settled after it by the new code (above the hold: 0008's
    overage), with the audit clean."""
    from orchestrator.ledger import Ledger
    from orchestrator.ledger.audit import audit

    with _database(servers, start) as (url, engine):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO budgets (scope, period, limit_micros) VALUES "
                              "('tenant:acme', 'month', 10000000), ('global', 'total', "
                              "50000000)"))
        ledger = Ledger(engine)
        in_flight, done = uuid.uuid4(), uuid.uuid4()
        ledger.hold(in_flight, ("global", "tenant:acme"), 3_000_000)
        ledger.hold(done, ("global", "tenant:acme"), 4_000_000)
        ledger.settle(done, 2_500_000)
        entries = text("SELECT kind, job_id, budget_period_id, held_delta_micros, "
                       "committed_delta_micros FROM ledger_entries ORDER BY id")
        with engine.connect() as conn:
            before = conn.execute(entries).all()

        upgrade(url)
        ledger = Ledger(engine)  # the new code's
        with engine.connect() as conn:
            assert conn.execute(entries).all() == before
        receipt = ledger.settle(in_flight, 3_500_000)
        assert (receipt.charged_micros, receipt.overage_micros) == (3_500_000, 500_000)
        with engine.connect() as conn:
            assert audit(conn) == []
            counters = conn.execute(text(
                "SELECT committed_micros, held_micros FROM budget_periods ORDER BY id")).all()
        assert [tuple(r) for r in counters] == [(6_000_000, 0), (6_000_000, 0)]


def test_a_migration_that_fails_with_its_connection_gone_says_its_own_error(
        servers: tuple[str, str]) -> None:
    """The lock's release on a connection the failure took with it failed too, and its
    error (a closed connection) hid the migration's own."""
    with _database(servers, "0012") as (_, engine), engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.commit()
        with pytest.raises(RuntimeError, match="the migration's own error"), \
                migration_lock(conn):
            with engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            raise RuntimeError("the migration's own error")
