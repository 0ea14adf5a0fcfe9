"""What one call to a backend came to, and whose fault a failure was.

    success         the backend did what was asked
    backend_fault   the backend's fault: 5xx, timeout, connection error, malformed response,
                    our credentials refused (401/403). A strike for the breaker.
    job_fault       the job's own fault: invalid input, content policy (4xx other than those
                    below). Not a strike; retrying or failing over will not help.
    transient       throttled (429) or asked to come back later. Not a strike; retry later.
    cancelled       we cancelled it. Says nothing about the backend.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    SUCCESS = "success"
    BACKEND_FAULT = "backend_fault"
    JOB_FAULT = "job_fault"
    TRANSIENT = "transient"
    CANCELLED = "cancelled"

    @property
    def is_strike(self) -> bool:
        """Counts towards the three strikes that open a backend's breaker."""
        return self is Outcome.BACKEND_FAULT

    @property
    def observed(self) -> bool:
        """Counts in the backend's observed success rate (success and backend faults only)."""
        return self is Outcome.SUCCESS or self is Outcome.BACKEND_FAULT


def classify_http(
    status: int | None = None,
    *,
    timeout: bool = False,
    connection_error: bool = False,
    malformed: bool = False,
) -> Outcome:
    """The outcome of one HTTP exchange with a backend (``status`` None: no response)."""
    if timeout or connection_error or malformed or status is None:
        return Outcome.BACKEND_FAULT
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status == 429:
        return Outcome.TRANSIENT
    if status in (401, 402, 403, 407, 408) or status >= 500:
        return Outcome.BACKEND_FAULT
    if 400 <= status < 500:
        return Outcome.JOB_FAULT
    return Outcome.BACKEND_FAULT  # 1xx/3xx where a final answer was due: malformed
