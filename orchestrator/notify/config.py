"""Channel configuration of a budget (CONTRACT "Alert channels"), validated with pydantic.

``parse_channels`` turns the ``channels`` list of a budget into typed configs, or raises
:class:`ChannelConfigError` naming the entry, e.g. ``channels[0].url: must be an http(s) URL``.
A URL's shape (scheme, host, port 1-65535) is checked here, without DNS; whether it may be
called is the egress policy's business (``orchestrator.egress``). Configs know a stable ``key``
(identity of a delivery target across retries, without the secret) and a ``label`` safe to log
(no path, query or token). They hold secrets in plain text: in memory only (``notify.stored``
is how they are kept).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.egress import EgressRefused, parse_url
from orchestrator.notify.errors import ChannelConfigError

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.?[^@\s<>,;\"]*$")


def _http_url(v: str) -> str:
    try:
        parse_url(v)
    except EgressRefused as exc:
        raise ValueError(exc.problem) from None
    return v


def _email(v: str) -> str:
    if not _EMAIL.match(v):
        raise ValueError("must be an email address")
    return v


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL the validator accepted (so this cannot fail)."""
    return parse_url(url).origin


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookConfig(_Config):
    type: Literal["webhook"] = "webhook"
    url: str = Field(repr=False)  # may carry a token in its path or query
    secret: str = Field(min_length=16, repr=False)

    _url = field_validator("url")(_http_url)

    @property
    def key(self) -> str:
        return "webhook:" + _digest(self.url)

    @property
    def origin(self) -> str:
        return _origin(self.url)

    @property
    def label(self) -> str:
        return f"webhook {self.origin}"


class SlackConfig(_Config):
    type: Literal["slack"] = "slack"
    url: str = Field(repr=False)  # an incoming-webhook URL is a secret

    _url = field_validator("url")(_http_url)

    @property
    def key(self) -> str:
        return "slack:" + _digest(self.url)

    @property
    def origin(self) -> str:
        return _origin(self.url)

    @property
    def label(self) -> str:
        return f"slack {self.origin}"


class EmailConfig(_Config):
    type: Literal["email"] = "email"
    to: list[Annotated[str, AfterValidator(_email)]] = Field(min_length=1, max_length=50)

    @property
    def key(self) -> str:
        return "email:" + _digest(*sorted(a.lower() for a in self.to))

    @property
    def label(self) -> str:
        n = len(self.to)
        return f"email ({n} recipient{'s' if n != 1 else ''})"


ChannelConfig = WebhookConfig | SlackConfig | EmailConfig
_BY_TYPE: dict[str, type[WebhookConfig] | type[SlackConfig] | type[EmailConfig]] = {
    "webhook": WebhookConfig, "slack": SlackConfig, "email": EmailConfig,
}


def parse_channel(raw: Any, index: int = 0) -> ChannelConfig:
    where = f"channels[{index}]"
    if not isinstance(raw, dict):
        raise ChannelConfigError(f"{where}: must be an object", field=where)
    kind = raw.get("type")
    model = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ChannelConfigError(
            f"{where}.type: must be one of {', '.join(_BY_TYPE)}", field=f"{where}.type"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = where + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]
        )
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "too_short":
            msg = "must not be empty" if field.endswith(".to") else msg
        raise ChannelConfigError(f"{field}: {msg}", field=field) from None


def parse_channels(raw: Any) -> list[ChannelConfig]:
    """Validate a budget's whole ``channels`` list (what ``PUT /v1/budgets`` should call)."""
    if not isinstance(raw, list):
        raise ChannelConfigError("channels: must be a list", field="channels")
    configs = [parse_channel(item, i) for i, item in enumerate(raw)]
    keys = [c.key for c in configs]
    for i, k in enumerate(keys):
        if k in keys[:i]:
            raise ChannelConfigError(
                f"channels[{i}]: duplicates channels[{keys.index(k)}]", field=f"channels[{i}]"
            )
    return configs
