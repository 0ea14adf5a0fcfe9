"""``Retry-After`` header values as seconds; the SDK's, shared with the backend adapters
(through ``orchestrator.retry_after``). Standard library only, and here so that the SDK
needs nothing outside ``orchestrator/client/``."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Retry-After as seconds (``"3"``, ``"1.5"``) or an HTTP date; None when absent/invalid."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" is no delay; "inf" or "1e999" is one longer than any caller waits
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())
