"""Channel configs: validation messages name the entry; keys and labels hide secrets."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.notify import ChannelConfigError, EmailConfig, parse_channels

HOOK = {"type": "webhook", "url": "https://example.test/h?token=tok3n", "secret": "x" * 16}
SLACK_URL = "https://hooks.slack.test/services/T000/B000/tok3n"


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ("nope", "channels: must be a list"),
        ([42], "channels[0]: must be an object"),
        ([{"type": "sms"}], "channels[0].type: must be one of webhook, slack, email"),
        ([{"url": SLACK_URL}], "channels[0].type: must be one of webhook, slack, email"),
        ([{"type": "webhook", "url": "ftp://x.test", "secret": "x" * 16}],
         "channels[0].url: must be an http(s) URL"),
        ([HOOK, {"type": "slack", "url": "hooks.slack.test/x"}],
         "channels[1].url: must be an http(s) URL"),
        ([{"type": "webhook", "url": "https://x.test"}], "channels[0].secret: is required"),
        ([{"type": "webhook", "url": "https://x.test", "secret": "short"}],
         "channels[0].secret: String should have at least 16 characters"),
        ([{"type": "email", "to": []}], "channels[0].to: must not be empty"),
        ([{"type": "email", "to": ["a@x.test", "b@x.test\r\nBcc: evil@x.test"]}],
         "channels[0].to[1]: must be an email address"),
        ([{"type": "slack", "url": SLACK_URL, "channel": "#ops"}],
         "channels[0].channel: Extra inputs are not permitted"),
        ([HOOK, {**HOOK, "secret": "y" * 16}], "channels[1]: duplicates channels[0]"),
    ],
)
def test_invalid_channels_are_named(channels: Any, message: str) -> None:
    with pytest.raises(ChannelConfigError) as err:
        parse_channels(channels)
    assert err.value.message == message
    assert err.value.code == "invalid_request"
    assert "tok3n" not in message and "x" * 16 not in message


def test_valid_channels_and_safe_labels() -> None:
    hook, slack, email = parse_channels(
        [HOOK, {"type": "slack", "url": SLACK_URL}, {"type": "email", "to": ["a@x.test"]}]
    )
    assert (hook.type, slack.type, email.type) == ("webhook", "slack", "email")
    assert hook.label == "webhook https://example.test"
    assert slack.label == "slack https://hooks.slack.test"
    assert email.label == "email (1 recipient)"
    for cfg in (hook, slack):
        assert "tok3n" not in repr(cfg) and "tok3n" not in str(cfg) and "tok3n" not in cfg.key
    assert "x" * 16 not in repr(hook)


def test_key_is_stable_without_secret_and_case_of_addresses() -> None:
    (a,) = parse_channels([HOOK])
    (b,) = parse_channels([{**HOOK, "secret": "rotated-secret-123"}])
    assert a.key == b.key  # rotating a secret is not a new target
    e1 = EmailConfig(to=["Ops@X.test", "b@x.test"])
    e2 = EmailConfig(to=["b@x.test", "ops@x.test"])
    assert e1.key == e2.key and e1.key != EmailConfig(to=["c@x.test"]).key
