"""Locust load test of the orchestrator's HTTP API: real traffic from several kinds of users.

    LOAD_SHAPE=ramp locust -f loadtests/locustfile.py --headless -u 500 -r 25 -t 5m \\
        --host http://127.0.0.1:8000        # LOADTEST_CREDENTIALS=<data dir>/credentials.json

``loadtests/run.py`` (``make loadtest``) runs it against ``orchestrator up`` and checks the
promises afterwards; see docs/performance.md.

Users (weights): producers 5 (submit video/image/text jobs of every tier with an
Idempotency-Key; some replayed on purpose: the same key and body again, sequentially or as
concurrent twins, must name the same job; a key reused with another body must be 409), watchers
4 (poll their tenant's jobs, list with status/limit/cursor), finance 1 (budgets, cost
reports), cancellers 1, and one admin (tops budgets up or lowers them below what is spent).
Each user creates its own API key for its tenant in ``on_start`` with the admin key.

Expected outcomes are not failures and are counted apart: 402 budget_exceeded (rows named
``... [402]``), 409 on a key reused with another body or on cancelling a finished job, and
429 from the rate limiter (rows named ``... [429]``, left out of the latency figures; the user
waits Retry-After and sends again). Anything else unexpected is a failure, an answer a check
cannot read too. An exception out of a task is no request: the summary counts it
(``user_errors``) and ``run.py`` fails the run on any.

The shape is ``LOAD_SHAPE`` (ramp, spike, soak, failover; default ramp); with
``--class-picker`` (web UI) all of them are offered.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import gevent
import requests
from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import StatsEntry
from shapes import SHAPES, Shape
from traffic import FINAL, Recorder, Settings, job_body, load_credentials

log = logging.getLogger("loadtests")

SETTINGS = Settings.from_env()
REC = Recorder(SETTINGS.out_dir)
MAX_TRIES = 6  # 5 rate-limited tries and one resend of an unanswered call
RATE_LIMITED = " [429]"

# The shape: one, by LOAD_SHAPE; every one for the web UI's class picker.
_SHAPE_NAME = os.environ.get("LOAD_SHAPE", "ramp")
if "--class-picker" in sys.argv or _SHAPE_NAME == "all":
    globals().update({cls.__name__: cls for cls in SHAPES.values()})
elif _SHAPE_NAME != "none":
    if _SHAPE_NAME not in SHAPES:
        raise SystemExit(f"LOAD_SHAPE={_SHAPE_NAME!r}: choose one of {', '.join(SHAPES)}")
    globals()[SHAPES[_SHAPE_NAME].__name__] = SHAPES[_SHAPE_NAME]

Check = Callable[[int, Any, Mapping[str, str]], str | None]


def _admin_key() -> str:
    return load_credentials(SETTINGS.credentials)["admin_key"]


class TenantUser(FastHttpUser):
    """A user of one tenant with its own API key."""

    abstract = True
    _seq: ClassVar[itertools.count[int]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._seq = itertools.count()

    def on_start(self) -> None:
        i = next(self._seq)
        self.tenant = SETTINGS.tenant(i)
        admin = {"Authorization": f"Bearer {_admin_key()}"}
        status, body = self.send("POST", "/v1/keys", "/v1/keys", headers=admin,
                                 json={"tenant": self.tenant}, expect={201: ""}, resend=False)
        if status != 201:
            raise RuntimeError(f"no API key for {self.tenant}: HTTP {status}")
        self.auth = {"Authorization": f"Bearer {body['key']}"}

    # -- one request, classified ---------------------------------------------------------
    def send(self, method: str, path: str, name: str, *, headers: Mapping[str, str] | None = None,
             json: Any = None, expect: Mapping[int, str], check: Check | None = None,
             resend: bool = True) -> tuple[int, Any]:
        """One call as the SDK makes it. A status in ``expect`` is a success; mapped to a
        label, it is an expected refusal counted apart (``name [status]`` in the stats).
        ``check(status, body, headers)`` may still fail it. A 429 is sent again after its
        Retry-After (at most 5 tries; not a failure). No answer at all (a connection closed
        under the request) is a failure, and, as the SDK does for every call that is safe
        to repeat (``resend``), sent once more. Returns (status, decoded body or None)."""
        hdrs = dict(headers if headers is not None else self.auth)
        resent = not resend
        for _ in range(MAX_TRIES):
            with self.client.request(method, path, name=name, headers=hdrs, json=json,
                                     catch_response=True) as r:
                status = r.status_code
                body = _json(r.text) if status and r.text else None
                if status == 429:
                    r.request_meta["name"] = name + RATE_LIMITED
                    r.success()
                    REC.count("rate_limited")
                    wait = float(r.headers.get("Retry-After") or 1)
                elif status == 0 and not resent:
                    r.failure(_unexpected(status, r))
                    REC.count("no_answer_resent")
                    resent, wait = True, 0.0
                elif status not in expect:
                    r.failure(_unexpected(status, r))
                    return status, body
                else:
                    label = expect[status]
                    if label:
                        r.request_meta["name"] = f"{name} [{status}]"
                        REC.count(label)
                    problem = _checked(check, status, body, r.headers)
                    if problem:
                        r.failure(problem)
                    else:
                        r.success()
                    return status, body
            if wait:
                gevent.sleep(wait)  # what the server asked for (Retry-After)
        return 429, None

    def failed_check(self, name: str, problem: str) -> None:
        """A failure found across several requests (e.g. concurrent twins)."""
        self.environment.events.request.fire(
            request_type="CHECK", name=name, response_time=0, response_length=0,
            response=None, context={}, exception=AssertionError(problem))


def _checked(check: Check | None, status: int, body: Any, headers: Mapping[str, str]
             ) -> str | None:
    """``check``'s problem, or the error it raised reading an answer of another shape: an
    exception inside the response's with-block would leave the request out of the stats."""
    if check is None:
        return None
    try:
        return check(status, body, headers)
    except Exception as exc:  # any error reading the answer fails the request
        return f"check raised {type(exc).__name__}: {exc}"


