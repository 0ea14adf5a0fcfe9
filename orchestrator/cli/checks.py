"""Checks of command-line values that the server or the database would refuse anyway: a job
id that is no UUID, a status, grouping, kind, tier or strategy that is none of the project's
own, a tenant name, time or Idempotency-Key the API does not read, an amount finer than a
micro-dollar.
Each is an option's or argument's ``callback``, so a bad value is a usage error (``error:
Invalid value for '--status': …``, status 2) before any request is sent, as click's own are,
rather than the server's 422 (status 1)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

import typer

from orchestrator.client._core import IDEMPOTENCY_KEY
from orchestrator.domain.money import exact_usd
from orchestrator.store.keys import validate_tenant


def one_of(values: Iterable[str]) -> Callable[[str | None], str | None]:
    """A callback that takes None or one of ``values`` (in the order they are listed)."""
    allowed = tuple(str(v) for v in values)  # a StrEnum's members as their values

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return check


def job_id(value: str) -> str:
    """A job id as the API names jobs: a UUID, in its canonical form (``uuid.UUID`` also
    reads braces, ``urn:uuid:`` and bare hex, which a URL path should not carry)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a job id (a UUID)") from None


def idempotency_key(value: str | None) -> str | None:
    """None or an ``Idempotency-Key`` the API takes (1 to 200 printable ASCII characters, no
    space), never quoted: it may be an order number or other data of the caller's."""
    if value is not None and not IDEMPOTENCY_KEY.fullmatch(value):
        raise typer.BadParameter("1 to 200 printable ASCII characters, no spaces")
    return value


def tenant(value: str | None) -> str | None:
    """None or a tenant name (1-64 letters, digits, '_', '.' or '-')."""
    try:
        return None if value is None else validate_tenant(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def iso_time(value: str | None) -> str | None:
    """None or an ISO 8601 time (``2025-05-01``, ``2025-05-01T12:00:00+02:00``), sent in
    its extended form: the API would read the basic form ``20250501`` as a Unix time."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time "
                                 "(e.g. 2025-05-01 or 2025-05-01T12:00:00Z)") from None


def usd(value: float | None) -> float | None:
    """None or a USD amount in whole micro-dollars (at most 6 decimal places, finite, not
    negative), as the API takes it."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise typer.BadParameter("must be a finite number")
    if value < 0:
        raise typer.BadParameter("must not be negative")
    try:
        return float(exact_usd(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def seconds(value: float) -> float:
    """A finite number of seconds, at least 0 (click takes ``nan`` and ``inf`` as floats)."""
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"{value!r} is not a number of seconds (finite, at least 0)")
    return value
