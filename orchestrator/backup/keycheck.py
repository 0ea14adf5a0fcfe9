"""After a restore: whether this machine's secret key opens the secrets the database holds.

Webhook endpoints' URLs and secrets and budget channels' secrets are sealed with the key of
the machine that stored them (``ORCH_SECRET_KEY`` or ``<data_dir>/secret.key``, see
orchestrator.secrets), which no backup contains. Restored without that key they cannot be
read: ``GET /v1/webhooks/secret`` answers ``409 secret_unreadable`` and their deliveries
fail. ``orchestrator backup restore`` says so in one warning line, naming the fix.
"""

from __future__ import annotations

import psycopg

from orchestrator.backup.pgtools import Target
from orchestrator.errors import ConfigurationError
from orchestrator.notify.stored import SEALED
from orchestrator.secrets import KEY_SETTING, SecretBox, SecretUnreadable, key_file_path, load_keys
from orchestrator.settings import Settings

# every sealed value: the endpoints' url and secret, each budget channel's sealed fields
_SEALED_VALUES = """
    SELECT v ->> %(k)s FROM webhook_endpoints w,
        LATERAL (VALUES (w.url), (w.secret)) AS t(v)
    WHERE jsonb_typeof(v) = 'object' AND jsonb_typeof(v -> %(k)s) = 'string'
    UNION ALL
    SELECT f.value ->> %(k)s FROM budgets b,
        jsonb_array_elements(CASE WHEN jsonb_typeof(b.channels) = 'array'
                                  THEN b.channels ELSE '[]' END) e,
        jsonb_each(CASE WHEN jsonb_typeof(e) = 'object' THEN e ELSE '{}' END) f
    WHERE jsonb_typeof(f.value) = 'object' AND jsonb_typeof(f.value -> %(k)s) = 'string'
"""

RESET = ("or set them anew: PUT /v1/webhooks with a new secret, PUT /v1/budgets with the "
         "channels")


def sealed_values(url: str) -> list[str]:
    with psycopg.connect(Target(url).conninfo(), connect_timeout=10) as conn:
        return [row[0] for row in conn.execute(_SEALED_VALUES, {"k": SEALED})]


def unreadable(tokens: list[str], box: SecretBox) -> int:
    n = 0
    for token in tokens:
        try:
            box.decrypt(token)
        except SecretUnreadable:
            n += 1
    return n


def key_warning(url: str, settings: Settings) -> str | None:
    """One line when secrets in the database at ``url`` will not open with the key this
    machine would use; None when every one opens (or there are none)."""
    tokens = sealed_values(url)
    if not tokens:
        return None
    path = key_file_path(settings.data_dir)
    try:
        box = load_keys(settings)
    except ConfigurationError as exc:
        return f"warning: the restored secrets could not be checked: {exc.message}"
    if box is None:
        return (f"warning: the database holds {len(tokens)} sealed secret(s) and no secret key "
                f"is configured here: put the old machine's secret key in {path} (or "
                f"{KEY_SETTING}) before starting, {RESET}")
    bad = unreadable(tokens, box)
    if not bad:
        return None
    source = KEY_SETTING if settings.secret_key is not None and \
        settings.secret_key.get_secret_value().strip() else str(path)
    return (f"warning: {bad} of {len(tokens)} sealed secret(s) do not decrypt with this "
            f"machine's secret key ({source}): add the old machine's key to it, {RESET}")