def _unexpected(status: int, r: Any) -> str:
    error = getattr(r, "error", None)
    if status == 0 and error is not None:  # no answer: the transport's error
        return f"no answer: {type(error).__name__}: {error}"
    return f"HTTP {status}: {(r.text or '')[:200]}"


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _idem(auth: Mapping[str, str], key: str) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


def _is_job(status: int, body: Any, headers: Mapping[str, str]) -> str | None:
    if not isinstance(body, dict) or "id" not in body:
        return f"HTTP {status} without a job"
    return None


class Producer(TenantUser):
    """Submits jobs; replays some on purpose."""

    weight = 5
    wait_time = between(2, 6)

    @task(10)
    def submit(self) -> None:
        body, key = job_body(), uuid.uuid4().hex
        roll = random.random()
        if roll < 0.03:
            self.twins(body, key)
            return
        status, job = self.send("POST", "/v1/jobs", "/v1/jobs", headers=_idem(self.auth, key),
                                json=body, expect={202: "", 402: "budget_exceeded"},
                                check=lambda s, b, h: _is_job(s, b, h) if s == 202 else None)
        if status != 202 or not isinstance(job, dict):
            return
        REC.accepted(self.tenant, job["id"])
        if roll < 0.13:
            self.replay(body, key, job["id"])
        elif roll < 0.15:
            self.conflict(body, key)

    def replay(self, body: dict[str, Any], key: str, job_id: str) -> None:
        """The same key and body again (a client retrying): 202, the same job."""
        def same(status: int, b: Any, headers: Mapping[str, str]) -> str | None:
            if not isinstance(b, dict) or b.get("id") != job_id:
                return f"replay answered another job: {b!r:.200}"
            if headers.get("Idempotent-Replayed") != "true":
                return "replay without Idempotent-Replayed: true"
            return None

        self.send("POST", "/v1/jobs", "/v1/jobs (replay)", headers=_idem(self.auth, key),
                  json=body, expect={202: ""}, check=same)
        REC.count("replays")

    def conflict(self, body: dict[str, Any], key: str) -> None:
        """The key again with another body: 409, and no new job."""
        other = {**body, "input": {**body["input"], "prompt": "something else entirely"}}
        self.send("POST", "/v1/jobs", "/v1/jobs (conflict)", headers=_idem(self.auth, key),
                  json=other, expect={409: ""})
        REC.count("conflicts")

    def twins(self, body: dict[str, Any], key: str) -> None:
        """The same submission twice at once (a double click): one job, created once (the
        other answer is its replay: 202 with Idempotent-Replayed)."""
        headers = _idem(self.auth, key)
        expect = {202: "", 402: "budget_exceeded"}
        replayed: list[bool] = []

        def note(status: int, b: Any, h: Mapping[str, str]) -> str | None:
            if status == 202:
                replayed.append(h.get("Idempotent-Replayed") == "true")
            return None

        calls = [gevent.spawn(self.send, "POST", "/v1/jobs", "/v1/jobs (twin)", headers=headers,
                              json=body, expect=expect, check=note) for _ in range(2)]
        gevent.joinall(calls)
        answers = [c.value for c in calls if c.value is not None]
        REC.count("twins")
        if len(answers) < 2 or any(s not in expect for s, _ in answers):
            return  # already failed (or rate limited out) as a request
        made = [b["id"] for s, b in answers if s == 202 and isinstance(b, dict)]
        created = [r for r in replayed if not r]
        if made and (len(set(made)) != 1 or len(created) != 1):
            self.failed_check("/v1/jobs (twins)",
                              f"twins answered {[s for s, _ in answers]} naming {set(made)}")
            return
        if created:
            REC.accepted(self.tenant, made[0])

    @task(2)
    def quote(self) -> None:
        self.send("POST", "/v1/quotes", "/v1/quotes", json=job_body(), expect={200: ""})


