"""kombu's Redis transport, with one redis client per channel and the unacked bookkeeping
written off the consumer's thread.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, every delivered message
(the unacked index) and every ack. With redis-py 8 each one copies the whole response-callback
table: about as much CPU as the Redis command it is built for (bench/throughput.py,
bench/submit.py). A client is only a thread-safe handle on the channel's connection pool, so
this channel keeps one per pool and hands it out again.

kombu's QoS also writes each delivered message into the unacked hash and index, and removes
it on ack, as a blocking MULTI/EXEC round trip on the worker's event-loop thread: the one
thread that fetches every message. In a thread-pool worker whose tasks do real work, each of
those waits ends in a wait for the GIL, and the pool's threads sat idle for want of messages
(bench/throughput.py). :class:`QoS` queues those writes, in order, for a thread of its own that
sends whatever queued while its last batch was sent as one pipeline of at most four commands
(a message delivered and acked within one batch is never written). What that changes:

- A message's unacked record is written a moment after delivery, not before its task starts.
  A worker killed in that moment loses the message, as kombu's own window between the pop
  and the write already could: the sweeper revives the job (DESIGN §3; the job table decides
  what is owed work, not Redis).
- An ack is written a moment after the task. A worker killed in that moment leaves the
  message to be restored after the visibility timeout: a step delivered twice, which the
  chain's guarded steps make harmless.
- A reject, a restore (warm shutdown) and closing the channel first wait for the queued
  writes, so they see every delivered message.

``workers.celery_app`` selects this transport for ``redis://``, ``rediss://`` and
``unix://`` broker URLs; any other URL keeps the transport its scheme names.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from itertools import chain
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from orchestrator.health.direct import drop_if_closed

log = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss", "unix")
TRANSPORT = "workers.broker:Transport"


def transport_for(url: str) -> str | None:
    """This transport for a Redis broker URL; None (kombu's choice by scheme) otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return TRANSPORT if scheme in SCHEMES else None


def producer_app(name: str, url: str) -> Celery:
    """A Celery app that only sends (an API's producer, a bench's or a test's), on the
    transport ``workers.celery_app`` uses for the same URL."""
    app = Celery(name, broker=url)
    app.conf.broker_transport = transport_for(url)
    return app


_STOP = object()


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS whose unacked-hash writes (delivery, ack) go to a writer thread, in
    order, batched into one pipeline per wake-up (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._conn: Any = None  # the writer's redis.connection.Connection
        self._conn_pool: Any = None

    def append(self, message: Any, delivery_tag: Any) -> None:
        info = message.delivery_info
        raw = dumps([message._raw, info["exchange"], info["routing_key"]])  # type: ignore[no-untyped-call]
        self._queue(("append", delivery_tag, time.time(), raw))
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        self._queue(("ack", delivery_tag))
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._connection_lost():
            # A task that ended after its channel was closed (the connection lost; its retry
            # could not be published while Redis was down) rejects its message there: kombu
            # would raise AttributeError in the worker's event loop, and the worker exited
            # ("Unrecoverable error"). Redis cannot be told now, so neither a requeue nor the
            # removal of its unacked record happens: a Redis that kept its data restores the
            # message after the visibility timeout (a guarded step run again, a no-op), and
            # the sweeper revives the job as it does those restore_unacked gave up.
            log.warning("broker connection lost: a rejected message left to the sweeper",
                        extra={"delivery_tag": str(delivery_tag), "requeue": requeue})
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        self.flush()
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> None:
        self.flush()
        if client is None and self._connection_lost():
            # The broker connection was lost and its transport already let go of its
            # settings: kombu would build a pool from nothing and raise AttributeError, which
            # stopped the worker for good ("Unrecoverable error") on a Redis restart. The
            # messages' unacked records stay in Redis (restored after the visibility timeout)
            # and the sweeper revives their jobs: give them up here and let Celery reconnect.
            log.warning("broker connection lost: %d unacked message(s) left to the sweeper",
                        len(self._delivered))
            self._delivered.clear()
            return
        super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def _connection_lost(self) -> bool:
        """The channel's transport let go of its settings, or the channel was closed (kombu
        then drops its transport): no pool can be made for it any more."""
        return getattr(self.channel.connection, "client", None) is None

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every write queued so far has been sent; False on timeout."""
        if self._writer is None or threading.current_thread() is self._writer:
            return True
        done = threading.Event()
        self._writes.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        """Send what is queued, then end the writer thread and close its connection."""
        if self._writer is not None:
            self._writes.put(_STOP)
            self._writer.join(30)
            self._writer = None
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None

    def _queue(self, write: tuple[Any, ...]) -> None:
        if self._connection_lost():  # Redis cannot be told; a writer would never be stopped
            return
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                    name="kombu-unacked-writer")
                    self._writer.start()
        self._writes.put(write)

    def _write_loop(self) -> None:
        while True:
            batch = self._take()
            writes = [w for w in batch if isinstance(w, tuple)]
            if writes:
                self._send(writes)
            for w in batch:
                if isinstance(w, threading.Event):
                    w.set()
            if any(w is _STOP for w in batch):
                return

    def _take(self) -> list[Any]:
        """The next write and whatever queued behind it while the last batch was sent."""
        batch = [self._writes.get()]
        while True:
            try:
                batch.append(self._writes.get_nowait())
            except queue.Empty:
                return batch

    def _send(self, writes: list[tuple[Any, ...]]) -> None:
        """At most four commands for the whole batch; a message both delivered and acked in
        it is not written at all."""
        records: dict[Any, tuple[float, str]] = {}
        acked: list[Any] = []
        for w in writes:
            if w[0] == "append":
                records[w[1]] = (w[2], w[3])
            elif records.pop(w[1], None) is None:  # its record was written in an earlier batch
                acked.append(w[1])
        if not records and not acked:
            return
        prefix = getattr(self.channel, "global_keyprefix", "") or ""  # as kombu's client adds
        index, table = prefix + self.unacked_index_key, prefix + self.unacked_key
        commands: list[tuple[Any, ...]] = []
        if records:
            commands.append(("ZADD", index, *chain.from_iterable(
                (score, tag) for tag, (score, _) in records.items())))
            commands.append(("HSET", table, *chain.from_iterable(
                (tag, raw) for tag, (_, raw) in records.items())))
        if acked:
            commands += [("ZREM", index, *acked), ("HDEL", table, *acked)]
        try:
            self._pipeline(commands)
        except Exception as exc:  # the thread must live on; see the module docstring
            log.warning("unacked bookkeeping not written (%d writes): %s", len(writes),
                        type(exc).__name__)

    def _pipeline(self, commands: list[tuple[Any, ...]]) -> None:
        """The commands as one pipeline on the writer's own connection, made as the channel's
        pool makes its own: redis-py's Pipeline (pool checkout, per-command callbacks) cost
        about as much CPU as the rest of a job's bookkeeping. An idle connection the server
        closed is made again, and a failure on the wire retried under the connection's
        ``Retry`` policy, as the client's path does."""
        pool = self.channel.pool
        conn = self._conn
        if conn is None or self._conn_pool is not pool:  # a reconnect gives a new pool
            if conn is not None:
                conn.disconnect()
            conn = self._conn = pool.connection_class(**pool.connection_kwargs)
            self._conn_pool = pool
        drop_if_closed(conn)

        def send() -> None:
            try:
                conn.send_packed_command(conn.pack_commands(commands))
                for _ in commands:
                    conn.read_response()
            except BaseException:
                conn.disconnect()  # unread replies would answer the next batch's commands
                raise

        conn.retry.call_with_retry(send, lambda _error: conn.disconnect())


class Channel(kombu_redis.Channel):
    QoS = QoS

    def close(self) -> None:
        qos = self._qos if isinstance(self._qos, QoS) else None
        if qos is not None:
            qos.flush()  # before the pools close and unacked messages are restored
        super().close()  # type: ignore[no-untyped-call]
        if qos is not None:
            qos.stop()

    def _create_client(self, asynchronous: bool = False) -> Any:
        pool = self.async_pool if asynchronous else self.pool
        slot = "_orch_async_client" if asynchronous else "_orch_client"
        client = self.__dict__.get(slot)
        # a reconnect gives the channel a new pool: the client must follow it
        if client is None or client.connection_pool is not pool:
            client = super()._create_client(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            self.__dict__[slot] = client
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
