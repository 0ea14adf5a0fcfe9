"""How a budget's channels are kept in ``budgets.channels``: secrets sealed, the rest readable.

A webhook's ``url`` and ``secret`` and a Slack ``url`` (an incoming-webhook URL is a bearer
secret) are stored as ``{"fernet": "<token>"}`` (``orchestrator.secrets``); next to them the
entry keeps, in clear, what may be shown or is needed without the key: its ``key`` (delivery
identity, the digest ``ChannelConfig.key``) and ``origin`` (``scheme://host[:port]``)::

    {"type": "slack", "url": {"fernet": "gAAAAAB..."}, "key": "slack:3f2a...",
     "origin": "https://hooks.slack.com"}
    {"type": "email", "to": ["ops@example.com"]}          # nothing secret: as it is

An entry written before encryption (``"url": "https://..."``, a plain string) is still read;
``seal_legacy`` (the alert beat, and ``orchestrator secrets rotate``) rewrites it sealed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.egress import EgressPolicy
from orchestrator.notify.config import ChannelConfig, parse_channel, parse_channels
from orchestrator.notify.errors import ChannelConfigError, DeliveryError
from orchestrator.secrets import SecretBox, SecretKeyMissing, SecretUnreadable

SEALED = "fernet"
SECRET_FIELDS: dict[str, tuple[str, ...]] = {"webhook": ("url", "secret"), "slack": ("url",)}
_CLEAR_EXTRAS = ("key", "origin")


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED} and isinstance(value[SEALED], str)


def _fields(raw: Any) -> tuple[str, ...]:
    kind = raw.get("type") if isinstance(raw, dict) else None
    return SECRET_FIELDS.get(kind, ()) if isinstance(kind, str) else ()


def has_plaintext_secret(raw: Any) -> bool:
    """An entry of the old format: a secret field held as a plain string."""
    return isinstance(raw, dict) and any(isinstance(raw.get(f), str) for f in _fields(raw))


def seal(config: ChannelConfig, box: SecretBox | None) -> dict[str, Any]:
    """The stored form of a validated channel; :class:`SecretKeyMissing` if it has a secret
    and there is no key (never stored in plain text)."""
    data: dict[str, Any] = config.model_dump(mode="json")
    fields = SECRET_FIELDS.get(config.type, ())
    if not fields:
        return data
    if box is None:
        raise SecretKeyMissing()
    for name in fields:
        data[name] = {SEALED: box.encrypt(str(data[name]))}
    data["key"] = config.key
    data["origin"] = getattr(config, "origin", "")
    return data


def seal_all(configs: Sequence[ChannelConfig], box: SecretBox | None) -> list[dict[str, Any]]:
    return [seal(c, box) for c in configs]


def prepare_channels(
    raw: Any, policy: EgressPolicy, box: SecretBox | None, *, smtp_host: str | None = None
) -> list[dict[str, Any]]:
    """A budget's ``channels`` as given (``PUT /v1/budgets``) to their stored form: validated
    (``ChannelConfigError``), an email channel refused without ``smtp_host`` (every delivery
    would fail for good with ``smtp_not_configured``), each URL checked by the egress policy
    now, DNS included (``EgressRefused`` naming ``channels[i].url``), secrets sealed
    (``SecretKeyMissing``)."""
    configs = parse_channels(raw)
    for i, cfg in enumerate(configs):
        if cfg.type == "email" and not smtp_host:
            raise ChannelConfigError(
                f"channels[{i}]: an email channel needs ORCH_SMTP_HOST, which is not set "
                "(no alert could be sent)", field=f"channels[{i}].type")
        url = getattr(cfg, "url", None)
        if isinstance(url, str):  # a name that does not resolve now is refused too
            policy.check(url, field=f"channels[{i}].url")
    return seal_all(configs, box)


def open_channel(raw: Any, index: int, box: SecretBox | None) -> ChannelConfig:
    """The usable config of a stored entry (sealed or old plain form). Raises
    ``ChannelConfigError`` (invalid entry), ``SecretKeyMissing`` (sealed, no key) or
    ``SecretUnreadable`` (sealed with a key we do not have)."""
    if not isinstance(raw, dict) or not any(is_sealed(raw.get(f)) for f in _fields(raw)):
        return parse_channel(raw, index)
    plain = {k: v for k, v in raw.items() if k not in _CLEAR_EXTRAS}
    for name in _fields(raw):
        if is_sealed(plain.get(name)):
            if box is None:
                raise SecretKeyMissing()
            plain[name] = box.decrypt(plain[name][SEALED])
    return parse_channel(plain, index)


def stored_key(raw: Any) -> str | None:
    """The delivery identity a sealed entry carries (readable without the key)."""
    key = raw.get("key") if isinstance(raw, dict) else None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if isinstance(key, str) and isinstance(kind, str) and key.startswith(f"{kind}:"):
        return key[:80]
    return None


def describe(raw: Any, index: int) -> dict[str, str]:
    """``{"type", "label"}`` for showing a stored entry: never a secret, never decrypts, and
    never fails (an entry that cannot be read is shown as such, not a 500)."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    shown_type = kind[:20] if isinstance(kind, str) else "unknown"
    if isinstance(raw, dict) and any(is_sealed(raw.get(f)) for f in _fields(raw)):
        origin = raw.get("origin")
        if isinstance(origin, str) and origin.startswith(("http://", "https://")):
            return {"type": shown_type, "label": f"{shown_type} {origin[:200]}"}
        return {"type": shown_type, "label": "invalid channel"}  # sealed as it was found
    try:
        cfg = parse_channel(raw, index)
        return {"type": cfg.type, "label": cfg.label}
    except Exception:  # an old row of any shape: show what can be shown, never fail the view
        return {"type": shown_type, "label": "invalid channel"}


