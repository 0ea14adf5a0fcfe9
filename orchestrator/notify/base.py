"""The channel interface and the HTTP delivery shared by webhook and Slack channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import httpx

from orchestrator.egress import EgressPolicy, EgressRefused, post_pinned
from orchestrator.notify.config import ChannelConfig
from orchestrator.notify.errors import DeliveryError
from orchestrator.notify.message import AlertMessage
from orchestrator.retry_after import parse_retry_after

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
    client: httpx.Client, policy: EgressPolicy, url: str, body: bytes,
    headers: dict[str, str], label: str,
) -> None:
    """POST ``body`` through the egress policy (checked now, connected to the checked
    address, no redirect); classify failures by our own codes. Never puts ``url``, or
    anything the receiver answered but its status, into an error or log."""
    try:
        resp = post_pinned(
            client, policy, url, body,
            {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
        )
    except EgressRefused as exc:
        raise DeliveryError(exc.reason, detail=exc.problem, label=label,
                            transient=exc.reason == "dns_failed") from None
    except httpx.TimeoutException:
        raise DeliveryError("timeout", label=label, transient=True) from None
    except httpx.ConnectError:  # refused, unreachable, TLS handshake or certificate
        raise DeliveryError("connect_failed", label=label, transient=True) from None
    except httpx.TransportError as exc:
        raise DeliveryError("transport_error", detail=type(exc).__name__, label=label,
                            transient=True) from None
    status = resp.status_code
    if 200 <= status < 300:
        return
    reason = f"http_{status}"
    if status in (408, 429) or status >= 500:
        raise DeliveryError(reason, label=label, transient=True,
                            retry_after_s=_retry_after(resp))
    # 3xx included: a redirect is never followed (it could point anywhere, inside too)
    raise DeliveryError(reason, label=label, transient=False)


def _retry_after(resp: httpx.Response) -> float | None:
    seconds = parse_retry_after(resp.headers.get("Retry-After"))  # seconds or an HTTP date
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)
