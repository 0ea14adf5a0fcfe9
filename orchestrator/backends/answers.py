"""How a provider's answer other than 2xx maps onto the error tree
(``orchestrator.backends.errors``), for every HTTP adapter: its status, the error code and
parameter its body names (``{"error": {"code" or "type", "param"}}`` or ``{"code" or
"type"}``; a provider's free-text message is never read), and the wait it asks for. And
the things said of a provider's words: ``safe_token`` (a code reduced to what is safe to
log), ``warn_once``, and ``whole_count`` (how a count it sends is read).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from orchestrator.backends.errors import BackendError, BackendFault, JobFault, TransientError
from orchestrator.backends.transport import Reply
from orchestrator.retry_after import parse_retry_after

log = logging.getLogger("orchestrator.backends")

JOB_FAULT_STATUSES = frozenset({400, 422})
# A gateway's answer for an origin that took the request and did not answer in time or
# answered something it could not pass on (Cloudflare's 520 and 524 among them): the provider
# behind it may go on working, and billing.
GATEWAY_STATUSES = frozenset({502, 504, 520, 524})
# 4xx codes that say the backend's model is wrong, whatever the job: another backend can run it
MODEL_CODES = frozenset({"model_not_found", "invalid_model", "unknown_model",
                         "model_not_available", "invalid_version"})
# RFC 9457 problem titles (a constant per kind of problem, unlike ``detail``) that name a code,
# for a provider whose error bodies carry no ``code``: Replicate answers a version that does not
# exist, or that the account may not run, so (422), which is no fault of the job's input
_PROBLEM_TITLES = {"invalid version or not permitted": "invalid_version"}
# A parameter the adapters send in every request, whatever its value: the provider refusing
# the parameter itself (``unsupported_parameter``: o-series models refuse ``max_tokens``) is
# the backend's configuration at fault. A refused value (``unsupported_value``) or a job's own
# parameter stays the job's fault, or a tenant could open a shared breaker with three jobs.
ADAPTER_PARAMS = frozenset({"model", "messages", "max_tokens", "n", "size", "prompt", "input",
                            "version"})
# 429 codes that are no rate limit but our account out of money: retrying cannot help
PAYMENT_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached",
                           "billing_not_active"})
CONTENT_POLICY_MARKERS = ("content_policy", "content_filter", "safety", "nsfw", "moderation")
_SAFE_TOKEN = re.compile(r"[^A-Za-z0-9_.\-\[\]]")


# what warn_once has said; cleared when full, so a provider that varies without end costs a
# repeated warning, never memory
_WARNED: set[tuple[str, ...]] = set()
_WARNED_MAX = 256


def warn_once(key: tuple[str, ...], message: str, *args: Any) -> None:
    """Log ``message`` at WARNING the first time ``key`` (a backend and what is said of it)
    comes: a provider that always answers so would otherwise write it on every job."""
    if key in _WARNED:
        return
    if len(_WARNED) >= _WARNED_MAX:
        _WARNED.clear()
    _WARNED.add(key)
    log.warning(message, *args)


def whole_count(value: Any, limit: int = 10**12) -> int | None:
    """A count a provider sent (tokens, images): a non-negative whole number up to
    ``limit``, written ``10`` or ``10.0`` (JSON has one number type; a server that counts in
    floats writes the second), as an int; None for anything else. A count refused makes the
    whole answer unreadable, and a paid answer unreadable is reconciled as a lost one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():  # NaN and the infinities are not
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= limit else None


