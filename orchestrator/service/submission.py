"""Submit and quote: check the input against the catalogue, route, then job row + budget hold
in one statement, then enqueue.

The job row is its own outbox: if the enqueue after the commit fails (or the message is lost,
or the process stops before sending it), the sweeper finds the queued job past its
``wake_at`` and starts it (DESIGN §3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.domain.budgets import covering_scopes
from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.events import TERMINAL_EVENTS
from orchestrator.domain.inputs import check_input
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.routing import RoutePlan, plan_route
from orchestrator.egress import EgressPolicy
from orchestrator.errors import BudgetExceeded, Conflict, InvalidRequest, NoEligibleBackend
from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.service.cache import Found, Match, ResultCache, record_lookup, record_saved
from orchestrator.service.calibration import Calibrator
from orchestrator.service.observe import JobObserver, record_submission
from orchestrator.service.ports import EnqueuePort, HealthPort
from orchestrator.store import jobs as repo

log = logging.getLogger(__name__)

# A queued job whose start message has not run by then is started by the sweeper.
START_GRACE = timedelta(seconds=60)
# Holds outlive the job's deadline by this much; the sweeper fails the job first.
HOLD_MARGIN = timedelta(hours=1)


def request_hash(spec: JobSpec) -> str:
    """What a new job stores as its body's hash."""
    return _digest(_hashed(spec))


def request_hashes(spec: JobSpec) -> frozenset[str]:
    """Every hash a job admitted with this body may have stored: this release's, and for a
    body without ``cache`` the one of the releases before the result cache (migrations 0007
    to 0011), whose bodies had no such field. A submission retried across an upgrade is then
    its job's replay, not a 409."""
    data = _hashed(spec)
    hashes = {_digest(data)}
    if data["cache"] is None:
        del data["cache"]
        hashes.add(_digest(data))
    return frozenset(hashes)


