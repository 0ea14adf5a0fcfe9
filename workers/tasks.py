"""Celery tasks: thin wrappers over the use cases in orchestrator.service."""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable

import httpx
from redis import Redis
from redis.exceptions import RedisError

from orchestrator import metrics
from orchestrator.bootstrap import container
from orchestrator.ledger.service import utcnow
from orchestrator.metrics import catalogue as m
from orchestrator.outage import TRANSIENT
from orchestrator.service import observe
from orchestrator.service.sweeper import sweep as sweep_jobs
from workers.celery_app import QUEUES, app
from workers.enqueue import queue_for

log = logging.getLogger(__name__)

# Infrastructure hiccups (PostgreSQL or Redis down or restarting: orchestrator.outage) are
# retried by Celery; anything else is left for the sweeper.
_INFRA = (*TRANSIENT, RedisError, ConnectionError)


@app.task(  # type: ignore[untyped-decorator]
    name="orchestrator.advance", autoretry_for=_INFRA, retry_backoff=True,
          retry_backoff_max=30, max_retries=None)
def advance(job_id: str, token: str, priority: str = "normal", resume: bool = False,
            backend: str | None = None) -> None:
    """One step of the job's chain. ``resume``: the job was waiting for a slot; the step
    does nothing if it has one by now (it was woken twice). ``backend``: the start message's
    first choice of the job's plan."""
    c = container()
    nxt = c.runner.advance(uuid.UUID(job_id), uuid.UUID(token), resume=resume,
                           priority=priority, backend=backend)
    if not nxt.done:
        assert nxt.poll_in_s is not None
        send = c.enqueue.resume if nxt.resume else c.enqueue.poll
        send(uuid.UUID(job_id), uuid.UUID(token), priority, nxt.poll_in_s)


@app.task(  # type: ignore[untyped-decorator]
    name="orchestrator.sweep", autoretry_for=_INFRA, max_retries=3)
def sweep() -> None:
    c = container()
    sweep_jobs(c.engine, c.ledger, c.enqueue, grace_s=c.settings.chain_grace_s)


def one_run_per_process(run: Callable[[], int]) -> Callable[[], int]:
    """``run``, or nothing (0) while this process is running it already. A delivery run
    holds its thread until every send of its batch has ended (timeouts, for peers that never
    answer), and beat starts one every interval: the runs of each tick would otherwise take
    every thread the jobs' steps need."""
    lock = threading.Lock()

    @functools.wraps(run)
    def once() -> int:
        if not lock.acquire(blocking=False):
            return 0
        try:
            return run()
        finally:
            lock.release()
    return once


@app.task(  # type: ignore[untyped-decorator]
    name="orchestrator.deliver_alerts", autoretry_for=_INFRA, max_retries=3)
@one_run_per_process
def deliver_alerts() -> int:
    """Seal channel secrets still stored in plain text (written before encryption), then
    deliver what is due (50 alerts on 8 sending threads); returns how many sends ended."""
    from orchestrator.notify import ChannelFactory, deliver_pending
    from orchestrator.notify.settings import load_smtp_settings
    from orchestrator.notify.stored import seal_legacy

    c = container()
    box = c.secrets
    if box is not None:
        with c.engine.begin() as tx:
            sealed = seal_legacy(tx, box)
        if sealed.sealed:
            log.info("sealed %d plain-text channel secret(s) in %d budget(s)", sealed.sealed,
                     sealed.budgets)
    with ChannelFactory(smtp=load_smtp_settings(), policy=c.egress) as factory:
        report = deliver_pending(c.engine, factory, utcnow(), secrets=box)
    for o in report.outcomes:
        metrics.counter(m.ALERT_DELIVERIES, channel=o.channel_type, outcome=o.status)
    return len(report.outcomes)


@app.task(  # type: ignore[untyped-decorator]
    name="orchestrator.deliver_webhooks", autoretry_for=_INFRA, max_retries=1)
@one_run_per_process
def deliver_webhooks() -> int:
    """Send the job webhooks that are due (beat, every ORCH_WEBHOOK_INTERVAL_S), batch after
    batch for up to one interval; returns how many were tried."""
    from orchestrator.events.delivery import Report, WebhookPolicy, deliver_run

    c = container()
    s = c.settings
    rules = WebhookPolicy(retry_window_s=s.webhook_retry_window_s,
                          backoff_s=s.webhook_backoff_s, backoff_cap_s=s.webhook_backoff_cap_s)

    def count(report: Report) -> None:
        for outcome, n in (("delivered", report.delivered),
                           ("retrying", report.retrying), ("failed", report.failed)):
            if n:
                metrics.counter(m.WEBHOOK_DELIVERIES, n, outcome=outcome)

    return deliver_run(c.engine, c.egress, c.secrets, _webhook_client(), rules, utcnow,
                       s.webhook_interval_s, on_report=count)


@app.task(  # type: ignore[untyped-decorator]
    name="orchestrator.expire_results", autoretry_for=_INFRA, max_retries=1)
def expire_results() -> int:
    """Drop results (their events and files) past ORCH_RESULT_RETENTION_DAYS; the ledger
    stays."""
    from orchestrator.events.retention import expire

    c = container()
    done = expire(c.engine, c.settings.result_retention_days, utcnow())
    if done.results or done.events or done.files:
        log.info("expired %d result(s), %d event(s) and %d result file(s)", done.results,
                 done.events, done.files)
    return done.results


@app.task(  # type: ignore[untyped-decorator]
    name="orchestrator.publish_gauges", autoretry_for=_INFRA, max_retries=1)
def publish_gauges() -> int:
    """Budgets, breakers and queues as gauges (beat, every 15 s); returns how many were set."""
    c = container()
    with c.engine.connect() as conn:
        return observe.publish_gauges(conn, _counter_redis(), c.health, c.catalogue().names,
                                      QUEUES, utcnow(), queue_for)


@app.task(name="orchestrator.noop")  # type: ignore[untyped-decorator]
def noop(counter_key: str) -> None:
    """Does nothing but count itself: the baseline of bench/throughput.py and a liveness
    probe for a worker (the counter is how the sender sees it ran)."""
    _counter_redis().incr(counter_key)


_redis_client: Redis | None = None
_http: httpx.Client | None = None


def _webhook_client() -> httpx.Client:
    """One egress client per worker process (no keep-alive: see orchestrator.egress.http)."""
    global _http
    if _http is None:
        from orchestrator.egress import egress_client
        from orchestrator.notify.base import default_timeout

        _http = egress_client(default_timeout(container().settings.webhook_timeout_s))
    return _http


def _counter_redis() -> Redis:
    global _redis_client
    if _redis_client is None:
        c = container()
        t = c.settings.redis_timeout_s
        _redis_client = Redis.from_url(c.redis_url, socket_timeout=t, socket_connect_timeout=t)
    return _redis_client
