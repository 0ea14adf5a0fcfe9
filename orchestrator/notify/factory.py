"""Build channels from validated configs; owns the shared HTTP client."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import httpx

from orchestrator.egress import EgressPolicy, egress_client
from orchestrator.notify.base import Channel, default_timeout
from orchestrator.notify.config import ChannelConfig, EmailConfig, SlackConfig, WebhookConfig
from orchestrator.notify.mail import EmailChannel
from orchestrator.notify.settings import SmtpSettings
from orchestrator.notify.slack import SlackChannel
from orchestrator.notify.webhook import WebhookChannel


class ChannelFactory:
    """``factory(config) -> Channel``. Use as a context manager (closes the HTTP client).

    Webhook and Slack URLs go through ``policy`` (default: public receivers only, over https):
    checked again before every request and connected to at the checked address. Redirects
    are not followed (a webhook that moved is a configuration error).
    """

    def __init__(
        self,
        *,
        smtp: SmtpSettings | None = None,
        policy: EgressPolicy | None = None,
        http_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        client: httpx.Client | None = None,
    ) -> None:
        self._smtp = smtp if smtp is not None else SmtpSettings()
        self._policy = policy if policy is not None else EgressPolicy()
        self._clock = clock
        self._owns_client = client is None
        self._client = client or egress_client(default_timeout(http_timeout_s))

    def __call__(self, config: ChannelConfig) -> Channel:
        if isinstance(config, WebhookConfig):
            return WebhookChannel(config, self._client, self._policy, self._clock)
        if isinstance(config, SlackConfig):
            return SlackChannel(config, self._client, self._policy)
        if isinstance(config, EmailConfig):
            return EmailChannel(config, self._smtp)
        raise TypeError(f"unknown channel config {type(config).__name__}")

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ChannelFactory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
