"""Wake-ups of the API's event streams: one ``LISTEN`` connection per API process, on the
channels of the jobs and tenants it streams (migration 0015's ``pg_notify`` at commit sends
each event on ``orch_job_<id>`` and ``orch_tenant_<md5 of the tenant>``).

The events table stays the source of truth; a notification only says "look again":

- a **job stream** waits on an ``asyncio.Event`` for its job and reads the job's events after
  its last ``seq`` itself (one stream per job, as a rule);
- a **tenant feed** is read once per wake-up for all of that tenant's streams here
  (:class:`TenantFeed`), and each stream gets the events through its own bounded queue, so
  200 streams of one tenant cost one query per wake-up, not 200.

A process hears only the events of what it streams: on one channel for every event, 200
open job streams made each API process parse every notification of every job, and took its
CPU per submission from 3.4 to 4.7 ms (bench/streams.py). The listener waits on both the
connection and the subscriptions: a stream that comes or goes stops the wait, the channels
are (un)listened, and the streams of each newly heard channel are woken, so an event
committed before its channel was heard is read then, not lost. (It used to wake every 50 ms
to look for new subscriptions: about 9 ms of CPU a second per API process for as long as
any stream was open.) A lost notification (the LISTEN connection dropped) costs latency, not
an event: after a reconnection every stream is woken and reads again. A tenant feed also reads every
``ORCH_EVENTS_PING_S`` seconds (one query per tenant); a job stream only when woken, so that
streams opened together do not query together for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from anyio import to_thread
from sqlalchemy import Engine

from orchestrator.events.store import Event, FeedCursor, feed_events, feed_head

log = logging.getLogger(__name__)

QUEUE_SIZE = 2000  # a stream this far behind is ended; its client resumes with Last-Event-ID
# subscription changes are LISTENed at most this often (those of the moment in one round
# trip): how long a new stream's channel may wait to be heard
RESUBSCRIBE_S = 0.05
_HELD_BACK_RETRY_S = 0.02  # committed but behind a running transaction (see store)
_HELD_BACK_GIVE_UP_S = 10.0


def job_channel(job_id: uuid.UUID) -> str:
    """The channel of a job's events (as migration 0015's trigger names it)."""
    return f"orch_job_{job_id.hex}"


def tenant_channel(tenant: str) -> str:
    """The channel of a tenant's events: a digest, as a channel name is at most 63 bytes."""
    return "orch_tenant_" + hashlib.md5(tenant.encode(), usedforsecurity=False).hexdigest()


class Lagging(Exception):
    """A tenant stream's queue overflowed: it must end (the client resumes)."""


