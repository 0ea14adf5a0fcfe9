"""What a channel sends: one budget alert, built from an ``alerts`` row.

An ``overage`` alert (a job billed above its hold, charged in full) carries one more key,
``overage``: the job id and the hold, charge and overage in USD. Every other kind's webhook
payload is exactly the CONTRACT's keys.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

AlertKind = Literal["threshold", "forecast", "refusal", "overage"]


class BudgetRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    period: str


class OverageRef(BaseModel):
    """The job an ``overage`` alert is about: its hold, its whole charge, and the rest."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    hold_usd: float
    charge_usd: float
    overage_usd: float


class AlertMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    alert_id: uuid.UUID
    kind: AlertKind
    budget: BudgetRef
    scope: str
    period_start: str
    threshold: float
    limit_usd: float
    committed_usd: float
    held_usd: float
    forecast_usd: float | None = None
    at: str
    overage: OverageRef | None = None  # kind "overage" only

    @classmethod
    def from_alert(
        cls, *, alert_id: uuid.UUID, kind: str, budget_id: int, threshold_bp: int,
        payload: dict[str, Any], period: str | None = None,
    ) -> AlertMessage:
        """From an ``alerts`` row (its ``payload`` as the ledger writes it)."""
        return cls.model_validate(
            {
                "alert_id": alert_id,
                "kind": kind,
                "budget": {"id": budget_id, "period": payload.get("period") or period or ""},
                "scope": payload["scope"],
                "period_start": payload["period_start"],
                "threshold": payload.get("threshold", threshold_bp / 10000),
                "limit_usd": payload["limit_usd"],
                "committed_usd": payload["committed_usd"],
                "held_usd": payload["held_usd"],
                "forecast_usd": payload.get("forecast_usd"),
                "at": payload["at"],
                "overage": {
                    "job_id": payload["job_id"], "hold_usd": payload["hold_usd"],
                    "charge_usd": payload["charge_usd"], "overage_usd": payload["overage_usd"],
                } if kind == "overage" else None,
            }
        )

    def webhook_payload(self) -> dict[str, Any]:
        """Exactly the CONTRACT's keys, in the CONTRACT's order (an overage alert: and
        ``overage`` last)."""
        body = self.model_dump(mode="json")
        if self.overage is None:
            del body["overage"]
        return body

    @property
    def title(self) -> str:
        return f"Budget {self.scope} ({self.budget.period}): {self.headline}"

    @property
    def headline(self) -> str:
        if self.kind == "forecast":
            return f"forecast to exceed {_pct(self.threshold)} of its limit"
        if self.kind == "refusal":
            return "a job was refused: limit reached"
        if self.kind == "overage" and self.overage is not None:
            return (f"a job was billed {usd(self.overage.overage_usd)} above its hold, "
                    "charged in full")
        return f"reached {_pct(self.threshold)} of its limit"

    def facts(self) -> list[tuple[str, str]]:
        """(name, value) lines shown by Slack and email."""
        rows = [
            ("Budget", f"{self.scope} ({self.budget.period})"),
            ("Period start", self.period_start),
            ("Limit", usd(self.limit_usd)),
            ("Committed", usd(self.committed_usd)),
            ("Held", usd(self.held_usd)),
        ]
        if self.forecast_usd is not None:
            rows.append(("Forecast", usd(self.forecast_usd)))
        if self.overage is not None:
            rows += [
                ("Job", self.overage.job_id),
                ("Hold", usd(self.overage.hold_usd)),
                ("Charged", usd(self.overage.charge_usd)),
                ("Overage", usd(self.overage.overage_usd)),
            ]
        rows += [("At", self.at), ("Alert id", str(self.alert_id))]
        return rows


def usd(value: float) -> str:
    return f"${value:,.2f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"
