"""Submit and quote: route, then job row + budget hold in one statement, then enqueue.

The job row is its own outbox: if the enqueue after the commit fails (or the message is lost),
the sweeper finds the queued job past its ``wake_at`` and starts it (DESIGN §3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.domain.budgets import covering_scopes
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.routing import RoutePlan, plan_route
from orchestrator.errors import BudgetExceeded, Conflict, NoEligibleBackend
from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.service.observe import record_submission
from orchestrator.service.ports import EnqueuePort, HealthPort
from orchestrator.store import jobs as repo

log = logging.getLogger(__name__)

# A queued job whose start message has not run by then is started by the sweeper.
START_GRACE = timedelta(seconds=60)
# Holds outlive the job's deadline by this much; the sweeper fails the job first.
HOLD_MARGIN = timedelta(hours=1)


def request_hash(spec: JobSpec) -> str:
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


class Submitter:
    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        catalogue: Callable[[], Catalogue],
        health: HealthPort,
        enqueue: EnqueuePort,
        clock: Callable[[], datetime],
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.catalogue = catalogue
        self.health = health
        self.enqueue = enqueue
        self.clock = clock

    def quote(self, spec: JobSpec) -> RoutePlan:
        """The ranked plan with reasons. Reads health; changes nothing."""
        cat = self.catalogue()
        return plan_route(spec, cat.backends, self.health.snapshot(cat.names), now=time.time())

    def submit(
        self, tenant: str, spec: JobSpec, idempotency_key: str | None = None
    ) -> tuple[repo.JobRow, bool]:
        """Returns (job, created). Raises NoEligibleBackend, BudgetExceeded, Conflict."""
        rhash = request_hash(spec)
        # A replayed Idempotency-Key is found by the job insert (ON CONFLICT DO NOTHING), not
        # by a lookup before it: the common, first-time submission reads nothing extra.
        plan = self.quote(spec)
        if not plan.candidates:
            if idempotency_key is not None:  # a replay still gets its job, routable or not
                replay = self._replay(tenant, idempotency_key, rhash)
                if replay is not None:
                    return replay, False
            record_submission(spec, NoEligibleBackend.code)
            raise NoEligibleBackend(
                "no backend can run this job", excluded=plan.to_quote()["excluded"]
            )
        job_id, token = uuid.uuid4(), uuid.uuid4()
        try:
            job = self._insert_and_hold(tenant, spec, plan, job_id, token, idempotency_key,
                                        rhash)
        except BudgetExceeded as exc:
            record_submission(spec, BudgetExceeded.code)
            self._alert_refusal(exc)
            raise
        if job is None:  # the key is taken: a replay, or a concurrent twin that won
            assert idempotency_key is not None
            replay = self._replay(tenant, idempotency_key, rhash)
            assert replay is not None  # keys are never deleted
            return replay, False
        record_submission(spec, "accepted", plan.backends[0])
        try:
            self.enqueue.start(job_id, token, spec.priority.value, plan.backends[0])
        except Exception as exc:  # the sweeper will start it; the job is safe in PostgreSQL
            log.warning("enqueue failed; the sweeper will start the job",
                        extra={"job_id": str(job_id), "error": type(exc).__name__})
        return job, True

    def _insert_and_hold(
        self, tenant: str, spec: JobSpec, plan: RoutePlan, job_id: uuid.UUID,
        token: uuid.UUID, idempotency_key: str | None, rhash: str,
    ) -> repo.JobRow | None:
        """Job row and budget hold in one statement; None if the idempotency key is taken."""
        now = self.clock()
        return self.ledger.admit_job(
            NewJob(id=job_id, tenant=tenant, kind=spec.kind.value, tier=spec.tier.value,
                   spec=spec.model_dump(mode="json"), route=plan.to_quote(),
                   estimated_cost_micros=plan.worst_case_micros,
                   deadline_at=now + timedelta(seconds=spec.deadline_s), chain_token=token,
                   wake_at=now + START_GRACE, idempotency_key=idempotency_key,
                   request_hash=rhash),
            covering_scopes(tenant, spec.project),
            hold_ttl=timedelta(seconds=spec.deadline_s) + HOLD_MARGIN,
        )

    def _alert_refusal(self, exc: BudgetExceeded) -> None:
        """The budget's ``refusal`` alert, at most once per window; never hides the 402."""
        try:
            self.ledger.record_refusal(exc)
        except SQLAlchemyError as err:
            log.warning("refusal alert not recorded", extra={"error": type(err).__name__})

    def _replay(self, tenant: str, idempotency_key: str, rhash: str) -> repo.JobRow | None:
        """The job already submitted under this key (None: none is); Conflict if it was
        submitted with another body."""
        with self.engine.begin() as conn:
            existing = repo.get_by_idempotency_key(conn, tenant, idempotency_key)
        return None if existing is None else self._same_request(existing, rhash)

    @staticmethod
    def _same_request(existing: repo.JobRow, rhash: str) -> repo.JobRow:
        if existing.request_hash != rhash:
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                job_id=str(existing.id),
            )
        return existing