class Watcher(TenantUser):
    """A dashboard of the tenant: polls its recent jobs and lists them."""

    weight = 4
    wait_time = between(1, 3)

    @task(6)
    def poll(self) -> None:
        job_id = REC.recent_job(self.tenant)
        if job_id is None:
            self.list_jobs()
            return

        def same(status: int, b: Any, headers: Mapping[str, str]) -> str | None:
            return None if isinstance(b, dict) and b.get("id") == job_id else "another job"

        status, job = self.send("GET", f"/v1/jobs/{job_id}", "/v1/jobs/{id}",
                                expect={200: ""}, check=same)
        if status == 200 and job.get("status") in FINAL:
            REC.count("seen_final")

    @task(3)
    def list_jobs(self) -> None:
        status = random.choice((None, "queued", "running", "succeeded", "failed", "cancelled"))
        limit = random.choice((10, 50))
        query = f"limit={limit}" + (f"&status={status}" if status else "")

        def page_ok(code: int, b: Any, headers: Mapping[str, str]) -> str | None:
            if not isinstance(b, dict) or not isinstance(b.get("items"), list):
                return "not a job list"
            items = b["items"]
            if len(items) > limit:
                return f"{len(items)} items for limit={limit}"
            if status and any(j["status"] != status for j in items):
                return f"a job of another status in status={status}"
            created = [j["created_at"] for j in items]
            if created != sorted(created, reverse=True):
                return "not newest first"
            return None

        code, page = self.send("GET", f"/v1/jobs?{query}", "/v1/jobs?status=&limit=",
                               expect={200: ""}, check=page_ok)
        seen: set[str] = set()
        for _ in range(2):  # follow the cursor a little
            if code != 200 or not page.get("next_cursor"):
                return
            ids = {j["id"] for j in page["items"]}
            if ids & seen:
                self.failed_check("/v1/jobs?cursor=", "a job on two pages")
                return
            seen |= ids
            code, page = self.send(
                "GET", f"/v1/jobs?{query}&cursor={page['next_cursor']}", "/v1/jobs?cursor=",
                expect={200: ""}, check=page_ok)

    @task(1)
    def backends(self) -> None:
        self.send("GET", "/v1/backends", "/v1/backends", expect={200: ""})


