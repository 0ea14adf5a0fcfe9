"""kombu's Redis transport, with one redis client per channel instead of one per message.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, every delivered message
(the unacked index) and every ack. With redis-py 8 each one copies the whole response-callback
table: about as much CPU as the Redis command it is built for (bench/throughput.py,
bench/submit.py). A client is only a thread-safe handle on the channel's connection pool, so
this channel keeps one per pool and hands it out again.

``workers.celery_app`` selects this transport for ``redis://``, ``rediss://`` and
``unix://`` broker URLs; any other URL keeps the transport its scheme names.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

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


class Channel(kombu_redis.Channel):
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
