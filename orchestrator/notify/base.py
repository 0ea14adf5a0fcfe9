"""The channel interface and the HTTP delivery shared by webhook and Slack channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import httpx

from orchestrator.notify.config import ChannelConfig
from orchestrator.notify.errors import DeliveryError
from orchestrator.notify.message import AlertMessage

USER_AGENT = "orchestrator-alerts/1"
MAX_RETRY_AFTER_S = 3600.0


@runtime_checkable
class Channel(Protocol):
    """One delivery target. ``send`` returns on success, raises :class:`DeliveryError`."""

    @property
    def label(self) -> str:
        """Names the target without secrets (safe for logs and reports)."""
        ...

    def send(self, alert: AlertMessage) -> None: ...


ChannelFactoryFn = Callable[[ChannelConfig], Channel]
"""Builds the channel of one validated config (e.g. ``notify.factory.ChannelFactory``)."""


def default_timeout(seconds: float = 10.0) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


def post(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], label: str
) -> None:
    """POST ``body``; classify failures. Never puts ``url`` into an error or log."""
    try:
        resp = client.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"{label}: timed out ({type(exc).__name__})", transient=True) from None
    except httpx.TransportError as exc:
        raise DeliveryError(f"{label}: {type(exc).__name__}", transient=True) from None
    status = resp.status_code
    if 200 <= status < 300:
        return
    detail = f"{label}: HTTP {status}{_snippet(resp)}"
    if status in (408, 429) or status >= 500:
        raise DeliveryError(detail, transient=True, retry_after_s=_retry_after(resp))
    raise DeliveryError(detail, transient=False)


def _snippet(resp: httpx.Response) -> str:
    """A short printable excerpt of an error body (Slack answers e.g. ``invalid_token``)."""
    try:
        text = resp.text[:80]
    except Exception:  # undecodable body: say nothing about it
        return ""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return f" {text}" if text else ""


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    return None