class Finance(TenantUser):
    """Reads the tenant's budgets and cost reports."""

    weight = 1
    wait_time = between(3, 10)

    @task(3)
    def budgets(self) -> None:
        own = f"tenant:{self.tenant}"

        def has_own(status: int, b: Any, headers: Mapping[str, str]) -> str | None:
            scopes = {x["scope"] for x in (b or {}).get("budgets", [])}
            return None if own in scopes else f"{own} missing from its own budgets"

        self.send("GET", "/v1/budgets", "/v1/budgets", expect={200: ""}, check=has_own)

    @task(2)
    def costs(self) -> None:
        group_by = random.choice(("backend", "tier", "project", "day"))

        def adds_up(status: int, b: Any, headers: Mapping[str, str]) -> str | None:
            if not isinstance(b, dict):
                return "not a report"
            total = sum(g["cost_micros"] for g in b.get("groups", []))
            return None if total == b.get("total_micros") else "groups do not add up to total"

        self.send("GET", f"/v1/reports/costs?group_by={group_by}", "/v1/reports/costs",
                  expect={200: ""}, check=adds_up)


class Canceller(TenantUser):
    """Cancels the tenant's newest jobs (some already finished: 409, expected)."""

    weight = 1
    wait_time = between(5, 15)

    @task
    def cancel(self) -> None:
        job_id = REC.recent_job(self.tenant, newest=True)
        if job_id is None:
            code, page = self.send("GET", "/v1/jobs?status=queued&limit=5",
                                   "/v1/jobs?status=&limit=", expect={200: ""})
            if code != 200 or not page["items"]:
                return
            job_id = page["items"][0]["id"]

        def cancelled(status: int, b: Any, headers: Mapping[str, str]) -> str | None:
            if status == 200 and (b or {}).get("status") != "cancelled":
                return f"cancel answered 200 with status {(b or {}).get('status')}"
            return None

        status, _ = self.send("POST", f"/v1/jobs/{job_id}/cancel", "/v1/jobs/{id}/cancel",
                              expect={200: "", 409: "cancel_too_late"}, check=cancelled)
        if status == 200:
            REC.count("cancelled")


class Admin(TenantUser):
    """One operator: tops a tenant's daily budget up, or lowers it below what is spent."""

    fixed_count = 1
    wait_time = between(5, 15)

    def on_start(self) -> None:
        self.tenant = "admin"
        self.auth = {"Authorization": f"Bearer {_admin_key()}"}

    @task
    def adjust_budget(self) -> None:
        code, body = self.send("GET", "/v1/budgets", "/v1/budgets (admin)", expect={200: ""})
        if code != 200:
            return
        ours = [b for b in body["budgets"]
                if b["scope"].startswith(f"tenant:lt-{SETTINGS.run_id}-") and b["period"] == "day"]
        if not ours:
            return
        b = random.choice(ours)
        tenant = b["scope"].removeprefix("tenant:")
        base = SETTINGS.tight_budget_usd if SETTINGS.is_tight(tenant) else SETTINGS.budget_usd
        if random.random() < 0.3 and b["committed_usd"] > 0:
            limit = round(b["committed_usd"] * 0.9, 2)  # below what is spent: the excess
            REC.count("budget_lowered")
        else:
            limit = round(b["committed_usd"] + b["held_usd"] + base, 2)
            REC.count("budget_topped_up")
        limit = max(limit, 0.01)

        def took(status: int, out: Any, headers: Mapping[str, str]) -> str | None:
            got = (out or {}).get("limit_usd")
            return None if got == limit else f"limit {got} after setting {limit}"

        self.send("PUT", "/v1/budgets", "/v1/budgets",
                  json={"scope": b["scope"], "period": "day", "limit_usd": limit},
                  expect={200: ""}, check=took)

    @task
    def all_costs(self) -> None:
        self.send("GET", "/v1/reports/costs?group_by=tier", "/v1/reports/costs (admin)",
                  expect={200: ""})