class TenantFeed:
    """The tenant's events after ``cursor``, read once per wake-up and handed to every
    subscribed queue in order."""

    def __init__(self, hub: EventHub, tenant: str, cursor: FeedCursor) -> None:
        self.hub = hub
        self.tenant = tenant
        self.cursor = cursor
        self.queues: set[asyncio.Queue[Event | None]] = set()
        self.wake = asyncio.Event()
        self.outstanding: dict[int, float] = {}  # notified positions not yet read
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queues:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.hub.ping_s)
            self.wake.clear()
            try:
                await self._read()
            except Exception as exc:  # the database blinked: the next wake-up reads again
                log.warning("tenant feed read failed: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                self.wake.set()
                continue
            now = loop.time()
            self.outstanding = {p: t for p, t in self.outstanding.items()
                                if now - t < _HELD_BACK_GIVE_UP_S}
            if self.outstanding:
                loop.call_later(_HELD_BACK_RETRY_S, self.wake.set)

    async def _read(self) -> None:
        while True:
            batch = await to_thread.run_sync(self.hub.read_feed, self.tenant, self.cursor)
            for ev in batch:
                self.cursor = (ev.txid, ev.position)
                self.outstanding.pop(ev.position, None)
                for q in list(self.queues):
                    try:
                        q.put_nowait(ev)
                    except asyncio.QueueFull:
                        self.queues.discard(q)
                        with contextlib.suppress(asyncio.QueueEmpty):
                            q.get_nowait()
                        q.put_nowait(None)  # tells the stream it fell behind
            if len(batch) < 500:
                return


class EventHub:
    def __init__(self, engine: Engine, ping_s: float = 15.0) -> None:
        self.engine = engine
        self.ping_s = ping_s
        self.dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._jobs: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._feeds: dict[str, TenantFeed] = {}
        self._listener: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a subscription came or went
        self._heard: set[str] = set()  # the channels the listener's connection listens on
        self._subscribed_at = 0.0  # the loop's time of the last (UN)LISTEN
        self.streams = 0  # open streams of this process (ORCH_API_MAX_STREAMS)

    # -- subscriptions --------------------------------------------------------------------
    def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    @contextlib.contextmanager
    def watch_job(self, job_id: uuid.UUID) -> Iterator[asyncio.Event]:
        self._ensure_listening()
        wake = asyncio.Event()
        self._jobs.setdefault(job_id, set()).add(wake)
        self._changed.set()
        try:
            yield wake
        finally:
            waiters = self._jobs.get(job_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._jobs[job_id]
                    self._changed.set()

    @contextlib.asynccontextmanager
    async def watch_tenant(self, tenant: str) -> AsyncIterator[asyncio.Queue[Event | None]]:
        """A queue of the tenant's events from now on (None: fell behind, end the stream).
        Read the events before now yourself, after subscribing, and skip repeats."""
        self._ensure_listening()
        feed = self._feeds.get(tenant)
        if feed is None or feed.task.done():
            head = await to_thread.run_sync(self.read_head, tenant)
            feed = self._feeds.get(tenant)  # another stream may have made it meanwhile
            if feed is None or feed.task.done():
                feed = TenantFeed(self, tenant, head)
                self._feeds[tenant] = feed
                self._changed.set()
        q: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_SIZE)
        feed.queues.add(q)
        try:
            yield q
        finally:
            feed.queues.discard(q)
            if not feed.queues:
                feed.wake.set()  # its task sees no queue and ends
                if self._feeds.get(tenant) is feed:
                    del self._feeds[tenant]
                    self._changed.set()

    # -- database (run in a worker thread) -------------------------------------------------
    def read_feed(self, tenant: str, after: FeedCursor) -> list[Event]:
        with self.engine.connect() as conn:
            return feed_events(conn, tenant, after)

    def read_head(self, tenant: str) -> FeedCursor:
        with self.engine.connect() as conn:
            return feed_head(conn, tenant)

    # -- notifications ---------------------------------------------------------------------
    def _dispatch(self, payload: dict[str, Any]) -> None:
        try:
            job = uuid.UUID(str(payload["j"]))
            tenant = str(payload["t"])
            position = int(payload["p"])
        except (KeyError, ValueError, TypeError):
            return
        for wake in self._jobs.get(job, ()):
            wake.set()
        feed = self._feeds.get(tenant)
        if feed is not None:
            feed.outstanding[position] = asyncio.get_running_loop().time()
            feed.wake.set()

    def _wake(self, channels: set[str]) -> None:
        """Wake the streams of these channels: they read what they may not have heard of."""
        for job_id, waiters in self._jobs.items():
            if job_channel(job_id) in channels:
                for wake in waiters:
                    wake.set()
        for tenant, feed in self._feeds.items():
            if tenant_channel(tenant) in channels:
                feed.wake.set()

    async def _listen(self) -> None:
        # runs as long as the process: one connection, and no race with a stream that
        # subscribes while it would be stopping
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, application_name="orchestrator-events")
                async with conn:
                    self._heard = set()
                    self._changed.set()  # a new connection listens on nothing yet
                    while True:
                        await self._subscribe(conn)
                        if not self._heard:  # nothing to hear: wait for a subscription
                            await self._changed.wait()
                            continue
                        await self._hear(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("event listener: %s; reconnecting", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _hear(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Dispatch notifications until a subscription comes or goes. The reading is
        cancelled then, as the connection must be free to LISTEN: psycopg's ``notifies()``
        holds it for as long as it waits (psycopg/psycopg#340), and a cancelled wait only
        stops waiting (what arrives meanwhile is read by the next one)."""

        async def read() -> None:
            async for n in conn.notifies():
                with contextlib.suppress(ValueError):
                    self._dispatch(json.loads(n.payload))

        reader = asyncio.ensure_future(read())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({reader, changed}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():  # streams opening together are LISTENed together
                loop = asyncio.get_running_loop()
                await asyncio.wait({reader}, timeout=max(
                    0.0, self._subscribed_at + RESUBSCRIBE_S - loop.time()))
        finally:
            for task in (reader, changed):
                task.cancel()
            await asyncio.gather(reader, changed, return_exceptions=True)
        if not reader.cancelled() and (lost := reader.exception()) is not None:
            raise lost  # the connection's error: the listener reconnects

    async def _subscribe(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN on the channels streamed now and UNLISTEN the others (one round trip), then
        wake the streams of the new ones. Nothing to do unless a subscription came or went."""
        if not self._changed.is_set():
            return
        self._changed.clear()
        wanted = ({job_channel(j) for j in self._jobs}
                  | {tenant_channel(t) for t in self._feeds})
        new, gone = wanted - self._heard, self._heard - wanted
        if not new and not gone:
            return
        self._subscribed_at = asyncio.get_running_loop().time()
        await conn.execute("; ".join([*(f'LISTEN "{c}"' for c in sorted(new)),
                                      *(f'UNLISTEN "{c}"' for c in sorted(gone))]))
        self._heard = wanted
        self._wake(new)

    async def close(self) -> None:
        tasks = [t for t in [self._listener, *(f.task for f in self._feeds.values())] if t]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
