"""Resources of the API that are not jobs: budgets (with a run-rate forecast), backends,
and the opaque list cursor."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from orchestrator.domain.breaker import BackendHealth
from orchestrator.domain.budgets import period_window
from orchestrator.domain.calibration import Factor
from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.forecast import MIN_ELAPSED, forecast_micros
from orchestrator.domain.money import micros_to_usd
from orchestrator.errors import InvalidRequest
from orchestrator.ledger.budgets import BudgetView
from orchestrator.notify.stored import describe

T = TypeVar("T")

# MIN_ELAPSED and forecast_micros are re-exported: the forecast lives in domain.forecast.
__all__ = ["MIN_ELAPSED", "backend_resource", "budget_resource", "decode_cursor",
           "encode_cursor", "forecast_micros"]


def _channels(raw: tuple[dict[str, Any], ...]) -> list[dict[str, str]]:
    """Type and a safe label per channel: never a URL path, token or secret; a stored entry
    that cannot be read is shown as "invalid channel", never a 500."""
    return [describe(item, i) for i, item in enumerate(raw)]


def budget_resource(view: BudgetView, now: datetime, *, channels: bool = True
                    ) -> dict[str, Any]:
    """The budget as the API shows it; ``channels`` False (a tenant's view): no channels."""
    forecast = forecast_micros(view.committed_micros, view.period, now)
    window = period_window(view.period, now)
    return {
        "scope": view.scope,
        "period": view.period,
        "period_start": view.period_start.isoformat(),
        "period_end": window.end.isoformat() if window.end is not None else None,
        "limit_usd": micros_to_usd(view.limit_micros),
        "committed_usd": micros_to_usd(view.committed_micros),
        "held_usd": micros_to_usd(view.held_micros),
        "remaining_usd": micros_to_usd(view.remaining_micros),
        "forecast_usd": micros_to_usd(forecast) if forecast is not None else None,
        "alert_thresholds": [bp / 10000 for bp in view.alert_thresholds_bp],
        "forecast_thresholds": [bp / 10000 for bp in view.forecast_thresholds_bp],
        "channels": _channels(view.channels) if channels else None,
    }


def backend_resource(spec: BackendSpec, health: BackendHealth, now: float,
                     factor: Factor | None = None) -> dict[str, Any]:
    return {
        "name": spec.name,
        "protocol": spec.protocol.value,
        "kinds": [k.value for k in spec.kinds],
        "tier": spec.tier.value,
        "max_concurrency": spec.max_concurrency,
        # what a job may send it (only these reach its provider), per kind
        "params": {k.value: {n: p.model_dump(mode="json", exclude_none=True)
                             for n, p in t.items()} for k, t in spec.accepts.items()},
        **health.to_dict(now),
        "price_model": spec.price.model,
        # what routing's cheapest multiplies the estimate by (domain.calibration)
        "calibration": None if factor is None or factor.price_model != spec.price.model
        else {"ratio": factor.ratio, "samples": factor.samples},
    }


# -- cursor ----------------------------------------------------------------------------------
def encode_cursor(created_at: datetime, row_id: uuid.UUID | int) -> str:
    """The page cursor after a row of a list ordered by (created_at, id) descending."""
    raw = json.dumps({"t": created_at.isoformat(), "id": str(row_id)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """A job list's cursor."""
    return decode_cursor_of(cursor, uuid.UUID)


def decode_int_cursor(cursor: str) -> tuple[datetime, int]:
    """A cursor of a list whose ids are integers."""
    return decode_cursor_of(cursor, _plain_int)


def _plain_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError("not an id")
    return int(text)


def decode_cursor_of(cursor: str, parse_id: Callable[[str], T]) -> tuple[datetime, T]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        at = datetime.fromisoformat(data["t"])
        if at.tzinfo is None:
            raise ValueError("naive")
        return at, parse_id(str(data["id"]))
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError) as exc:
        raise InvalidRequest("query.cursor: not a cursor returned by this API",
                             field="query.cursor") from exc
