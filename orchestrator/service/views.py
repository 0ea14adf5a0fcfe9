"""The job resource of the HTTP API (CONTRACT), built from rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.domain.money import micros_to_usd
from orchestrator.store.jobs import AttemptRow, JobRow


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None


def job_resource(job: JobRow, attempts: list[AttemptRow]) -> dict[str, Any]:
    error = (
        {"code": job.error_code, "message": job.error_message} if job.error_code else None
    )
    return {
        "id": str(job.id),
        "status": job.status,
        "kind": job.kind,
        "tier": job.tier,
        "backend": job.backend,
        "estimated_cost_usd": micros_to_usd(job.estimated_cost_micros),
        "cost_usd": micros_to_usd(job.cost_micros) if job.cost_micros is not None else None,
        "result": job.result,
        "error": error,
        "attempts": [
            {
                "backend": a.backend,
                "external_id": a.external_id,
                "outcome": a.outcome,
                "error": (
                    {"code": a.error_code, "message": a.error_message} if a.error_code else None
                ),
                "cost_usd": micros_to_usd(a.cost_micros) if a.cost_micros is not None else None,
                "possible_cost_usd": (micros_to_usd(a.possible_cost_micros)
                                      if a.possible_cost_micros is not None else None),
                "started_at": _iso(a.started_at),
                "finished_at": _iso(a.finished_at),
            }
            for a in attempts
        ],
        "route": job.route,
        "cached_from": str(job.cached_from) if job.cached_from is not None else None,
        "metadata": job.spec.get("metadata", {}),
        "deadline_at": _iso(job.deadline_at),
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def cost_breakdown(job: JobRow, attempts: list[AttemptRow]) -> dict[str, Any]:
    """What the job cost, attempt by attempt (the same shape as the events' ``cost``)."""
    total = job.cost_micros or 0
    return {
        "total_usd": micros_to_usd(total),
        "total_micros": total,
        "estimated_usd": micros_to_usd(job.estimated_cost_micros),
        "attempts": [
            {"attempt": a.number, "backend": a.backend, "outcome": a.outcome,
             "cost_usd": micros_to_usd(a.cost_micros) if a.cost_micros is not None else None}
            for a in attempts
        ],
    }


def result_resource(job: JobRow, attempts: list[AttemptRow],
                    expires_at: datetime | None) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "status": job.status,
        "backend": job.backend,
        "output": job.result,
        "cost": cost_breakdown(job, attempts),
        "finished_at": _iso(job.finished_at),
        "expires_at": _iso(expires_at),
    }
