"""Signed JSON webhook (CONTRACT "Alert channels"); receivers verify with
:func:`orchestrator.notify.signing.verify_signature`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx

from orchestrator.egress import EgressPolicy
from orchestrator.notify.base import post
from orchestrator.notify.config import WebhookConfig
from orchestrator.notify.message import AlertMessage
from orchestrator.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


def webhook_body(alert: AlertMessage) -> bytes:
    return json.dumps(alert.webhook_payload(), separators=(",", ":")).encode()


class WebhookChannel:
    def __init__(
        self, config: WebhookConfig, client: httpx.Client, policy: EgressPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._client = client
        self._policy = policy
        self._clock = clock

    @property
    def label(self) -> str:
        return self._config.label

    def send(self, alert: AlertMessage) -> None:
        body = webhook_body(alert)
        ts = str(int(self._clock()))
        headers = {
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(self._config.secret, ts, body),
        }
        post(self._client, self._policy, self._config.url, body, headers, self.label)
