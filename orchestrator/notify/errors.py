"""Errors of the notify package (candidates for ``orchestrator/errors.py``)."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class DeliveryError(OrchestratorError):
    """A channel could not deliver an alert.

    ``transient`` errors (timeouts, connection errors, HTTP 5xx and 429, SMTP 4xx) are
    retried with backoff; the others (HTTP 4xx, SMTP 5xx, a misconfigured channel) are final.
    The message never contains a secret or a full URL.
    """

    code = "delivery_failed"

    def __init__(
        self, message: str, *, transient: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, transient=transient)
        self.transient = transient
        self.retry_after_s = retry_after_s


class ChannelConfigError(OrchestratorError):
    """A budget's ``channels`` entry is invalid; the message names it, e.g.
    ``channels[0].url: must be an http(s) URL``."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, field=field)
        self.field = field
