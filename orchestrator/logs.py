"""Structured logs: one JSON object per line, and nothing secret in any of them.

``configure_logging(level, fmt)`` (called once at the start of ``orchestrator api|worker|beat``
and by the Celery worker's ``setup_logging`` signal) puts one handler on the root logger:

* ``fmt="json"``: ``{"ts": ..., "level": ..., "logger": ..., "message": ..., <extra>...}``
  — ``extra`` fields (``job_id``, ``tenant``, ``backend``, ``attempt``, ``outcome``,
  ``cost_micros``, ``duration_ms``...) become top-level keys;
* ``fmt="text"``: a human line, with the same extras as ``key=value`` after the message.

Both go through :class:`RedactingFilter`: fields named like a prompt, an input or a credential
(:data:`DROPPED_FIELDS`, at any depth of a dict) are dropped, and anything that looks like an
orchestrator API key (``orch_<prefix>_<secret>``) or a bearer token, and every value a
PostgreSQL error quotes (its DETAIL and CONTEXT lines), is replaced by ``[REDACTED]`` — in
the message, its arguments, the extras and an exception's text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Fields never logged, whatever logs them (compared lower-case, '-' read as '_').
DROPPED_FIELDS = frozenset({
    "prompt", "input", "inputs", "messages", "api_key", "apikey", "authorization", "secret",
    "password", "token", "key", "headers", "negative_prompt", "x_api_key",
})
REDACTED = "[REDACTED]"
_SECRET_RE = re.compile(
    r"orch_[0-9a-fA-F]{8}_[A-Za-z0-9_\-]{8,}"  # our API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]+=*"  # bearer tokens
    r"|(?<=://)[^/\s:@]*:[^/\s@]+(?=@)"  # user:password@ in URLs (Redis: no user)
)
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}
# PostgreSQL quotes values in an error's DETAIL and CONTEXT lines ("Failing row contains (…)",
# "Key (…)=(…)", "JSON data, line 1: …") and after "invalid input syntax for type …:", and a
# row can hold a prompt or a reply. Those lines lose their text (to the end of the line, or of
# a repr's escaped line); the message, SQLSTATE and constraint names stay for diagnosis.
_DB_VALUES_RE = re.compile(
    r"(DETAIL|CONTEXT):(?:(?!\\n)[^\n])*"
    r"|(invalid input (?:syntax|value) for (?:type|enum) [^:\n]{1,80}):(?:(?!\\n)[^\n])*")
_HANDLER_NAME = "orchestrator"
_MAX_DEPTH = 6


def redact_text(text: str) -> str:
    """``text`` with every key-, token- or password-looking substring, and every value a
    PostgreSQL error quotes, replaced."""
    text = _SECRET_RE.sub(REDACTED, text)
    # every line passes here (the API's access log among them); the PostgreSQL pattern, whose
    # scan doubled the cost (1.2 -> 2.9 us for an access line), runs on the few it can match
    if "DETAIL:" in text or "CONTEXT:" in text or "invalid input" in text:
        text = _DB_VALUES_RE.sub(_db_value_redacted, text)
    return text


def _db_value_redacted(match: re.Match[str]) -> str:
    return f"{match[1] or match[2]}: {REDACTED}"


def _dropped(name: str) -> bool:
    return name.lower().replace("-", "_") in DROPPED_FIELDS


def scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of ``value`` without dropped fields and with secrets redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {str(k): scrub(v, depth + 1) for k, v in value.items() if not _dropped(str(k))}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return redact_text(str(value))


class RedactingFilter(logging.Filter):
    """Drops secret- or prompt-named extras and redacts key-looking text, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template only
            message = str(record.msg)
        record.msg, record.args = redact_text(message), None
        for name in [n for n in vars(record) if n not in _STANDARD]:
            if _dropped(name):
                delattr(record, name)
            else:
                setattr(record, name, scrub(getattr(record, name)))
        return True


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in extras(record).items():
            out.setdefault(k, scrub(v))
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={scrub(v)}" for k, v in extras(record).items())
        head, sep, tail = line.partition("\n")  # keep a traceback after the fields
        return redact_text(f"{head} {fields}".rstrip() + sep + tail)


def configure_logging(level: str | int = "INFO", fmt: str = "json",
                      stream: TextIO | None = None) -> logging.Handler:
    """Route every logger through one redacting handler on the root logger (replacing the one
    a previous call installed; other handlers are left alone). Returns the handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # httpx logs every request's full URL at INFO: a Slack URL, a webhook's token path or a
    # provider's query key is a secret. Our callers log what matters (origin, status) instead.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def configure_logging_from_settings(settings: Any = None) -> logging.Handler:
    """``configure_logging`` with ``ORCH_LOG_LEVEL`` and ``ORCH_LOG_FORMAT``."""
    if settings is None:
        from orchestrator.settings import get_settings

        settings = get_settings()
    return configure_logging(settings.log_level, settings.log_format)
