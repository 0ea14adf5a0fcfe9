"""Outbox delivery against real PostgreSQL and real local receivers: alerts written by the
ledger are delivered once per channel, retried with backoff on an injected clock (never a
sleep), failed after N attempts, and never block the ledger or each other."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

import orchestrator.notify.models  # noqa: F401  (alert_deliveries truncated by the db fixture)
from orchestrator.ledger import Ledger
from orchestrator.notify import (
    ChannelFactory,
    DeliveryReport,
    RetryPolicy,
    SmtpSettings,
    deliver_pending,
)

from .ledger_helpers import T0, FakeClock, make_budget
from .test_notify_channels import LOCAL, SECRET, Receiver, SmtpSink, serve, smtp

__all__ = ["serve", "smtp"]  # fixtures shared with test_notify_channels

LIMIT = 10_000_000
POLICY = RetryPolicy(max_attempts=4, base_s=30, cap_s=600, rng=random.Random(7))


@pytest.fixture()
def factory() -> Iterator[ChannelFactory]:
    with ChannelFactory(policy=LOCAL, http_timeout_s=5) as f:
        yield f


def make_alerts(
    db: Engine, channels: list[dict[str, Any]], n_thresholds: int = 3,
    scope: str = "tenant:acme",
) -> list[uuid.UUID]:
    """A budget with ``channels`` and n thresholds, all crossed by one settled job."""
    step = 10_000 // n_thresholds
    thresholds = (*(step * (i + 1) for i in range(n_thresholds - 1)), 10_000)
    make_budget(db, scope, "month", LIMIT, thresholds_bp=thresholds, channels=channels)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, (scope,), LIMIT)
    ids = list(ledger.settle(job, LIMIT).alert_ids)
    assert len(ids) == n_thresholds
    return ids


def webhook(rx: Receiver) -> dict[str, Any]:
    return {"type": "webhook", "url": rx.url, "secret": SECRET}


def slack(rx: Receiver) -> dict[str, Any]:
    return {"type": "slack", "url": rx.url}


def rows(db: Engine, sql: str, **params: Any) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def alert_status(db: Engine) -> dict[uuid.UUID, str]:
    return {r.id: r.status for r in rows(db, "SELECT id, status FROM alerts")}


def drain(
    db: Engine, factory: ChannelFactory, start: datetime, *, step_s: float = 600,
    rounds: int = 20, batch: int = 50,
) -> list[DeliveryReport]:
    """Run passes, moving the clock ``step_s`` each time, until no alert is pending."""
    reports, now = [], start
    for _ in range(rounds):
        reports.append(deliver_pending(db, factory, now, batch, policy=POLICY))
        if "pending" not in alert_status(db).values():
            return reports
        now += timedelta(seconds=step_s)
    raise AssertionError(f"alerts still pending after {rounds} passes: {alert_status(db)}")


def ids_of(rx: Receiver) -> Counter[str]:
    return Counter(body["alert_id"] if "alert_id" in body else _slack_id(body)
                   for body in rx.accepted)


def _slack_id(body: dict[str, Any]) -> str:
    text_ = str(body["blocks"][2]["elements"][0]["text"])
    return text_.split("`")[1]


def test_each_alert_reaches_every_channel_once(
    db: Engine, serve: Callable[..., Receiver],
    smtp: tuple[SmtpSink, SmtpSettings],
) -> None:
    sink, settings = smtp
    hook, chat = serve(secret=SECRET), serve()
    alerts = make_alerts(
        db, [webhook(hook), slack(chat), {"type": "email", "to": ["ops@example.test"]}]
    )
    now = T0 + timedelta(minutes=1)
    with ChannelFactory(smtp=settings, policy=LOCAL) as f:
        report = deliver_pending(db, f, now, policy=POLICY)
        assert len(report.delivered) == 9 and not report.retrying and not report.failed
        assert sorted(report.alerts_delivered) == sorted(alerts)
        assert deliver_pending(db, f, now + timedelta(hours=1), policy=POLICY) == DeliveryReport()

    expected = Counter(str(a) for a in alerts)
    assert ids_of(hook) == expected and ids_of(chat) == expected
    assert Counter(m["X-Orchestrator-Alert-Id"] for _, m in sink.messages) == expected
    assert len(hook.hits) == len(chat.hits) == 3
    got = rows(db, "SELECT status, delivered_at, attempts FROM alerts")
    assert {(r.status, r.delivered_at, r.attempts) for r in got} == {("delivered", now, 1)}
    per_channel = rows(db, "SELECT status, attempts, target FROM alert_deliveries")
    assert len(per_channel) == 9 and {(r.status, r.attempts) for r in per_channel} == {
        ("delivered", 1)
    }
    assert not any("tok3n" in r.target or "/hooks" in r.target for r in per_channel)


def test_channel_down_for_a_while_is_retried_nothing_lost_nothing_duplicated(
    db: Engine, factory: ChannelFactory, serve: Callable[..., Receiver],
) -> None:
    k = 7
    hook, chat = serve(secret=SECRET, fail_first=k), serve()
    alerts = make_alerts(db, [webhook(hook), slack(chat)], n_thresholds=5)
    now = T0 + timedelta(minutes=1)

    first = deliver_pending(db, factory, now, policy=POLICY)
    assert len(first.retrying) == 5 and len(first.delivered) == 5  # Slack got all five
    assert all(o.error == "http_503" for o in first.retrying)
    for o in first.retrying:  # attempt 1 -> retry in [base/2, base]
        assert o.next_attempt_at is not None
        assert now + timedelta(seconds=15) <= o.next_attempt_at <= now + timedelta(seconds=30)

    # not due yet: nothing is sent again
    assert deliver_pending(db, factory, now + timedelta(seconds=14), policy=POLICY).outcomes == ()
    assert len(hook.hits) == 5

    second = deliver_pending(db, factory, now + timedelta(seconds=30), policy=POLICY)
    assert len(second.outcomes) == 5 and len(second.retrying) == 2  # hits 6 and 7 failed
    drain(db, factory, now + timedelta(seconds=90))

    expected = Counter(str(a) for a in alerts)
    assert ids_of(hook) == expected and ids_of(chat) == expected
    assert len(hook.hits) == 5 + k and len(chat.hits) == 5
    assert set(alert_status(db).values()) == {"delivered"}
    attempts = rows(db, "SELECT attempts FROM alert_deliveries WHERE channel_type = 'webhook'")
    assert sum(r.attempts for r in attempts) == 5 + k


def test_permanent_failure_is_final_and_does_not_block_other_channels(
    db: Engine, factory: ChannelFactory, serve: Callable[..., Receiver],
) -> None:
    gone, chat = serve(always_status=410), serve()
    alerts = make_alerts(db, [slack(gone), slack(chat)], n_thresholds=2)
    report = deliver_pending(db, factory, T0, policy=POLICY)
    assert len(report.failed) == 2 and len(report.delivered) == 2
    assert all(o.attempts == 1 and o.error == "http_410" for o in report.failed)
    assert sorted(report.alerts_delivered) == sorted(alerts)  # Slack #2 got them
    assert deliver_pending(db, factory, T0 + timedelta(days=1), policy=POLICY).outcomes == ()
    assert len(gone.hits) == 2 and len(chat.accepted) == 2
    states = rows(db, "SELECT status, last_error FROM alert_deliveries WHERE status = 'failed'")
    assert len(states) == 2 and all(s.last_error == "http_410" for s in states)


def test_channel_that_keeps_failing_is_failed_after_max_attempts(
    db: Engine, factory: ChannelFactory, serve: Callable[..., Receiver],
) -> None:
    down = serve(always_status=503)
    (alert,) = make_alerts(db, [slack(down)], n_thresholds=1)
    reports = drain(db, factory, T0)
    assert len(down.hits) == POLICY.max_attempts == len(reports)
    assert [len(r.retrying) for r in reports] == [1] * (POLICY.max_attempts - 1) + [0]
    last = reports[-1]
    assert [o.attempts for o in last.failed] == [POLICY.max_attempts]
    assert last.alerts_failed == (alert,) and alert_status(db) == {alert: "failed"}


def test_invalid_and_removed_channels_are_reported_and_do_not_block(
    db: Engine, factory: ChannelFactory, serve: Callable[..., Receiver],
) -> None:
    flaky, chat = serve(fail_first=1), serve()
    (alert,) = make_alerts(
        db, [{"type": "webhook", "url": "https://x.test/h"}, slack(flaky), slack(chat)],
        n_thresholds=1,
    )
    first = deliver_pending(db, factory, T0, policy=POLICY)
    assert [o.error for o in first.failed] == []  # the invalid one is failed at creation
    invalid = rows(db, "SELECT status, target, last_error FROM alert_deliveries "
                       "WHERE channel_key LIKE 'invalid:%'")
    assert [(r.status, r.target, r.last_error) for r in invalid] == [
        ("failed", "channels[0]", "invalid_channel: channels[0].secret: is required")
    ]
    assert len(first.retrying) == 1 and len(first.delivered) == 1

    # the flaky channel is removed from the budget before its retry
    with db.begin() as conn:
        conn.execute(text("UPDATE budgets SET channels = CAST(:c AS jsonb)"),
                     {"c": f'[{{"type": "slack", "url": "{chat.url}"}}]'})
    second = deliver_pending(db, factory, T0 + timedelta(hours=1), policy=POLICY)
    assert [(o.channel, o.error) for o in second.failed] == [
        (f"slack http://127.0.0.1:{flaky.url.split(':')[2].split('/')[0]}",
         "channel_removed: no longer a channel of the budget")
    ]
    assert second.alerts_delivered == (alert,)
    assert len(flaky.hits) == 1 and len(chat.hits) == 1


def test_budget_without_channels_marks_alert_delivered(
    db: Engine, factory: ChannelFactory,
) -> None:
    alerts = make_alerts(db, [], n_thresholds=2)
    report = deliver_pending(db, factory, T0, policy=POLICY)
    assert report.outcomes == () and sorted(report.alerts_delivered) == sorted(alerts)
    assert set(alert_status(db).values()) == {"delivered"}


def test_concurrent_workers_never_send_an_alert_twice(
    db: Engine, factory: ChannelFactory, serve: Callable[..., Receiver],
) -> None:
    hook, chat = serve(secret=SECRET, fail_first=5), serve()
    alerts = make_alerts(db, [webhook(hook), slack(chat)], n_thresholds=20)
    errors: list[BaseException] = []

    def worker(now: datetime, start: threading.Barrier) -> None:
        try:
            start.wait(5)
            while deliver_pending(db, factory, now, batch=3, policy=POLICY).outcomes:
                pass
        except BaseException as exc:
            errors.append(exc)

    for i in range(4):  # four passes of four racing workers, one shared clock
        now, start = T0 + timedelta(seconds=600 * i), threading.Barrier(4)
        threads = [threading.Thread(target=worker, args=(now, start)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    drain(db, factory, T0 + timedelta(hours=2))
    expected = Counter(str(a) for a in alerts)
    assert ids_of(hook) == expected and ids_of(chat) == expected
    assert len(hook.hits) == 20 + 5 and len(chat.hits) == 20


def test_no_lock_is_held_while_a_channel_is_slow(
    db: Engine, factory: ChannelFactory, serve: Callable[..., Receiver],
) -> None:
    slow = serve(hang=threading.Event())
    (alert,) = make_alerts(db, [slack(slow)], n_thresholds=1)
    done: list[DeliveryReport] = []
    sender = threading.Thread(
        target=lambda: done.append(deliver_pending(db, factory, T0, policy=POLICY))
    )
    sender.start()
    assert slow.arrived.wait(10), "the delivery never reached the receiver"
    with db.begin() as conn:  # the alert row is free, and the ledger can write new alerts
        conn.execute(text("SET LOCAL lock_timeout = '1s'"))
        conn.execute(text("SELECT id FROM alerts WHERE id = :id FOR UPDATE NOWAIT"),
                     {"id": alert})
        conn.execute(text("SELECT 1 FROM alert_deliveries FOR UPDATE NOWAIT"))
    other = make_alerts(db, [slack(slow)], n_thresholds=1, scope="tenant:other")
    assert slow.hang is not None
    slow.hang.set()
    sender.join(10)
    assert [o.status for o in done[0].outcomes] == ["delivered"]
    assert alert_status(db) == {alert: "delivered", other[0]: "pending"}


def test_fifty_settles_crossing_80_percent_together_give_one_delivery_per_channel(
    db: Engine, serve: Callable[..., Receiver], smtp: tuple[SmtpSink, SmtpSettings],
) -> None:
    """Issue 7: the ledger writes one alert row however many settles race over the
    threshold, and delivery sends that one alert once to each channel."""
    sink, settings = smtp
    hook, chat = serve(secret=SECRET), serve()
    make_budget(db, "tenant:acme", "month", LIMIT, thresholds_bp=(8000,),
                channels=[webhook(hook), slack(chat), {"type": "email", "to": ["ops@x.test"]}])
    ledger = Ledger(db, clock=FakeClock())
    before = [uuid.uuid4() for _ in range(75)]  # 75 % spent first
    for job in before:
        ledger.hold(job, ("tenant:acme",), LIMIT // 100)
        ledger.settle(job, LIMIT // 100)
    racers = [uuid.uuid4() for _ in range(50)]
    for job in racers:
        ledger.hold(job, ("tenant:acme",), LIMIT // 200)
    barrier = threading.Barrier(len(racers))
    errors: list[BaseException] = []

    def settle(job: uuid.UUID) -> None:
        barrier.wait(timeout=60)
        try:
            ledger.settle(job, LIMIT // 200)
        except BaseException as exc:  # collected and asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=settle, args=(j,)) for j in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    (alert,) = rows(db, "SELECT id, threshold_bp FROM alerts WHERE kind = 'threshold'")
    assert alert.threshold_bp == 8000

    with ChannelFactory(smtp=settings, policy=LOCAL) as f:
        drain(db, f, T0 + timedelta(minutes=1))
    one = Counter({str(alert.id): 1})
    assert ids_of(hook) == one and ids_of(chat) == one
    assert Counter(m["X-Orchestrator-Alert-Id"] for _, m in sink.messages) == one


def test_an_overage_alert_written_by_the_ledger_reaches_every_channel(
    db: Engine, serve: Callable[..., Receiver],
    smtp: tuple[SmtpSink, SmtpSettings],
) -> None:
    sink, settings = smtp
    hook, chat = serve(secret=SECRET), serve()
    make_budget(db, "tenant:acme", "month", LIMIT, thresholds_bp=(10000,),
                channels=[webhook(hook), slack(chat),
                          {"type": "email", "to": ["ops@example.test"]}])
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, ("tenant:acme",), 1_000_000)
    (alert,) = ledger.settle(job, 1_250_000).alert_ids

    with ChannelFactory(smtp=settings, policy=LOCAL) as f:
        report = deliver_pending(db, f, T0 + timedelta(minutes=1), policy=POLICY)
    assert len(report.delivered) == 3 and not report.failed

    (body,) = hook.accepted
    assert (body["alert_id"], body["kind"], body["committed_usd"]) == (
        str(alert), "overage", 1.25)
    assert body["overage"] == {"job_id": str(job), "hold_usd": 1.0, "charge_usd": 1.25,
                               "overage_usd": 0.25}
    (chat_body,) = chat.accepted
    assert ":money_with_wings:" in chat_body["text"] and "$0.25 above its hold" in (
        chat_body["text"])
    ((_, mail),) = sink.messages
    plain = mail.get_body(("plain",))
    assert plain is not None
    assert "above its hold" in mail["Subject"] and f"Job: {job}" in plain.get_content()
    assert "Overage: $0.25" in plain.get_content()