# -- the run's start and end -----------------------------------------------------------------
def set_budgets(environment: Environment, **_: Any) -> None:
    """Each tenant's daily budget, once, before any user starts."""
    if isinstance(environment.runner, WorkerRunner):
        return
    headers = {"Authorization": f"Bearer {_admin_key()}"}
    for i, tenant in enumerate(SETTINGS.all_tenants()):
        r = requests.put(f"{environment.host}/v1/budgets", headers=headers, timeout=30,
                         json={"scope": f"tenant:{tenant}", "period": "day",
                               "limit_usd": SETTINGS.budget_of(i)})
        r.raise_for_status()
    log.info("budgets set for %d tenants of run %s", SETTINGS.tenants, SETTINGS.run_id)


def summarise(environment: Environment, **_: Any) -> None:
    REC.flush()
    shape = environment.shape_class
    if isinstance(shape, Shape):
        shape.stop()
    if isinstance(environment.runner, WorkerRunner):
        return
    SETTINGS.out_dir.mkdir(parents=True, exist_ok=True)
    (SETTINGS.out_dir / "summary.json").write_text(json.dumps(summary(environment), indent=2))


def summary(environment: Environment) -> dict[str, Any]:
    """Figures over every request but the rate limiter's 429s (counted apart)."""
    stats = environment.stats
    merged = StatsEntry(stats, "merged", "", use_response_times_cache=False)
    limited = 0
    for entry in stats.entries.values():
        if entry.name.endswith(RATE_LIMITED):
            limited += entry.num_requests
        else:
            merged.extend(entry)
    n = merged.num_requests
    last = merged.last_request_timestamp or merged.start_time
    duration = max(1e-9, last - merged.start_time) if n else 0.0
    shape = environment.shape_class
    report = shape.report() if isinstance(shape, Shape) else {
        "shape": "none", "peak_users": getattr(environment.parsed_options, "num_users", 0)}
    return {
        **report,
        "requests": n, "failures": merged.num_failures, "rate_limited": limited,
        "duration_s": round(duration, 3), "rps": round(n / duration, 2) if n else 0.0,
        "p50_ms": merged.get_response_time_percentile(0.50) if n else 0,
        "p95_ms": merged.get_response_time_percentile(0.95) if n else 0,
        "p99_ms": merged.get_response_time_percentile(0.99) if n else 0,
        "errors": [{"name": e.name, "method": e.method, "error": str(e.error)[:300],
                    "occurrences": e.occurrences} for e in stats.errors.values()][:20],
        **user_errors(environment),
        "run_id": SETTINGS.run_id, "tenants": SETTINGS.all_tenants(),
    }


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def user_errors(environment: Environment) -> dict[str, Any]:
    """Exceptions out of the users' tasks and ``on_start`` (Locust's runner collects them,
    from its workers too): no request of the stats counts them, yet each is a user that did
    not do what the traffic claims (a bug here, or an answer of another shape)."""
    runner = environment.runner
    rows = list(runner.exceptions.values()) if runner is not None else []
    messages = []
    for e in sorted(rows, key=lambda e: -e["count"]):
        frames = _FRAME.findall(e["traceback"])
        at = (f" at {os.path.basename(frames[-1][0])}:{frames[-1][1]} in {frames[-1][2]}"
              if frames else "")
        messages.append(f"x{e['count']} {e['msg'][:200]}{at}")
    return {"user_errors": sum(e["count"] for e in rows), "user_error_messages": messages[:10]}


events.test_start.add_listener(set_budgets)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(summarise)  # type: ignore[no-untyped-call]