def safe_token(value: Any, limit: int = 64) -> str | None:
    """A provider-supplied code or parameter name, reduced to something safe to log."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = _SAFE_TOKEN.sub("", str(value))[:limit]
    return text or None


def error_for(resp: Reply, backend: str, *, creates: bool = False,
              max_retry_after_s: float = 10.0) -> BackendError:
    """The error an answer other than 2xx from ``backend`` stands for. ``creates``: the
    request would have
    created paid work, where a code saying "out of credit" or "this backend's model, or a
    parameter every request carries, is refused" makes the backend the one at fault (a
    strike, and another backend runs the job); to a poll those stay what their status
    says."""
    status = resp.status_code
    provider_code, param = provider_error(resp)
    common: dict[str, Any] = {"backend": backend, "status_code": status}
    if provider_code:
        common["provider_code"] = provider_code
    if creates and status == 429 and provider_code in PAYMENT_CODES:
        return BackendFault(f"{backend}: out of quota or credit (HTTP 429)",
                            code="backend_payment_required", **common)
    if status == 429:
        return TransientError(
            f"{backend}: rate limited (HTTP 429)", code="rate_limited",
            retry_after_s=retry_after(resp), **common,
        )
    if status == 408:
        return TransientError(f"{backend}: request timeout (HTTP 408)",
                              code="backend_timeout", **common)
    if status >= 500:
        code = "backend_unavailable" if status in (502, 503, 504) else "backend_server_error"
        # a wait longer than the in-call retries take is not taken: the usual backoff is
        wait = retry_after(resp)
        if wait is not None and wait > max_retry_after_s:
            wait = None
        return TransientError(f"{backend}: server error (HTTP {status})", code=code,
                              retry_after_s=wait, **common)
    config = provider_code is not None and (
        provider_code.lower() in MODEL_CODES
        or (provider_code.lower() == "unsupported_parameter" and param in ADAPTER_PARAMS))
    if creates and config:
        where = f" (parameter {param})" if param else ""
        if param:
            common["param"] = param
        return BackendFault(f"{backend}: the provider refuses the backend's "
                            f"configuration{where}", code="backend_config", **common)
    if status in JOB_FAULT_STATUSES:
        policy = provider_code is not None and any(
            m in provider_code.lower() for m in CONTENT_POLICY_MARKERS
        )
        code = "content_policy" if policy else "invalid_input"
        what = "refused by content policy" if policy else "rejected the input"
        where = f" (parameter {param})" if param else ""
        if param:
            common["param"] = param
        return JobFault(f"{backend} {what}{where}", code=code, **common)
    if status in (401, 403):
        return BackendFault(f"{backend}: not authorised (HTTP {status}); check the API key",
                            code="backend_auth", **common)
    if status == 402 or 300 <= status < 400:
        # our account with the provider (out of credit) or its address (moved): the
        # backend's problem, which another backend does not have
        code = "backend_payment_required" if status == 402 else "backend_redirect"
        return BackendFault(f"{backend}: HTTP {status}", code=code, **common)
    if status == 404:
        return BackendFault(f"{backend}: not found (HTTP 404)",
                            code="backend_not_found", **common)
    return JobFault(f"{backend}: request rejected (HTTP {status})", code="rejected",
                    **common)


def retry_after(resp: Reply) -> float | None:
    """Seconds the provider asks us to wait: ``Retry-After``, else ``retry-after-ms`` (as
    OpenAI's and Anthropic's APIs send it), else None."""
    value = parse_retry_after(resp.header("Retry-After"))
    if value is None:
        ms = resp.header("retry-after-ms")
        try:
            value = float(ms) / 1000 if ms is not None else None
        except ValueError:
            return None
    # a day at most (infinity too, which JSON details could not hold); NaN or a negative
    # figure is no wait
    if value is None or not value >= 0:
        return None
    return min(value, 86_400.0)


def provider_error(resp: Reply) -> tuple[str | None, str | None]:
    """(error code or type, offending parameter) from an OpenAI- or Replicate-style body."""
    try:
        body = resp.json()
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    err = body.get("error")
    if isinstance(err, dict):
        code = safe_token(err.get("code")) or safe_token(err.get("type"))
        return code, safe_token(err.get("param"))
    kind = body.get("type")
    if isinstance(kind, str) and ("/" in kind or ":" in kind):
        kind = None  # a problem body's type is a URI (``about:blank``), no code
    code = safe_token(body.get("code")) or safe_token(kind)
    title = body.get("title")
    if code is None and isinstance(title, str):
        code = _PROBLEM_TITLES.get(" ".join(title.lower().split()))
    return code, None
