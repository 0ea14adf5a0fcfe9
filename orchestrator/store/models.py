"""Tables. The migrations in ``migrations/versions`` create exactly these (a test checks it).

Money columns are BIGINT micro-USD. Ledger entries are append-only (a trigger refuses
UPDATE and DELETE); budget period counters are backed by a CHECK that
``committed + held <= limit + excess``, where ``excess`` is what the period carries past its
limit through overage charges or a limit lowered below what it already held (migration 0008;
holds themselves never go past the limit).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Budget(Base):
    __tablename__ = "budgets"
    __table_args__ = (
        UniqueConstraint("scope", "period", name="scope_period"),
        CheckConstraint("period IN ('day', 'month', 'total')", name="period_kind"),
        CheckConstraint("limit_micros >= 0", name="limit_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    scope: Mapped[str] = mapped_column(String(160), nullable=False)
    period: Mapped[str] = mapped_column(String(8), nullable=False)
    limit_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    alert_thresholds_bp: Mapped[list[Any]] = mapped_column(
        nullable=False, server_default=text("'[5000, 8000, 10000]'::jsonb")
    )
    channels: Mapped[list[Any]] = mapped_column(nullable=False, server_default=text("'[]'::jsonb"))
    # opt-in forecast alerts (migration 0003): fractions of the limit, in basis points
    forecast_thresholds_bp: Mapped[list[Any]] = mapped_column(
        nullable=False, server_default=text("'[]'::jsonb")
    )
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class BudgetPeriod(Base):
    __tablename__ = "budget_periods"
    __table_args__ = (
        UniqueConstraint("budget_id", "period_start", name="budget_start"),
        CheckConstraint("committed_micros >= 0", name="committed_nonnegative"),
        CheckConstraint("held_micros >= 0", name="held_nonnegative"),
        CheckConstraint("excess_micros >= 0", name="excess_nonnegative"),
        CheckConstraint(
            "committed_micros + held_micros <= limit_micros + excess_micros", name="within_limit"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    limit_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    committed_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    held_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # What the period carries past its limit (migration 0008): only an overage charge (a bill
    # above its hold) or a limit lowered below committed + held puts anything here, and every
    # step keeps it at exactly GREATEST(0, committed + held - limit). Holds never use it.
    excess_micros: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now()


class Hold(Base):
    """One two-phase reservation per job, across every budget period that covers it."""

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint(
            "status IN ('held', 'settled', 'released', 'expired')", name="status_kind"
        ),
        CheckConstraint("amount_micros >= 0", name="amount_nonnegative"),
        Index("ix_holds_expiry", "expires_at", postgresql_where=text("status = 'held'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True, nullable=False)
    amount_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    charged_micros: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10), nullable=False, server_default="held")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class HoldLine(Base):
    __tablename__ = "hold_lines"

    hold_id: Mapped[int] = mapped_column(
        ForeignKey("holds.id", ondelete="CASCADE"), primary_key=True
    )
    budget_period_id: Mapped[int] = mapped_column(
        ForeignKey("budget_periods.id"), primary_key=True
    )
    amount_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)


class LedgerEntry(Base):
    """Append-only: each step's effect on one budget period's counters."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("idempotency_key", "budget_period_id", name="key_period"),
        CheckConstraint(
            "kind IN ('hold', 'settle', 'release', 'expire', 'overage')", name="entry_kind"
        ),
        Index("ix_ledger_entries_period", "budget_period_id"),
        Index("ix_ledger_entries_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    budget_period_id: Mapped[int] = mapped_column(ForeignKey("budget_periods.id"))
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    kind: Mapped[str] = mapped_column(String(10), nullable=False)
    idempotency_key: Mapped[str] = mapped_column(String(200), nullable=False)
    held_delta_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    committed_delta_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = _now()


class Alert(Base):
    """Transactional outbox: written in the same transaction as the ledger step."""

    __tablename__ = "alerts"
    __table_args__ = (
        # bucket: 0 for threshold and forecast alerts (once per period); a refusal alert's
        # window start in unix seconds (at most once per budget per window), migration 0003;
        # an overage alert's hold id (once per job per period), migration 0008
        UniqueConstraint("budget_period_id", "kind", "threshold_bp", "bucket", name="once"),
        CheckConstraint(
            "kind IN ('threshold', 'forecast', 'refusal', 'overage')", name="alert_kind"
        ),
        Index("ix_alerts_pending", "created_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"))
    budget_period_id: Mapped[int] = mapped_column(ForeignKey("budget_periods.id"))
    kind: Mapped[str] = mapped_column(String(10), nullable=False)
    threshold_bp: Mapped[int] = mapped_column(Integer, nullable=False)
    bucket: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    payload: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    admin: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # moved at most once a minute by authentication (orchestrator.store.keys)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status_kind",
        ),
        UniqueConstraint("tenant", "idempotency_key", name="tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        # a page of one status reads only its rows (migration 0014)
        Index("ix_jobs_tenant_status_created", "tenant", "status", "created_at", "id"),
        # wake_at is set exactly while work is owed: a live job, or an ended one whose
        # attempt is still to be concluded (migration 0009)
        Index("ix_jobs_owed_work", "wake_at", postgresql_where=text("wake_at IS NOT NULL")),
        # the result cache and the calibration window (migration 0012)
        Index("ix_jobs_cache_lookup", "tenant", "cache_key", "finished_at",
              postgresql_where=text("cache_key IS NOT NULL")),
        Index("ix_jobs_cache_followers", "cache_leader",
              postgresql_where=text("cache_leader IS NOT NULL")),
        Index("ix_jobs_settled_by_backend", "backend", "finished_at",
              postgresql_where=text("status = 'succeeded'")),
        # the jobs served from a job's result, whose files it keeps (migration 0016)
        Index("ix_jobs_cached_from", "cached_from",
              postgresql_where=text("cached_from IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, server_default="queued")
    kind: Mapped[str] = mapped_column(String(10), nullable=False)
    tier: Mapped[str] = mapped_column(String(10), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    route: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    backend: Mapped[str | None] = mapped_column(String(64))
    estimated_cost_micros: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The live task chain: a task carrying another token stops; the sweeper revives a job
    # whose chain has not shown a sign of life by wake_at with a new token.
    chain_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    wake_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the result cache (migration 0012): the hash of what the job asks (never the prompt),
    # the live job with the same key it waits for, and the job whose result it got at $0
    cache_key: Mapped[str | None] = mapped_column(String(64))
    cache_leader: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    cached_from: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # when the retention sweeper dropped the result (migration 0013); the ledger stays
    result_expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Attempt(Base):
    """One try of a job on one backend. ``outcome`` is NULL while it is in flight; the row is
    written (checkpoint) before the backend is called, and ``external_id`` right after.
    Outcomes: succeeded, failed, cancelled, timeout, uncertain (the provider may have done
    and billed it, and nothing could tell us: see ``possible_cost_micros``)."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number", name="job_number"),
        Index("ix_attempts_in_flight", "backend", postgresql_where=text("outcome IS NULL")),
        # who already holds an id a provider names (migration 0019: store.jobs)
        Index("ix_attempts_backend_external_id", "backend", "external_id",
              postgresql_where=text("external_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    backend: Mapped[str] = mapped_column(String(64), nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str | None] = mapped_column(String(16))
    fault: Mapped[str | None] = mapped_column(String(16))
    # the breaker ticket: the concurrency slot to give back and whether this is the probe
    slot: Mapped[str | None] = mapped_column(String(40))
    probe: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # reconciliation (migration 0009): when the submission was last sent (NULL: at
    # started_at), when the provider was asked to stop it, and an uncertain attempt's
    # possible charge (nothing could tell whether the provider billed it)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    possible_cost_micros: Mapped[int | None] = mapped_column(BigInteger)


class JobEvent(Base):
    """What happened to a job, written by triggers in the transaction of the change
    (migration 0013). ``seq`` counts a job's events from 1 without gaps; ``txid`` (the
    writing transaction) orders a tenant's feed; ``position`` is the insertion order."""

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),
        Index("ix_job_events_feed", "tenant", "txid", "position"),
        Index("ix_job_events_created", "created_at"),
    )

    position: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), unique=True, nullable=False, server_default=text("gen_random_uuid()")
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                              nullable=False)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(20), nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    txid: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = _now()


