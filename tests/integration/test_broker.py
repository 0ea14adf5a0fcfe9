"""workers.broker: kombu's Redis transport with one redis client per channel."""

from __future__ import annotations

import uuid

from kombu import Connection

from workers.broker import TRANSPORT, Transport, transport_for


def test_it_is_chosen_for_redis_urls_only() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == TRANSPORT
    assert transport_for("rediss://host:6380/1") == TRANSPORT
    assert transport_for("unix:///tmp/redis.sock") == TRANSPORT
    assert transport_for("sentinel://host:26379") is None
    assert transport_for("memory://") is None
    assert transport_for("amqp://guest@localhost//") is None


def test_a_channel_reuses_one_client_per_pool(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first
        channel._pool = None  # as after a reconnect: a new pool, so a new client on it
        renewed = channel._create_client()
        assert renewed is not first and renewed.connection_pool is channel.pool


def test_messages_go_through_and_are_acked(redis_url: str) -> None:
    name = f"broker-test-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=Transport) as conn:
        got = []
        with conn.SimpleQueue(name) as queue:
            for i in range(3):
                queue.put({"n": i}, serializer="json")
            for _ in range(3):
                message = queue.get(timeout=10)
                got.append(message.payload["n"])
                message.ack()
            channel = queue.channel
            client = channel._create_client()
            assert client.llen(name) == 0
            assert client.hlen(channel.unacked_key) == 0  # every delivery acked
    assert sorted(got) == [0, 1, 2]
