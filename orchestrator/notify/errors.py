"""Errors of the notify package (candidates for ``orchestrator/errors.py``)."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class DeliveryError(OrchestratorError):
    """A channel could not deliver an alert.

    ``reason`` is our own code for what happened (``http_500``, ``egress_refused``,
    ``connect_failed``, ``timeout``, ``smtp_550``, ``smtp_unsupported``, ``smtp_not_configured``,
    ``invalid_channel``, …), optionally with our
    own ``detail``; ``summary`` (``reason`` or ``reason: detail``) is what is stored in
    ``alert_deliveries.last_error``. Neither ever holds a remote reply body, a secret or a
    full URL; ``message`` adds the channel's label, for logs.

    ``transient`` errors (timeouts, connection errors, HTTP 5xx and 429, SMTP 4xx, a missing
    key) are retried with backoff; the others (HTTP 3xx and 4xx, SMTP 5xx, a refused or
    misconfigured channel) are final.
    """

    code = "delivery_failed"

    def __init__(
        self, reason: str, *, transient: bool, detail: str | None = None, label: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        summary = reason if detail is None else f"{reason}: {detail}"
        super().__init__(f"{label}: {summary}" if label else summary, transient=transient)
        self.reason = reason
        self.detail = detail
        self.summary = summary
        self.transient = transient
        self.retry_after_s = retry_after_s


class ChannelConfigError(OrchestratorError):
    """A budget's ``channels`` entry is invalid; the message names it, e.g.
    ``channels[0].url: must be an http(s) URL``."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, field=field)
        self.field = field
