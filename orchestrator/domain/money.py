"""Money is integer micro-USD inside; USD only at the edges."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float | int | str | Decimal) -> int:
    """Convert a USD amount to integer micro-USD, rounding half up at the micro-dollar.

    Goes through ``Decimal(str(x))`` so that 0.1 becomes exactly 100000, not 99999.
    """
    try:
        value = Decimal(str(usd))
    except InvalidOperation as exc:
        raise ValueError(f"not a USD amount: {usd!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite USD amount: {usd!r}")
    try:
        return int((value * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except InvalidOperation as exc:  # more digits than the context's precision
        raise ValueError(f"USD amount out of range: {usd!r}") from exc


def exact_usd(usd: float | int | str | Decimal) -> float | int | str | Decimal:
    """``usd`` as it is when it is a whole number of micro-USD; ``ValueError`` when it has
    more than 6 decimal places. The one rule for every USD amount a user gives (a budget's
    limit, a job's ``max_cost_usd``): :func:`usd_to_micros` would round it, and a limit of
    0.0000001 would silently become 0."""
    micros = Decimal(str(usd)) * MICROS_PER_USD
    if micros.is_finite() and micros != micros.to_integral_value():
        raise ValueError("must have at most 6 decimal places (amounts are kept in whole "
                         "micro-dollars)")
    return usd


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def format_usd(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}${whole}.{frac:06d}"
