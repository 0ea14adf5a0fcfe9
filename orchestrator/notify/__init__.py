"""Budget alert channels (webhook with HMAC signature, Slack, email) and the outbox delivery.

Public API::

    from orchestrator.notify import ChannelFactory, deliver_pending, parse_channels

    with ChannelFactory(smtp=SmtpSettings(), policy=EgressPolicy.from_settings(s)) as factory:
        report = deliver_pending(engine, factory, now=datetime.now(UTC),
                                 secrets=load_keys(s))

Webhook and Slack URLs go through the egress policy (``orchestrator.egress``); how channels
are stored, secrets sealed, is ``notify.stored``. Webhook receivers verify requests with
:func:`verify_signature`.
"""

from orchestrator.notify.base import Channel, ChannelFactoryFn
from orchestrator.notify.config import (
    ChannelConfig,
    EmailConfig,
    SlackConfig,
    WebhookConfig,
    parse_channel,
    parse_channels,
)
from orchestrator.notify.errors import ChannelConfigError, DeliveryError
from orchestrator.notify.factory import ChannelFactory
from orchestrator.notify.message import AlertMessage
from orchestrator.notify.outbox import ChannelOutcome, DeliveryReport, RetryPolicy, deliver_pending
from orchestrator.notify.settings import SmtpSettings
from orchestrator.notify.signing import sign, verify_signature

__all__ = [
    "AlertMessage",
    "Channel",
    "ChannelConfig",
    "ChannelConfigError",
    "ChannelFactory",
    "ChannelFactoryFn",
    "ChannelOutcome",
    "DeliveryError",
    "DeliveryReport",
    "EmailConfig",
    "RetryPolicy",
    "SlackConfig",
    "SmtpSettings",
    "WebhookConfig",
    "deliver_pending",
    "parse_channel",
    "parse_channels",
    "sign",
    "verify_signature",
]