@dataclass(frozen=True, slots=True)
class Opened:
    """A stored entry as delivery sees it: its identity and label, and either the ``config``
    to send with or the ``error`` that stops it (``key`` ``invalid:<i>``: never sendable)."""

    key: str
    type: str
    target: str
    config: ChannelConfig | None = None
    error: DeliveryError | None = None

    @property
    def invalid(self) -> bool:
        return self.key.startswith("invalid:")


def open_for_delivery(raw: Any, index: int, box: SecretBox | None) -> Opened:
    """Never raises: whatever is wrong with one entry is that entry's failure alone."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    shown = kind[:10] if isinstance(kind, str) else "unknown"
    where = f"channels[{index}]"
    try:
        cfg = open_channel(raw, index, box)
        return Opened(stored_key(raw) or cfg.key, cfg.type, cfg.label, config=cfg)
    except ChannelConfigError as exc:  # our own message, naming the field (never a value)
        error = DeliveryError("invalid_channel", detail=exc.message, transient=False)
        return Opened(f"invalid:{index}", shown, where, error=error)
    except (SecretKeyMissing, SecretUnreadable) as exc:
        # A key not deployed to this worker yet, or dropped too early: retried with backoff
        # (fixing the key delivers it), failed after the last attempt like any failure.
        reason = "secret_key_missing" if isinstance(exc, SecretKeyMissing) else \
            "secret_unreadable"
        key = stored_key(raw)
        if key is None:
            return Opened(f"invalid:{index}", shown, where,
                          error=DeliveryError(reason, transient=False))
        return Opened(key, shown, describe(raw, index)["label"],
                      error=DeliveryError(reason, transient=True))
    except Exception as exc:  # anything else about one entry must not sink the batch
        error = DeliveryError("invalid_channel", detail=type(exc).__name__, transient=False)
        return Opened(f"invalid:{index}", shown, where, error=error)


@dataclass(frozen=True, slots=True)
class SealReport:
    budgets: int = 0  # budgets rewritten
    sealed: int = 0  # entries that were plain text and are now sealed
    rotated: int = 0  # sealed entries re-encrypted with the first key
    invalid: int = 0  # of the sealed ones, entries that are not valid channels


_PLAIN_BUDGETS = text(
    """
    SELECT id, scope, period, channels FROM budgets b
    WHERE jsonb_typeof(b.channels) = 'array'
      AND EXISTS (SELECT 1 FROM jsonb_array_elements(b.channels) e
                  WHERE jsonb_typeof(e) = 'object'
                    AND ((e->>'type' = 'webhook' AND (jsonb_typeof(e->'url') = 'string'
                                                      OR jsonb_typeof(e->'secret') = 'string'))
                         OR (e->>'type' = 'slack' AND jsonb_typeof(e->'url') = 'string')))
    ORDER BY id
    FOR UPDATE SKIP LOCKED
    """
)
_ALL_BUDGETS = text(
    "SELECT id, scope, period, channels FROM budgets WHERE jsonb_typeof(channels) = 'array' "
    "ORDER BY id FOR UPDATE"
)
_WRITE = text("UPDATE budgets SET channels = CAST(:channels AS jsonb) WHERE id = :id")


def seal_legacy(conn: Connection, box: SecretBox, *, rotate: bool = False) -> SealReport:
    """Seal every entry still in the old plain form (and, with ``rotate``, re-encrypt every
    sealed one with the first key), in ``conn``'s transaction.

    Without ``rotate`` it skips budgets another transaction holds (a concurrent PUT: the
    next run gets them), so the beat never waits. With ``rotate`` it locks every budget and
    raises ``SecretUnreadable`` if any sealed value does not decrypt: nothing is changed then.
    """
    rows = conn.execute(_ALL_BUDGETS if rotate else _PLAIN_BUDGETS).all()
    budgets = sealed = rotated = invalid = 0
    for row in rows:
        out, changed = [], False
        for i, raw in enumerate(row.channels):
            if rotate and isinstance(raw, dict) and any(is_sealed(raw.get(f))
                                                         for f in _fields(raw)):
                try:
                    raw = {**raw, **{f: {SEALED: box.rotate(raw[f][SEALED])}
                                     for f in _fields(raw) if is_sealed(raw.get(f))}}
                except SecretUnreadable as exc:
                    raise SecretUnreadable(f"budget {row.scope} ({row.period}) channels[{i}]: "
                                           f"{exc.message}; nothing was changed") from None
                rotated, changed = rotated + 1, True
            if has_plaintext_secret(raw):
                raw, valid = seal_entry(raw, i, box)
                sealed, invalid, changed = sealed + 1, invalid + (not valid), True
            out.append(raw)
        if changed:
            conn.execute(_WRITE, {"id": row.id, "channels": json.dumps(out)})
            budgets += 1
    return SealReport(budgets, sealed, rotated, invalid)


def seal_entry(raw: dict[str, Any], index: int, box: SecretBox) -> tuple[dict[str, Any], bool]:
    """An old plain entry, sealed; and whether it is a valid channel. An invalid one has its
    secret fields sealed all the same (a broken Slack URL is still a secret), without
    ``key``/``origin``: delivery reports it as invalid, the view as "invalid channel"."""
    try:
        return seal(parse_channel(_without_extras(raw), index), box), True
    except Exception:  # an old row of any shape: its secrets are sealed as they are
        out = dict(raw)
        for name in _fields(raw):
            if isinstance(out.get(name), str):
                out[name] = {SEALED: box.encrypt(out[name])}
        return out, False


def _without_extras(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in _CLEAR_EXTRAS}
