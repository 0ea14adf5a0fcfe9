"""Secret keys (ORCH_SECRET_KEY, the key file) and the stored form of channels."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from orchestrator.errors import ConfigurationError
from orchestrator.notify import ChannelConfigError, parse_channels
from orchestrator.notify.stored import describe, open_channel, open_for_delivery, seal_all
from orchestrator.secrets import (
    SecretBox,
    SecretKeyMissing,
    SecretUnreadable,
    ensure_key_file,
    load_keys,
    new_key,
    parse_keys,
)
from orchestrator.settings import Settings

HOOK_URL = "https://hooks.example.com/t/SECRETPATH?token=tok3n"
SLACK_URL = "https://hooks.slack.com/services/T0/B0/xoxb-slack-token"
SECRET = "s3cret-webhook-key-0123456789"
CHANNELS = [{"type": "webhook", "url": HOOK_URL, "secret": SECRET},
            {"type": "slack", "url": SLACK_URL},
            {"type": "email", "to": ["ops@example.com"]}]


def settings(tmp_path: Path, key: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path, secret_key=SecretStr(key) if key else None)


def test_the_key_file_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    assert load_keys(settings(tmp_path)) is None  # neither set: no key
    old = os.umask(0)  # whatever the umask, the file is the owner's alone
    try:
        path = ensure_key_file(tmp_path / "data")
    finally:
        os.umask(old)
    assert path == tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert ensure_key_file(tmp_path / "data") == path and path.read_text() == first
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temporary left
    box = load_keys(settings(tmp_path / "data"))
    assert box is not None and box.decrypt(box.encrypt("x")) == "x"


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = ensure_key_file(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_keys(settings(tmp_path))


def test_the_setting_wins_over_the_file_and_bad_keys_are_named_not_shown(
    tmp_path: Path,
) -> None:
    ensure_key_file(tmp_path)
    key = new_key()
    box = load_keys(settings(tmp_path, key))
    assert box is not None and box.key_count == 1
    from_file = load_keys(settings(tmp_path))
    assert from_file is not None
    with pytest.raises(SecretUnreadable):  # a different key: the setting was used
        from_file.decrypt(box.encrypt("x"))
    with pytest.raises(ConfigurationError) as err:
        load_keys(settings(tmp_path, f"{key},not-a-key-at-all"))
    assert err.value.message.startswith("ORCH_SECRET_KEY: key 2 is not a Fernet key")
    assert "not-a-key-at-all" not in err.value.message and key not in err.value.message


def test_rotation_first_key_encrypts_every_key_decrypts() -> None:
    old, new = new_key(), new_key()
    token = SecretBox([old]).encrypt(SECRET)
    both = SecretBox(parse_keys(f"{new}, {old}\n", "ORCH_SECRET_KEY"))
    assert both.decrypt(token) == SECRET
    rotated = both.rotate(token)
    assert SecretBox([new]).decrypt(rotated) == SECRET
    with pytest.raises(SecretUnreadable):
        SecretBox([old]).decrypt(rotated)
    assert SECRET not in repr(both) and old not in repr(both)


def test_sealed_channels_hold_no_secret_and_open_again() -> None:
    box = SecretBox([new_key()])
    stored = seal_all(parse_channels(CHANNELS), box)
    text = json.dumps(stored)
    for secret in (SECRET, "SECRETPATH", "tok3n", "xoxb-slack-token"):
        assert secret not in text
    assert stored[0]["origin"] == "https://hooks.example.com"
    assert set(stored[0]["url"]) == {"fernet"} and set(stored[0]["secret"]) == {"fernet"}
    assert stored[2] == CHANNELS[2]  # nothing secret in an email channel
    opened = [open_channel(raw, i, box) for i, raw in enumerate(stored)]
    assert opened == parse_channels(CHANNELS)
    assert [o.key for o in opened] == [s.get("key", o.key) for s, o in zip(stored, opened,
                                                                           strict=True)]
    assert [describe(raw, i) for i, raw in enumerate(stored)] == [
        {"type": "webhook", "label": "webhook https://hooks.example.com"},
        {"type": "slack", "label": "slack https://hooks.slack.com"},
        {"type": "email", "label": "email (1 recipient)"},
    ]


def test_no_key_no_storage_and_no_opening() -> None:
    with pytest.raises(SecretKeyMissing) as err:
        seal_all(parse_channels(CHANNELS[:1]), None)
    assert err.value.code == "secret_key_missing" and "ORCH_SECRET_KEY" in err.value.message
    assert seal_all(parse_channels(CHANNELS[2:]), None) == CHANNELS[2:]  # email needs none
    stored = seal_all(parse_channels(CHANNELS[:1]), SecretBox([new_key()]))
    with pytest.raises(SecretKeyMissing):
        open_channel(stored[0], 0, None)
    with pytest.raises(SecretUnreadable):
        open_channel(stored[0], 0, SecretBox([new_key()]))


def test_delivery_opens_each_entry_on_its_own_and_never_raises() -> None:
    box = SecretBox([new_key()])
    (good,) = seal_all(parse_channels(CHANNELS[:1]), box)
    wrong_key = seal_all(parse_channels(CHANNELS[1:2]), SecretBox([new_key()]))[0]
    entries = [
        good,
        wrong_key,
        {"type": "webhook", "url": "https://hooks.example.com:99999/x", "secret": SECRET},
        {"type": "slack", "url": {"fernet": "garbage"}},  # sealed, no key/origin: unknown
        "not an object",
        {"type": "webhook", "url": HOOK_URL, "secret": SECRET},  # old plain form: still read
    ]
    opened = [open_for_delivery(raw, i, box) for i, raw in enumerate(entries)]
    assert opened[0].config is not None and opened[0].key == good["key"]
    assert (opened[1].key, opened[1].error and opened[1].error.summary,
            opened[1].error and opened[1].error.transient) == (
        wrong_key["key"], "secret_unreadable", True)
    assert opened[2].invalid and opened[2].error is not None
    assert opened[2].error.summary == (
        "invalid_channel: channels[2].url: port must be between 1 and 65535")
    assert opened[3].invalid and opened[4].invalid
    assert opened[5].config is not None and opened[5].key == opened[0].key
    assert describe(entries[2], 2) == {"type": "webhook", "label": "invalid channel"}
    assert describe(entries[4], 4) == {"type": "unknown", "label": "invalid channel"}
    with pytest.raises(ChannelConfigError):
        open_channel(entries[2], 2, box)
