"""workers.broker: kombu's Redis transport with one redis client per channel."""

from __future__ import annotations

import base64
import json
import uuid

import redis
from celery import Celery
from kombu import Connection

from workers.broker import TRANSPORT, QoS, Transport, producer_app, transport_for
from workers.enqueue import CeleryEnqueue


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
            assert channel.qos.flush()
            client = channel._create_client()
            assert client.llen(name) == 0
            assert client.hlen(channel.unacked_key) == 0  # every delivery acked
    assert sorted(got) == [0, 1, 2]


def test_a_delivery_is_recorded_as_unacked_until_its_ack_is_written(redis_url: str) -> None:
    name = f"broker-test-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=Transport) as conn, conn.SimpleQueue(name) as queue:
        queue.put({"n": 1}, serializer="json")
        message = queue.get(timeout=10)
        channel = queue.channel
        assert isinstance(channel.qos, QoS) and channel.qos.flush()
        client = channel._create_client()
        tag = message.delivery_tag
        assert client.hexists(channel.unacked_key, tag)
        assert client.zscore(channel.unacked_index_key, tag) is not None
        message.ack()
        assert channel.qos.flush()
        assert not client.hexists(channel.unacked_key, tag)
        assert client.zscore(channel.unacked_index_key, tag) is None


def test_deliveries_acked_at_once_leave_nothing_behind(redis_url: str) -> None:
    """Each record and its removal are queued in order, so a message acked before the writer
    ran never leaves a stale record (which would be restored as a duplicate later)."""
    name = f"broker-test-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=Transport) as conn, conn.SimpleQueue(name) as queue:
        for i in range(50):
            queue.put({"n": i}, serializer="json")
        for _ in range(50):
            queue.get(timeout=10).ack()
        channel = queue.channel
        assert channel.qos.flush()
        client = channel._create_client()
        assert client.hlen(channel.unacked_key) == 0
        assert client.zcard(channel.unacked_index_key) == 0


def test_a_delivered_unacked_message_is_restored_when_the_channel_closes(
    redis_url: str,
) -> None:
    """What a warm shutdown does: even just after delivery (its record possibly still
    queued), closing restores the message to its queue, and no record is left."""
    name = f"broker-test-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=Transport) as conn, conn.SimpleQueue(name) as queue:
        queue.put({"n": 7}, serializer="json")
        assert queue.get(timeout=10).payload == {"n": 7}
        unacked_key = queue.channel.unacked_key
    with Connection(redis_url, transport=Transport) as conn, conn.SimpleQueue(name) as queue:
        again = queue.get(timeout=10)
        assert again.payload == {"n": 7}
        again.ack()
        assert queue.channel.qos.flush()
        assert queue.channel._create_client().hlen(unacked_key) == 0


def test_a_rejected_message_goes_back_on_its_queue(redis_url: str) -> None:
    name = f"broker-test-{uuid.uuid4().hex}"
    with Connection(redis_url, transport=Transport) as conn, conn.SimpleQueue(name) as queue:
        queue.put({"n": 3}, serializer="json")
        queue.get(timeout=10).reject(requeue=True)
        again = queue.get(timeout=10)
        assert again.payload == {"n": 3}
        again.ack()


def _unread_producer(url: str, queue: str) -> tuple[Celery, redis.Redis]:
    """A producer on ``url``, a spare database of the test Redis (no worker reads it), and a
    client there with ``queue`` emptied."""
    client = redis.Redis.from_url(url)
    client.delete(queue)
    return producer_app(f"enqueue-test-{uuid.uuid4().hex}", url), client


def test_an_enqueued_step_lands_on_its_queue_with_its_ids_as_argsrepr(
        spare_redis_url: str) -> None:
    """CeleryEnqueue skips Celery's per-message queue declare on Redis: the message is still
    a plain LPUSH on the priority's list, in Celery's task protocol, ids only."""
    app, client = _unread_producer(spare_redis_url, "jobs.low")
    job, token = uuid.uuid4(), uuid.uuid4()
    CeleryEnqueue(app).poll(job, token, "low", 0.0)
    raw = client.rpop("jobs.low")
    assert raw is not None
    message = json.loads(raw)
    headers = message["headers"]
    assert headers["task"] == "orchestrator.advance"
    assert headers["argsrepr"] == repr((str(job), str(token), "low"))
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [str(job), str(token), "low"] and kwargs == {}


def test_a_start_names_the_plans_first_backend_after_the_ids(spare_redis_url: str) -> None:
    app, client = _unread_producer(spare_redis_url, "jobs.high")
    job, token = uuid.uuid4(), uuid.uuid4()
    CeleryEnqueue(app).start(job, token, "high", "vid-cheap")
    raw = client.rpop("jobs.high")
    assert raw is not None
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    # as workers.tasks.advance takes them: job, token, priority, resume, backend
    assert args == [str(job), str(token), "high", False, "vid-cheap"] and kwargs == {}
