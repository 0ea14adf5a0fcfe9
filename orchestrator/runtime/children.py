"""The environment a program this process starts gets when it is not one of ours (pg_dump,
pg_restore, psql, the embedded PostgreSQL server)."""

from __future__ import annotations

import os


def child_environment() -> dict[str, str]:
    """This process's environment without the orchestrator's own settings (``ORCH_*``): such
    a program reads none of them, and among them are the backup key (``ORCH_BACKUP_KEY``),
    the secret key, the API key, passwords and the database URL with its password, which it
    must not be handed (nor show in /proc/PID/environ, readable by its user)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
