"""Bearer key verification (with a short cache of verified keys) and the admin check.

Each API process has its own authenticator. A verified key is trusted for ``cache_s``
seconds without the database, so a revoked key stops working on every process within
``cache_s`` (at once only on the process that revoked it, which forgets the key). The
authenticator also remembers, for an hour, the keys it has found valid (this process's
memory, not shared): while a client address is over its failed-authentication limit, only
those are still checked against the database (:mod:`orchestrator.api.gate`).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine

from orchestrator.api.errors import Forbidden, Unauthorized
from orchestrator.api.principal import Principal
from orchestrator.store import keys as key_repo

__all__ = ["Authenticator", "Principal", "require_admin"]

_MAX_ENTRIES = 10_000
RECENTLY_VALID_S = 3600.0
TOUCH_EVERY_S = 60.0  # api_keys.last_used_at moves at most this often per key


class Authenticator:
    """Verifies bearer keys against the database, trusting a verified key for a few seconds."""

    def __init__(self, engine: Engine, cache_s: float) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._valid: dict[str, float] = {}  # digest -> until when it counts as recently valid
        self._live: dict[int, float] = {}  # key id -> until when a stream trusts it
        self._revoked: set[int] = set()  # revoked by this process: no need to ask
        self._lock = threading.Lock()

    @staticmethod
    def digest(token: str | None) -> str:
        """The key's hash; Unauthorized for a missing or malformed key (no database)."""
        if not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not key_repo.looks_like_key(token):
            raise Unauthorized("invalid API key")
        return key_repo.hash_key(token)

    def cached(self, digest: str) -> Principal | None:
        """The principal of a key verified within the last ``cache_s`` seconds; None:
        :meth:`verify` must ask the database."""
        with self._lock:
            hit = self._cache.get(digest)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def recently_valid(self, digest: str) -> bool:
        with self._lock:
            until = self._valid.get(digest)
        return until is not None and until > time.monotonic()

    def verify(self, token: str) -> Principal:
        """The key's principal from the database (blocking: run it in a thread)."""
        digest = self.digest(token)
        now = time.monotonic()
        with self.engine.begin() as conn:
            rec = key_repo.authenticate(conn, token, touch_every_s=TOUCH_EVERY_S)
        if rec is None:
            with self._lock:
                self._valid.pop(digest, None)
            raise Unauthorized("invalid API key")
        p = Principal(rec.tenant, rec.admin, rec.prefix, rec.id)
        with self._lock:
            if rec.id in self._revoked:
                # revoked here while the database was being asked, which read it before the
                # revocation: cached now, the key would work again here for ``cache_s``
                self._valid.pop(digest, None)
                raise Unauthorized("invalid API key")
            for table in (self._cache, self._valid):
                if len(table) > _MAX_ENTRIES:
                    table.clear()
            self._valid[digest] = now + RECENTLY_VALID_S
            if self.cache_s > 0:
                self._cache[digest] = (p, now + self.cache_s)
        return p

    def forget(self, key_id: int) -> None:
        """Stop trusting a cached key at once (it was just revoked here)."""
        with self._lock:
            for digest in [d for d, (p, _) in self._cache.items() if p.key_id == key_id]:
                del self._cache[digest]
            self._live.pop(key_id, None)
            if len(self._revoked) > _MAX_ENTRIES:
                self._revoked.clear()  # the database still says so, one query later
            self._revoked.add(key_id)

    def live_known(self, p: Principal) -> bool | None:
        """Whether the key an open stream was admitted with still works, without the
        database: False once it is known revoked, True while the answer is trusted (for
        ``cache_s``, as a verified key is); None: the caller asks :meth:`ask_live`.

        An open stream is authenticated once, at its start: without asking again, a revoked
        key would go on reading its tenant's events for as long as the connection stays
        open. Streams opened together wake together, every ping period; so a None also
        makes its caller the one that asks, and until the answer the process's other
        streams of the key go on trusting it (for at most ``cache_s``, as they would a
        cached answer): one query per key and period, where each stream used to send its
        own, all at once, taking the pool's connections and the threads from submissions."""
        now = time.monotonic()
        with self._lock:
            if p.key_id in self._revoked:
                return False
            until = self._live.get(p.key_id)
            if until is not None and until > now:
                return True
            if self.cache_s > 0:
                if len(self._live) > _MAX_ENTRIES:
                    self._live.clear()
                self._live[p.key_id] = now + self.cache_s
        return None

    def ask_live(self, p: Principal) -> bool:
        """The database's answer to :meth:`live_known` (blocking: run it in a thread),
        remembered: live for ``cache_s``, revoked for good."""
        with self.engine.connect() as conn:
            live = key_repo.key_id_live(conn, p.key_id)
        now = time.monotonic()
        with self._lock:
            if not live:
                self._live.pop(p.key_id, None)
                if len(self._revoked) > _MAX_ENTRIES:
                    self._revoked.clear()
                self._revoked.add(p.key_id)
            elif self.cache_s > 0:
                self._live[p.key_id] = now + self.cache_s
        return live


def require_admin(p: Principal) -> Principal:
    if not p.admin:
        raise Forbidden("this route needs an admin API key")
    return p
