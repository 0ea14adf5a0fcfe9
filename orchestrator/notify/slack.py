"""Slack incoming webhook: a readable message (fallback ``text`` plus ``blocks``)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from orchestrator.egress import EgressPolicy
from orchestrator.notify.base import post
from orchestrator.notify.config import SlackConfig
from orchestrator.notify.message import AlertMessage, usd

_ICON = {"threshold": ":warning:", "forecast": ":crystal_ball:", "refusal": ":no_entry:",
         "overage": ":money_with_wings:"}


def _esc(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: AlertMessage) -> dict[str, Any]:
    icon = _ICON.get(alert.kind, ":warning:")
    text = (
        f"{icon} {_esc(alert.title)}: {usd(alert.committed_usd)} committed and "
        f"{usd(alert.held_usd)} held of {usd(alert.limit_usd)} (alert {alert.alert_id})"
    )
    facts = [(k, v) for k, v in alert.facts() if k != "Alert id"]
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_esc(value)}"}
                    for name, value in facts[:10]
                ],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"alert id `{alert.alert_id}`"}],
            },
        ],
    }


class SlackChannel:
    def __init__(self, config: SlackConfig, client: httpx.Client, policy: EgressPolicy) -> None:
        self._config = config
        self._client = client
        self._policy = policy

    @property
    def label(self) -> str:
        return self._config.label

    def send(self, alert: AlertMessage) -> None:
        body = json.dumps(slack_message(alert)).encode()
        post(self._client, self._policy, self._config.url, body, {}, self.label)
