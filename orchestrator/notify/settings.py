"""SMTP settings of the email channel (``ORCH_SMTP_*``).

Field names match ``orchestrator.settings.Settings`` (prefix ``ORCH_``), so they can be merged
there as they are.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.settings import setting_error, within_a_century


class SmtpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore", allow_inf_nan=False)

    _seconds = field_validator("*")(within_a_century)

    smtp_host: str | None = Field(default=None, description="unset = email channel disabled")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "orchestrator@localhost"
    smtp_starttls: bool = True
    smtp_ssl: bool = Field(default=False, validate_default=True,
                           description="TLS from the first byte (port 465)")
    smtp_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("smtp_from")
    @classmethod
    def _from(cls, v: str) -> str:
        if "@" not in v or any(c in v for c in "\r\n"):
            raise ValueError("must be an email address")
        return v

    @field_validator("smtp_ssl")
    @classmethod
    def _no_login_in_clear(cls, ssl: bool, info: ValidationInfo) -> bool:
        host, user = info.data.get("smtp_host"), info.data.get("smtp_user")
        if host and user and not (ssl or info.data.get("smtp_starttls")) \
                and not _loopback(host):
            raise ValueError(
                "ORCH_SMTP_USER is set while this and ORCH_SMTP_STARTTLS are both false: the "
                "login would cross the network in clear text; switch one on (only a server "
                "on this host, such as localhost, may be used without)")
        return ssl


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_smtp_settings() -> SmtpSettings:
    """The ``ORCH_SMTP_*`` settings; a bad one is a ConfigurationError naming it."""
    try:
        return SmtpSettings()
    except ValidationError as exc:
        raise setting_error(exc) from None