class ResultFile(Base):
    """Inline data of a job's result (a base64 image), kept beside it rather than in its
    JSON, which names it by path (migration 0016)."""

    __tablename__ = "result_files"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                              primary_key=True)
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_type: Mapped[str] = mapped_column(String(100), nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = _now()


class WebhookEndpoint(Base):
    """A tenant's default webhook endpoint (``PUT /v1/webhooks``). ``url`` and ``secret``
    are sealed (``{"fernet": …}``, orchestrator.secrets); ``origin`` is what may be shown."""

    __tablename__ = "webhook_endpoints"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    origin: Mapped[str | None] = mapped_column(String(300))
    secret: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    events: Mapped[list[Any]] = mapped_column(
        nullable=False,
        server_default=text("""'["job.succeeded", "job.failed", "job.cancelled"]'::jsonb"""),
    )
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One event to one endpoint (``target``: the job's ``webhook_url`` or the tenant's
    endpoint), queued by the event's trigger; sent by ``orchestrator.events.delivery``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "target", name="uq_webhook_deliveries_event_target"),
        CheckConstraint("target IN ('job', 'tenant')", name="target_kind"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status_kind"),
        Index("ix_webhook_deliveries_pending", "next_attempt_at",
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_job", "job_id", "target", "seq"),
        Index("ix_webhook_deliveries_tenant", "tenant", "created_at"),
        # the claim's walk over tenants, and each tenant's due ones (migration 0020)
        Index("ix_webhook_deliveries_due", "tenant", "target", "next_attempt_at", "id",
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("job_events.id", ondelete="CASCADE"), nullable=False)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    tenant: Mapped[str] = mapped_column(String(64), nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    target: Mapped[str] = mapped_column(String(8), nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = _now()
    last_error: Mapped[str | None] = mapped_column(String(200))
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # set by a redelivery: the retry window counts from it (migration 0018)
    requeued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_entries_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()
"""