def _hashed(spec: JobSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    if tuple(data["webhook_events"]) == TERMINAL_EVENTS:  # as bodies hashed before it existed
        del data["webhook_events"]
    return data


def _digest(data: dict[str, Any]) -> str:
    body = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Admission:
    """A submission's job. ``first_backend`` is the plan's first backend for a job created
    now that starts now; None for the replay of an Idempotency-Key, and for a job created
    from the result cache (served at once, or waiting for an identical job in flight:
    ``service.cache``), which is sent no start message."""

    job: repo.JobRow
    first_backend: str | None
    from_cache: bool = False

    @property
    def created(self) -> bool:
        return self.first_backend is not None or self.from_cache


class Submitter:
    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        catalogue: Callable[[], Catalogue],
        health: HealthPort,
        enqueue: EnqueuePort,
        clock: Callable[[], datetime],
        start_grace: timedelta = START_GRACE,
        egress: EgressPolicy | None = None,
        cache: ResultCache | None = None,
        calibrator: Calibrator | None = None,
        observer: JobObserver | None = None,
        signing_secret: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.ledger = ledger
        self.catalogue = catalogue
        self.health = health
        self.enqueue = enqueue
        self.clock = clock
        self.start_grace = start_grace  # a job not started by then is the sweeper's
        self.egress = egress if egress is not None else EgressPolicy()
        self.cache = cache
        self.calibrator = calibrator
        self.observe = observer or JobObserver()
        # makes the tenant's webhook signing secret if it has none (events.endpoints), so a
        # job's webhook_url is called without PUT /v1/webhooks first
        self.signing_secret = signing_secret

    def quote(self, spec: JobSpec) -> RoutePlan:
        """The ranked plan with reasons. Reads health; changes nothing. InvalidRequest
        naming the field when no backend that could run the job accepts its input, or when
        its ``webhook_url`` is one the egress policy refuses: a quote refuses what a
        submission would."""
        if spec.webhook_url is not None:  # it would be called: only where egress may go
            self.egress.check(spec.webhook_url, field="webhook_url")
        cat = self.catalogue()
        check_input(spec, cat)
        factors = self.calibrator.factors() if self.calibrator is not None else None
        return plan_route(spec, cat.backends, self.health.snapshot(cat.names), now=time.time(),
                          calibration=factors)

    def submit(
        self, tenant: str, spec: JobSpec, idempotency_key: str | None = None
    ) -> tuple[repo.JobRow, bool]:
        """Returns (job, created), the new job's start message sent. Raises
        InvalidRequest, NoEligibleBackend, BudgetExceeded, Conflict."""
        admission = self.admit(tenant, spec, idempotency_key)
        self.start(admission)
        return admission.job, admission.created

    def admit(
        self, tenant: str, spec: JobSpec, idempotency_key: str | None = None
    ) -> Admission:
        """Route the job and write it with its budget hold; its start message is for
        :meth:`start` to send (the API sends it after answering: the job row is its outbox).
        Raises InvalidRequest, NoEligibleBackend, BudgetExceeded, Conflict, SecretKeyMissing
        (a ``webhook_url`` and no key to seal the tenant's new signing secret with)."""
        rhash = request_hash(spec)
        # A replayed Idempotency-Key is found by the job insert (ON CONFLICT DO NOTHING), not
        # by a lookup before it: the common, first-time submission reads nothing extra.
        try:
            plan = self.quote(spec)  # the webhook_url's egress check too
        except InvalidRequest:
            # a job accepted before the catalogue changed is still its key's job
            replay = None if idempotency_key is None else self._replay(
                tenant, idempotency_key, spec)
            if replay is None:
                raise
            return Admission(replay, None)
        if not plan.candidates:
            if idempotency_key is not None:  # a replay still gets its job, routable or not
                replay = self._replay(tenant, idempotency_key, spec)
                if replay is not None:
                    return Admission(replay, None)
            record_submission(spec, NoEligibleBackend.code)
            raise NoEligibleBackend(plan.nothing_eligible(),
                                    excluded=plan.to_quote()["excluded"])
        if spec.webhook_url is not None and self.signing_secret is not None:
            self.signing_secret(tenant)  # SecretKeyMissing (503) if it could never be signed
        key = self.cache.key_for(tenant, spec) if self.cache is not None else None
        if key is not None:
            return self._admit_cacheable(tenant, spec, plan, key, idempotency_key, rhash)
        job_id, token = uuid.uuid4(), uuid.uuid4()
        try:
            job = self._insert_and_hold(tenant, spec, plan, job_id, token, idempotency_key,
                                        rhash)
        except BudgetExceeded as exc:
            self._refused(spec, exc)
            raise
        if job is None:
            return self._key_taken(tenant, idempotency_key, spec)
        record_submission(spec, "accepted", plan.backends[0])
        return Admission(job, plan.backends[0])

    def _refused(self, spec: JobSpec, exc: BudgetExceeded) -> None:
        record_submission(spec, BudgetExceeded.code)
        self._alert_refusal(exc)

    def _key_taken(self, tenant: str, idempotency_key: str | None, spec: JobSpec
                   ) -> Admission:
        """The idempotency key was taken (a replay, or a concurrent twin that won): its job."""
        assert idempotency_key is not None
        replay = self._replay(tenant, idempotency_key, spec)
        assert replay is not None  # keys are never deleted
        return Admission(replay, None)

    def start(self, admission: Admission) -> None:
        """Send a newly admitted job's start message (nothing for a replay). A failure is
        logged, not raised: the sweeper starts the job (DESIGN §3)."""
        job, backend = admission.job, admission.first_backend
        if backend is None:
            if admission.from_cache and not admission.job.is_final:
                self._start_if_leader_ended(job)
            return
        try:
            self.enqueue.start(job.id, cast(uuid.UUID, job.chain_token), job.priority, backend)
        except Exception as exc:  # the sweeper will start it; the job is safe in PostgreSQL
            log.warning("enqueue failed; the sweeper will start the job",
                        extra={"job_id": str(job.id), "error": type(exc).__name__})

    def _start_if_leader_ended(self, job: repo.JobRow) -> None:
        """A follower's leader that ended between the follower's look-up and its commit
        woke the followers it saw, not this one: start it now (it takes the result or
        runs itself). Otherwise the leader's end wakes it. A failure leaves it to its wake
        (the sweeper)."""
        try:
            with self.engine.begin() as conn:
                leader = repo.get_job(conn, job.cache_leader) if job.cache_leader else None
            if leader is None or leader.is_final:
                self.enqueue.start(job.id, cast(uuid.UUID, job.chain_token), job.priority)
        except Exception as exc:  # its wake is in PostgreSQL; the sweeper starts it
            log.warning("cache follower not started; the sweeper will",
                        extra={"job_id": str(job.id), "error": type(exc).__name__})

    def _admit_cacheable(
        self, tenant: str, spec: JobSpec, plan: RoutePlan, key: str,
        idempotency_key: str | None, rhash: str,
    ) -> Admission:
        """A cache-enabled job (``service.cache``): under the key's lock, a hit is admitted
        with a hold of 0 and served at once, a job identical to one in flight waits for it
        on its own worst-case hold, and any other is the key's leader and starts."""
        cache = self.cache
        assert cache is not None
        job_id, token = uuid.uuid4(), uuid.uuid4()
        try:
            with cache.locked(tenant, key) as tx:
                match = cache.lookup(tx, tenant, key)
                hit = match is not None and match.found is Found.HIT
                job = self._insert_and_hold(tenant, spec, plan, job_id, token,
                                            idempotency_key, rhash, hold=0 if hit else None,
                                            conn=tx)
                if job is not None:
                    job = cache.link(tx, job.id, key, match)
        except BudgetExceeded as exc:
            self._refused(spec, exc)
            raise
        if job is None:
            return self._key_taken(tenant, idempotency_key, spec)
        record_submission(spec, "accepted", plan.backends[0])
        if match is None:
            record_lookup(spec, "miss")
            return Admission(job, plan.backends[0])
        if match.found is Found.HIT:
            record_lookup(spec, "hit")
            return Admission(self.serve_hit(job, match), None, from_cache=True)
        record_lookup(spec, "coalesced")
        return Admission(job, None, from_cache=True)

    def serve_hit(self, job: repo.JobRow, match: Match) -> repo.JobRow:
        """End a job admitted on a cache hit: succeeded, the hit's result, cost 0. Should
        this process stop first, the sweeper starts the job and its chain does the same
        (``JobRunner``: a follower whose leader succeeded). A result the retention sweeper
        dropped since the look-up serves nothing: the job is left to its chain (``start``
        sends it), which raises its hold to its worst case and runs it (``service.follow``)."""
        with self.engine.begin() as conn:
            origin = repo.get_job(conn, match.job_id)
            assert job.chain_token is not None
            if origin is None or origin.result is None:
                return job
            ResultCache.adopt(conn, job.id, job.chain_token, origin.id)
        now = self.clock()
        end = self.ledger.end_job(job.id, "succeeded", now, backend=origin.backend,
                                  result=origin.result)
        if end is not None and end.ended:
            record_saved(job.kind, match.cost_micros)
            self.observe.job_finished(job, "succeeded", backend=origin.backend,
                                      charged_micros=end.charged_micros, now=now)
        with self.engine.begin() as conn:
            served = repo.get_job(conn, job.id)
        assert served is not None
        return served

    def _insert_and_hold(
        self, tenant: str, spec: JobSpec, plan: RoutePlan, job_id: uuid.UUID,
        token: uuid.UUID, idempotency_key: str | None, rhash: str, *,
        hold: int | None = None, conn: Connection | None = None,
    ) -> repo.JobRow | None:
        """Job row and budget hold in one statement; None if the idempotency key is taken.
        ``hold``: another amount than the plan's worst case (a cache hit's 0); ``conn``: in
        the caller's transaction."""
        now = self.clock()
        return self.ledger.admit_job(
            NewJob(id=job_id, tenant=tenant, kind=spec.kind.value, tier=spec.tier.value,
                   spec=spec.model_dump(mode="json"), route=plan.to_quote(),
                   estimated_cost_micros=plan.worst_case_micros if hold is None else hold,
                   deadline_at=now + timedelta(seconds=spec.deadline_s), chain_token=token,
                   wake_at=now + self.start_grace, idempotency_key=idempotency_key,
                   request_hash=rhash),
            covering_scopes(tenant, spec.project),
            hold_ttl=timedelta(seconds=spec.deadline_s) + HOLD_MARGIN, conn=conn,
        )

    def _alert_refusal(self, exc: BudgetExceeded) -> None:
        """The budget's ``refusal`` alert, at most once per window; never hides the 402."""
        try:
            self.ledger.record_refusal(exc)
        except SQLAlchemyError as err:
            log.warning("refusal alert not recorded", extra={"error": type(err).__name__})

    def _replay(self, tenant: str, idempotency_key: str, spec: JobSpec) -> repo.JobRow | None:
        """The job already submitted under this key (None: none is); Conflict if it was
        submitted with another body."""
        with self.engine.begin() as conn:
            existing = repo.get_by_idempotency_key(conn, tenant, idempotency_key)
        return None if existing is None else self._same_request(existing, spec)

    @staticmethod
    def _same_request(existing: repo.JobRow, spec: JobSpec) -> repo.JobRow:
        if existing.request_hash not in request_hashes(spec):
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                job_id=str(existing.id),
            )
        return existing
