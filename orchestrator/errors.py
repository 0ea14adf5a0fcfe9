"""The one error tree of the orchestrator.

    OrchestratorError
    ├── ConfigurationError          a setting or catalogue is invalid (names the setting)
    ├── EmbeddedServiceError        the embedded PostgreSQL or Redis could not start
    ├── Unavailable                 PostgreSQL or Redis cannot be reached now: retry later
                                    (what counts as such: orchestrator.outage)
    ├── RequestError                a caller's request cannot be done as asked
    │   ├── InvalidRequest          malformed or out-of-range input
    │   ├── NotFound                no such job (or not yours)
    │   ├── Conflict                same idempotency key, another body; or a final job
    │   └── NoEligibleBackend       routing left no candidate (the reasons are in details)
    ├── BackendError                a backend call failed (orchestrator.backends.errors)
    └── LedgerError                 the budget ledger refused a step
        ├── BudgetExceeded          a hold would push a budget past its limit
        ├── HoldNotFound            no hold exists for that job
        ├── HoldNotActive           the hold was already settled, released or expired
        ├── InvalidAmount           a negative amount, charge or limit
        └── AlertsOwed              (internal) a guarded step that commits on its own may owe
                                    an alert: nothing changed; run it in a transaction

Every error carries a stable ``code`` (used by the HTTP API's error envelope) and a
``details`` mapping that is safe to show to the caller: it never contains prompts or keys.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import SplitResult


class OrchestratorError(Exception):
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details


class ConfigurationError(OrchestratorError):
    code = "configuration_error"


class EmbeddedServiceError(OrchestratorError):
    code = "embedded_service_error"


class Unavailable(OrchestratorError):
    """``dependency`` (``database`` or ``redis``) cannot be reached: down, restarting, or
    out of connections. Answered ``503 unavailable`` with ``Retry-After``; the request may be
    sent again (a submission with its Idempotency-Key, so that it is never taken twice)."""

    code = "unavailable"

    def __init__(self, dependency: str, *, retry_after_s: int = 2) -> None:
        super().__init__(f"the {dependency} is unavailable; retry in {retry_after_s} s",
                         dependency=dependency)
        self.dependency = dependency
        self.retry_after_s = retry_after_s


class RequestError(OrchestratorError):
    code = "invalid_request"


class InvalidRequest(RequestError):
    code = "invalid_request"


class NotFound(RequestError):
    code = "not_found"


class Conflict(RequestError):
    code = "conflict"


class NoEligibleBackend(RequestError):
    code = "no_eligible_backend"


class LedgerError(OrchestratorError):
    code = "ledger_error"


class BudgetExceeded(LedgerError):
    """A hold was refused: ``budget`` would go past its limit."""

    code = "budget_exceeded"

    def __init__(
        self, *, scope: str, period: str, period_start: str, remaining_micros: int,
        requested_micros: int,
    ) -> None:
        from orchestrator.domain.money import format_usd

        super().__init__(
            f"budget {scope} ({period} from {period_start}) has {format_usd(remaining_micros)} "
            f"remaining; this job needs up to {format_usd(requested_micros)}",
            scope=scope,
            period=period,
            period_start=period_start,
            remaining_micros=remaining_micros,
            requested_micros=requested_micros,
        )
        self.scope = scope
        self.period = period
        self.remaining_micros = remaining_micros
        self.requested_micros = requested_micros


class HoldNotFound(LedgerError):
    code = "not_found"


class HoldNotActive(LedgerError):
    """The hold is already final (settled, released or expired)."""

    code = "conflict"

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message, status=status)
        self.status = status


class InvalidAmount(LedgerError):
    code = "invalid_request"


class AlertsOwed(LedgerError):
    """A settle, release or job ending run with the alert guard, as one statement that
    commits on its own, was refused by the database because the charge may owe a budget
    alert, which must be written in the same transaction. Nothing of it was kept: the
    ledger runs it again in a transaction that writes the alerts. Never reaches a caller of
    the API."""

    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("the ledger step may owe a budget alert; run it in a transaction")


_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,29}(?=[:/])")


def shown_scheme(value: str) -> str:
    """What an error may quote of a value that should have been a URL and is not: its
    scheme-like start when it has one (``postgresql+psycopg``, a host name), else nothing
    (a bare token may be a key)."""
    match = _SCHEME_LIKE.match(value)
    return f"{match[0]}…" if match else "…"


def bad_port(url: SplitResult) -> bool:
    """Whether a split URL's port is given and not a number from 1 to 65535 (``urlsplit``
    reads it only when asked, and raises for one that is not a number)."""
    try:
        port = url.port
    except ValueError:
        return True
    return port == 0
