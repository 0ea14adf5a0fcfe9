"""workers.broker: kombu's Redis transport with one redis client per channel."""

from __future__ import annotations

import base64
import json
import uuid

import redis
from kombu import Connection

from workers.broker import TRANSPORT, Transport, producer_app, transport_for
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
            client = channel._create_client()
            assert client.llen(name) == 0
            assert client.hlen(channel.unacked_key) == 0  # every delivery acked
    assert sorted(got) == [0, 1, 2]


def test_an_enqueued_step_lands_on_its_queue_with_its_ids_as_argsrepr(redis_url: str) -> None:
    """CeleryEnqueue skips Celery's per-message queue declare on Redis: the message is still
    a plain LPUSH on the priority's list, in Celery's task protocol, ids only."""
    base, _, db = redis_url.rpartition("/")
    url = f"{base}/13" if db.isdigit() else f"{redis_url.rstrip('/')}/13"  # no worker reads it
    app = producer_app(f"enqueue-test-{uuid.uuid4().hex}", url)
    client = redis.Redis.from_url(url)
    client.delete("jobs.low")
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


def test_a_start_names_the_plans_first_backend_after_the_ids(redis_url: str) -> None:
    base, _, db = redis_url.rpartition("/")
    url = f"{base}/13" if db.isdigit() else f"{redis_url.rstrip('/')}/13"
    app = producer_app(f"enqueue-test-{uuid.uuid4().hex}", url)
    client = redis.Redis.from_url(url)
    client.delete("jobs.high")
    job, token = uuid.uuid4(), uuid.uuid4()
    CeleryEnqueue(app).start(job, token, "high", "vid-cheap")
    raw = client.rpop("jobs.high")
    assert raw is not None
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    # as workers.tasks.advance takes them: job, token, priority, resume, backend
    assert args == [str(job), str(token), "high", False, "vid-cheap"] and kwargs == {}
