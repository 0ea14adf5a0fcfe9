"""Hold, settle, release and expire: the four ledger steps (DESIGN §6).

Each step is one PostgreSQL transaction. Holds check the limit with a conditional
``UPDATE … WHERE committed + held + :x <= limit``, which PostgreSQL re-evaluates after
waiting for the row lock, so the check is exact under any concurrency. Period rows are
always locked in ascending id order, and a hold's own row before any period row, so steps
never deadlock each other. Every step appends ledger entries under a unique idempotency key
(``hold:<job>``, ``settle:<job>``, ``release:<job>``, ``expire:<job>``) and moves the hold
through a guarded status transition, so a replayed step changes nothing and, of a settle
and an expiry racing for one hold, exactly one wins.

A settle or release charges the provider's bill in full. Up to the hold it is the step's own
entry; above it, an ``overage:<job>`` entry in each period (the only thing that may take a
period past its limit: its ``excess``, backed by the CHECK ``committed + held <= limit +
excess``) and an ``overage`` alert in the same transaction. Holds never use the excess.

Each public step takes an optional ``conn``: given one, the step joins the caller's
transaction; on a refusal the caller must roll that transaction back. A job's admission
(``admit_job``: the job row and its hold, as the API writes them) is one statement that
commits on its own.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from orchestrator.errors import (
    AlertsOwed,
    BudgetExceeded,
    HoldNotActive,
    HoldNotFound,
    InvalidAmount,
)
from orchestrator.ledger.admission import PERIOD_MISSING, NewJob, admit_job
from orchestrator.ledger.alerts import Overage, insert_refusal, period_alerts, refusal_bucket
from orchestrator.ledger.endings import ClosingAttempt, JobEnd, end_job
from orchestrator.ledger.periods import PeriodResolver
from orchestrator.ledger.topups import raise_hold
from orchestrator.store.engine import autocommit
from orchestrator.store.jobs import JobRow
from orchestrator.store.statement import Conn, Statement

_T = TypeVar("_T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class HoldReceipt:
    job_id: uuid.UUID
    amount_micros: int
    budget_period_ids: tuple[int, ...]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class StepReceipt:
    """Outcome of settle / release / expire of one hold. ``charged_micros`` is the whole
    charge; ``released_micros`` what of the hold it did not use; ``overage_micros`` what it
    charged above the hold (callers count it: ``JobObserver.overage``)."""

    job_id: uuid.UUID
    status: str
    charged_micros: int
    released_micros: int
    alert_ids: tuple[uuid.UUID, ...] = field(default_factory=tuple)
    replayed: bool = False
    overage_micros: int = 0


# The hold row, the reservation (SQLSTATE OR402 with the refusing budget as JSON in DETAIL
# when a period cannot take it), the lines and the entries; NULL when the job already has a
# hold (migrations 0004 and 0007).
_HOLD = Statement(
    "SELECT orch_hold(:job_id, CAST(:pids AS bigint[]), :amount, :expires_at, :now)"
)
REFUSED = "OR402"
# a job admission that meets a period row created only now calls again (at most this often)
_PERIOD_TRIES = 3
_SELECT_HOLD = Statement(
    "SELECT id, amount_micros, charged_micros, status FROM holds WHERE job_id = :job_id"
)
# Finish the hold (guarded) and move its periods (migration 0006): one row per period as
# updated, joined to its budget, after the hold's amount; one row with NULL period columns for
# a hold no budget covers; no row when the guard refused. With guard true it raises SQLSTATE
# OR2AL instead when the step may owe an alert.
_FINISH_HOLD = Statement(
    "SELECT * FROM orch_finish_hold(:job_id, :status, :kind, :charge, :now, :guard)"
)
_HOLD_LINES = text(
    """
    SELECT hold_id, budget_period_id, amount_micros FROM hold_lines
    WHERE hold_id = ANY(:hold_ids) ORDER BY budget_period_id
    """
)
ALERTS_OWED = "OR2AL"
# an expiry's move (it never adds to committed + held): the excess shrinks with what is past
# the limit, as in orch_apply
_APPLY = Statement(
    """
    UPDATE budget_periods bp
    SET held_micros = bp.held_micros - :release, committed_micros = bp.committed_micros + :charge,
        excess_micros = GREATEST(0, LEAST(bp.excess_micros, bp.committed_micros + :charge
                                          + bp.held_micros - :release - bp.limit_micros))
    FROM budgets b
    WHERE bp.id = :pid AND b.id = bp.budget_id
    RETURNING bp.id, bp.budget_id, bp.period_start, bp.period_end, bp.limit_micros,
              bp.committed_micros, bp.held_micros, b.scope, b.period, b.alert_thresholds_bp,
              b.forecast_thresholds_bp
    """
)
_INSERT_ENTRIES = Statement(
    """
    INSERT INTO ledger_entries
        (budget_period_id, job_id, kind, idempotency_key, held_delta_micros,
         committed_delta_micros, created_at)
    SELECT pid, job, CAST(:kind AS text), CAST(:kind AS text) || ':' || job, -held, committed,
           :now
    FROM unnest(CAST(:pids AS bigint[]), CAST(:jobs AS uuid[]), CAST(:helds AS bigint[]),
                CAST(:commits AS bigint[])) AS t(pid, job, held, committed)
    """
)
# A hold past its expiry, unless its job is still live: queued or running, or final with an
# attempt still open (it may yet be billed); such a hold is its chain's to settle. A hold whose
# job row is gone (or never was: a bare ``Ledger.hold``) expires.
_LOCK_EXPIRED = text(
    """
    SELECT h.id, h.job_id, h.amount_micros FROM holds h
    WHERE h.status = 'held' AND h.expires_at <= :now
      AND NOT EXISTS (
          SELECT 1 FROM jobs j
          WHERE j.id = h.job_id
            AND (j.status IN ('queued', 'running')
                 OR EXISTS (SELECT 1 FROM attempts a
                            WHERE a.job_id = j.id AND a.outcome IS NULL)))
    ORDER BY h.id
    FOR UPDATE OF h SKIP LOCKED
    LIMIT :limit
    """
)
_LOCK_PERIODS = text(
    "SELECT id FROM budget_periods WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"
)
_MARK_EXPIRED = text(
    """
    UPDATE holds SET status = 'expired', charged_micros = 0, finished_at = :now
    WHERE id = ANY(:ids)
    """
)


class Ledger:
    """The budget ledger over one SQLAlchemy engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utcnow,
        hold_ttl: timedelta = timedelta(hours=6),
        refusal_window: timedelta = timedelta(hours=1),
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.hold_ttl = hold_ttl
        self.refusal_window = refusal_window
        self.periods = PeriodResolver(engine)
        # (scope, period, period start, bucket) already alerted: a refusal storm costs no
        # round trip after the first refusal of a window (the database key is the authority)
        self._refused: set[tuple[str, str, str, int]] = set()
        self._refused_lock = threading.Lock()

    @contextmanager
    def _tx(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as own:
            yield own

    # -- hold --------------------------------------------------------------------------------
    def hold(
        self,
        job_id: uuid.UUID,
        scopes: tuple[str, ...],
        amount_micros: int,
        *,
        ttl: timedelta | None = None,
        conn: Connection | None = None,
    ) -> HoldReceipt:
        """Reserve ``amount_micros`` in every budget whose scope is in ``scopes``.

        Raises ``BudgetExceeded`` naming the first budget that cannot take it; then nothing
        is held anywhere. Replaying the same job id returns the existing hold unchanged.

        The hold row, the reservation, its lines and its entries are one statement
        (``orch_hold``), the step's last. Without ``conn`` it goes to PostgreSQL together
        with the COMMIT in one message: the period rows every hold and settle of a budget
        must lock stay locked for the server's work only.
        """
        if amount_micros < 0:
            raise InvalidAmount(f"hold amount must be >= 0, got {amount_micros}")
        now = self.clock()
        with self._tx(conn) as tx:
            pids = self.periods.covering_period_ids(tx, scopes, now)
            params = {"job_id": job_id, "pids": pids, "amount": amount_micros,
                      "expires_at": now + (ttl or self.hold_ttl), "now": now}
            try:
                row = (_HOLD.first_and_commit(tx, params) if conn is None
                       else _HOLD.first(tx, params))
            except DBAPIError as exc:
                refused = refusal(exc, amount_micros)
                if refused is None:
                    raise
                raise refused from None
            if row is None or row[0] is None:
                return self._replayed_hold(tx, job_id, amount_micros)
        return HoldReceipt(job_id, amount_micros, tuple(pids))

    def _replayed_hold(self, tx: Connection, job_id: uuid.UUID, amount: int) -> HoldReceipt:
        row = _SELECT_HOLD.first(tx, {"job_id": job_id})
        assert row is not None, "a replayed hold exists"
        hold_id, held, _, status = row
        if held != amount:
            raise HoldNotActive(
                f"job {job_id} already holds {held} micro-USD, not {amount}", status=status
            )
        lines = tx.execute(_HOLD_LINES, {"hold_ids": [hold_id]}).all()
        return HoldReceipt(
            job_id, held, tuple(r.budget_period_id for r in lines), replayed=True
        )

    def raise_hold(self, job_id: uuid.UUID, amount_micros: int, *,
                   estimate: bool = False) -> int:
        """Make the job's hold at least ``amount_micros`` in every period it holds in (one
        transaction, ``ledger.topups``), and with ``estimate`` the job's estimate too;
        returns what it added. Raises ``BudgetExceeded``
        naming the first budget that cannot take the extra (then nothing changed), and
        ``HoldNotActive`` / ``HoldNotFound`` when there is no held hold to raise."""
        now = self.clock()
        try:
            with self.engine.begin() as tx:
                return raise_hold(tx, job_id, amount_micros, now, estimate=estimate)
        except DBAPIError as exc:
            with self.engine.connect() as conn:
                held = _SELECT_HOLD.first(conn, {"job_id": job_id})
            refused = refusal(exc, amount_micros - (held[1] if held else 0))
            if refused is None:
                raise
            raise refused from None

    # -- a job's admission -----------------------------------------------------------------
    def admit_job(self, job: NewJob, scopes: tuple[str, ...], hold_ttl: timedelta, *,
                  conn: Connection | None = None) -> JobRow | None:
        """Write the queued ``job`` and hold its estimate in every budget whose scope is in
        ``scopes``: one statement that commits on its own (``ledger.admission``). None: the
        tenant's idempotency key is taken, and nothing changed.

        With ``conn`` the statement joins the caller's transaction (under a savepoint), so
        the caller can write more with the job before anything commits (the result cache
        links a job to the one it waits for).

        Raises ``BudgetExceeded`` naming the first budget that cannot take the estimate;
        then neither the job nor any hold was written.
        """
        amount = job.estimated_cost_micros
        if amount < 0:
            raise InvalidAmount(f"hold amount must be >= 0, got {amount}")
        now = self.clock()
        for tries_left in range(_PERIOD_TRIES, 0, -1):
            try:
                if conn is not None:
                    with conn.begin_nested():
                        return admit_job(conn, job, scopes, now + hold_ttl, now)
                with autocommit(self.engine).connection() as auto:
                    return admit_job(auto, job, scopes, now + hold_ttl, now)
            except DBAPIError as exc:
                if _sqlstate(exc) == PERIOD_MISSING and tries_left > 1:
                    # a new period (or a budget created meanwhile): its row, then again
                    with self.engine.begin() as tx:
                        self.periods.covering_period_ids(tx, scopes, now)
                    continue
                refused = refusal(exc, amount)
                if refused is None:
                    raise
                raise refused from None
        raise AssertionError("unreachable: the last try returns or raises")

    # -- settle / release ------------------------------------------------------------------
    def settle(
        self, job_id: uuid.UUID, actual_micros: int, *, conn: Connection | None = None
    ) -> StepReceipt:
        """Charge the actual cost and release the hold. A cost above the hold is charged in
        full: the rest is an ``overage:<job>`` entry and an ``overage`` alert per covering
        period (``StepReceipt.overage_micros``), and may take a period past its limit.

        Without ``conn`` the step is one statement that commits on its own (see
        :meth:`_guarded`); with ``conn`` it joins the caller's transaction.
        """
        return self._finish(job_id, "settled", "settle", actual_micros, conn)

    def release(
        self, job_id: uuid.UUID, *, charge_micros: int = 0, conn: Connection | None = None
    ) -> StepReceipt:
        """Give the hold back; charge ``charge_micros`` where the backend billed a cost (in
        full, as :meth:`settle` does). ``conn`` as for :meth:`settle`."""
        return self._finish(job_id, "released", "release", charge_micros, conn)

    def _finish(
        self, job_id: uuid.UUID, status: str, kind: str, charge: int, conn: Connection | None
    ) -> StepReceipt:
        if charge < 0:
            raise InvalidAmount(f"charge must be >= 0, got {charge}")
        now = self.clock()

        def step(tx: Conn, guard: bool) -> StepReceipt:
            return self._finish_in(tx, job_id, status, kind, charge, now, guard)

        return step(conn, False) if conn is not None else self._guarded(step)

    def _finish_in(
        self, tx: Conn, job_id: uuid.UUID, status: str, kind: str, charge: int,
        now: datetime, guard: bool,
    ) -> StepReceipt:
        rows = _guard_refusal(lambda: _FINISH_HOLD.all(tx, {
            "job_id": job_id, "status": status, "kind": kind, "charge": charge, "now": now,
            "guard": guard}))
        if not rows:
            return self._refused_finish(tx, job_id, status, charge)
        over = Overage(job_id, rows[0][0], charge)
        alert_ids = () if guard else period_alerts(tx, (r[1:] for r in rows), charge, now,
                                                   over)
        return StepReceipt(job_id, status, charge, max(0, over.hold_micros - charge), alert_ids,
                           overage_micros=over.overage_micros)

    def _refused_finish(
        self, tx: Conn, job_id: uuid.UUID, status: str, charge: int
    ) -> StepReceipt:
        existing = _SELECT_HOLD.first(tx, {"job_id": job_id})
        if existing is None:
            raise HoldNotFound(f"no hold for job {job_id}", job_id=str(job_id))
        _, held, charged, now_status = existing
        if now_status == status and charged == charge:
            return StepReceipt(job_id, status, charge, max(0, held - charge), replayed=True,
                               overage_micros=max(0, charge - held))
        raise HoldNotActive(f"hold for job {job_id} is already {now_status}",
                            status=now_status)

    # -- a job's ending ----------------------------------------------------------------------
    def end_job(
        self, job_id: uuid.UUID, status: str, now: datetime, *,
        attempt: ClosingAttempt | None = None, backend: str | None = None,
        result: dict[str, Any] | None = None, error_code: str | None = None,
        error_message: str | None = None, conclude_in_s: float = 0.0,
    ) -> JobEnd | None:
        """The job's last attempt closed (``attempt``), its final ``status`` and cost, and its
        hold settled (succeeded) or released, charging the cost in full (above the hold: an
        overage, ``JobEnd.overage_micros``): one statement that commits on its own (see
        :meth:`_guarded` and ``ledger.endings``). An attempt still open keeps the hold until
        it concludes (``conclude_in_s``: when to look at it again). ``result`` with a
        succeeded attempt of a job that had already ended (cancelled, or failed by its
        deadline) becomes its result (``JobEnd.kept_result``)."""

        def step(tx: Conn, guard: bool) -> JobEnd | None:
            return _guard_refusal(lambda: end_job(
                tx, job_id, status, now, guard=guard, attempt=attempt, backend=backend,
                result=result, error_code=error_code, error_message=error_message,
                conclude_in_s=conclude_in_s))

        return self._guarded(step)

    def _guarded(self, step: Callable[[Conn, bool], _T]) -> _T:
        """Run a settle-like ``step`` as one statement outside any transaction, so it commits
        on its own and the period rows every job of a tenant touches stay locked for the
        server's work only; with the guard on, the server refuses it (``AlertsOwed``, nothing
        changed) when the charge may owe an alert. Then it runs again in a transaction
        without the guard and writes its alerts before the COMMIT."""
        try:
            with autocommit(self.engine).connection() as conn:
                return step(conn, True)
        except AlertsOwed:
            with self.engine.begin() as tx:
                return step(tx, False)

    # -- refusal alerts ----------------------------------------------------------------------
    def record_refusal(
        self, exc: BudgetExceeded, *, conn: Connection | None = None
    ) -> uuid.UUID | None:
        """Write the ``refusal`` alert for the budget that refused a hold, at most once per
        budget period per ``refusal_window`` (by the ledger clock). Call it after the refused
        hold's transaction rolled back: without ``conn`` it runs its own short transaction.

        Returns the new alert's id, or None when this window already has one.
        """
        now = self.clock()
        bucket = refusal_bucket(now, self.refusal_window)
        start = str(exc.details.get("period_start"))
        key = (exc.scope, exc.period, start, bucket)
        with self._refused_lock:
            if key in self._refused:
                return None
        with self._tx(conn) as tx:
            alert_id = insert_refusal(
                tx, scope=exc.scope, period=exc.period,
                period_start=datetime.fromisoformat(start), now=now, bucket=bucket,
                requested_micros=exc.requested_micros, remaining_micros=exc.remaining_micros,
            )
        if conn is None:  # committed: later refusals of this window skip the database
            with self._refused_lock:
                if len(self._refused) > 10_000:
                    self._refused.clear()
                self._refused.add(key)
        return alert_id

    # -- expire ------------------------------------------------------------------------------
    def expire_stale(self, *, limit: int = 500, conn: Connection | None = None) -> list[uuid.UUID]:
        """Release every hold past its expiry whose job is no longer live (SKIP LOCKED:
        sweepers never block each other). A queued or running job's hold, or a final job's
        with an attempt still open, stays held for its chain to settle, however old.

        Returns the job ids whose holds expired.
        """
        now = self.clock()
        with self._tx(conn) as tx:
            holds = tx.execute(_LOCK_EXPIRED, {"now": now, "limit": limit}).all()
            if not holds:
                return []
            tx.execute(_MARK_EXPIRED, {"ids": [h.id for h in holds], "now": now})
            job_of = {h.id: h.job_id for h in holds}
            by_job: dict[uuid.UUID, list[tuple[int, int, int]]] = {h.job_id: [] for h in holds}
            for ln in tx.execute(_HOLD_LINES, {"hold_ids": list(job_of)}):
                by_job[job_of[ln.hold_id]].append((ln.budget_period_id, ln.amount_micros, 0))
            # the periods locked (ascending) before the entries' foreign keys lock them, as
            # orch_apply does
            tx.execute(_LOCK_PERIODS, {"ids": sorted({pid for moves in by_job.values()
                                                      for pid, _, _ in moves})})
            _insert_entries(tx, "expire", now, [(pid, job_id, held, 0)
                                                for job_id, moves in by_job.items()
                                                for pid, held, _ in moves])
            # Apply per period in ascending id order across the whole batch (no deadlock).
            totals: dict[int, int] = {}
            for moves in by_job.values():
                for pid, release, _ in moves:
                    totals[pid] = totals.get(pid, 0) + release
            for pid in sorted(totals):
                _APPLY.run(tx, {"release": totals[pid], "charge": 0, "pid": pid})
            return list(by_job)


def _sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE the server raised (our functions' OR402 and OR2AL among them)."""
    return getattr(exc.orig, "sqlstate", None)


def _guard_refusal(run: Callable[[], _T]) -> _T:
    """``run()``, with the guard's SQLSTATE OR2AL raised as ``AlertsOwed``."""
    try:
        return run()
    except DBAPIError as exc:
        if _sqlstate(exc) == ALERTS_OWED:
            raise AlertsOwed() from None
        raise


def refusal(exc: DBAPIError, requested: int) -> BudgetExceeded | None:
    """The BudgetExceeded that ``orch_reserve`` raised as SQLSTATE OR402 (None: another
    error). Its DETAIL is the refusing budget as JSON."""
    if _sqlstate(exc) != REFUSED:
        return None
    info = json.loads(exc.orig.diag.message_detail)  # type: ignore[union-attr]
    start = datetime.fromisoformat(info["period_start"]).astimezone(UTC)
    return BudgetExceeded(
        scope=info["scope"], period=info["period"], period_start=start.isoformat(),
        remaining_micros=max(0, int(info["remaining"])), requested_micros=requested,
    )


def _insert_entries(
    tx: Connection, kind: str, now: datetime, rows: list[tuple[int, uuid.UUID, int, int]]
) -> None:
    """Append (period id, job id, held released, committed added) entries in one statement;
    each is keyed ``<kind>:<job>`` (unique per period, so a replayed step adds nothing)."""
    if rows:
        _INSERT_ENTRIES.run(tx, {
            "kind": kind, "now": now, "pids": [r[0] for r in rows], "jobs": [r[1] for r in rows],
            "helds": [r[2] for r in rows], "commits": [r[3] for r in rows],
        })
