"""Traffic and verdicts for the chaos tests: steady submissions that record every answer, a
round-robin TCP balancer in front of API replicas, the promises checked afterwards, and the
figures each test prints."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from loadtests.checks import bills, drain, ledger_problems, paid_twice, run_jobs


# -- steady submissions ----------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    at: float  # monotonic, when the answer came
    took_s: float
    route: str
    status: int  # 0: no HTTP answer
    code: str | None
    retry_after: str | None


@dataclass
class Steady:
    """Submits a job every ``every_s`` and, between two, reads the last accepted job, the
    tenant's jobs and budgets, recording every answer. A submission that got no 2xx is sent
    again with its Idempotency-Key, so that none is counted twice or lost in the count."""

    url: str
    key: str
    spec: Callable[[int], dict[str, Any]]
    every_s: float = 0.1
    answers: list[Answer] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Steady:
        self._thread = threading.Thread(target=self._run, name="steady", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        pending: str | None = None
        n = 0
        with httpx.Client(base_url=self.url, headers=headers, timeout=15) as http:
            while not self._stop.wait(self.every_s):  # the submission rate
                n += 1
                pending = pending or str(uuid.uuid4())
                r = self._call(http, "POST /v1/jobs", "POST", "/v1/jobs", json=self.spec(n),
                               headers={"Idempotency-Key": pending})
                if r is not None and r.status_code in (200, 202):
                    self.accepted.add(r.json()["id"])
                    pending = None
                read = [("GET /v1/jobs", "/v1/jobs"), ("GET /v1/budgets", "/v1/budgets")]
                if self.accepted:
                    job = next(iter(self.accepted))
                    read.append(("GET /v1/jobs/{id}", f"/v1/jobs/{job}"))
                route, path = read[n % len(read)]
                self._call(http, route, "GET", path)

    def _call(self, http: httpx.Client, route: str, method: str, path: str,
              **kw: Any) -> httpx.Response | None:
        sent = time.monotonic()
        try:
            r = http.request(method, path, **kw)
        except httpx.TransportError:
            now = time.monotonic()
            self.answers.append(Answer(now, now - sent, route, 0, None, None))
            return None
        code = None
        if r.status_code >= 400:
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "not-an-envelope"
        now = time.monotonic()
        self.answers.append(Answer(now, now - sent, route, r.status_code, code,
                                   r.headers.get("Retry-After")))
        return r

    def ok_after(self, t: float) -> Answer | None:
        return next((a for a in self.answers if a.at >= t and 200 <= a.status < 300), None)


# -- a round-robin TCP balancer ---------------------------------------------------------------
class RoundRobin:
    """Each client connection goes to the next backend in turn and stays there. A backend that
    refuses the connection gets the client's connection closed, not another backend: what
    recovers is the client's retry (a new connection, the next backend)."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self._next = itertools.cycle(backends)
        self.refused = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="round-robin")
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> RoundRobin:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:  # the connections still piped: cut
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = next(self._next)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            self.refused += 1
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


# -- verdicts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    jobs: int  # every job of the tenants: accepted, and any the database has besides
    lost: list[str]
    unsettled: list[str]
    audit: list[str]
    paid_twice: int  # ledger entries, provider bills per reference, provider jobs per attempt
    charged_not_billed: list[str]
    drained_s: float
    lost_states: dict[str, int] = field(default_factory=dict)  # "status wake=…": how many


def lost_states(engine: Engine, lost: list[str]) -> dict[str, int]:
    """Where the jobs not final stand: their status and whether the sweeper owes them a wake
    (overdue), will (pending) or never will (none): what a failure message needs to say."""
    if not lost:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT status, CASE WHEN wake_at IS NULL THEN 'none' WHEN wake_at <= now() "
            "THEN 'overdue' ELSE 'pending' END AS wake, count(*) AS n FROM jobs "
            "WHERE id = ANY(:ids) GROUP BY 1, 2"),
            {"ids": [uuid.UUID(i) for i in lost]}).all()
    found = {f"{r.status} wake={r.wake}": int(r.n) for r in rows}
    missing = len(lost) - sum(found.values())
    return found | ({"not in the database": missing} if missing else {})


def verdict(engine: Engine, sim_url: str, accepted: set[str], tenants: list[str],
            timeout_s: float = 180.0) -> Verdict:
    """Wait (bounded) until every job of ``tenants`` is final and owes nothing, then check the
    ledger and the simulator's bills."""
    d = drain(engine, accepted, tenants, timeout_s=timeout_s)
    jobs = accepted | run_jobs(engine, tenants)
    b = bills(engine, sim_url, jobs, exclusive=False)
    twice = paid_twice(engine) + len(b.billed_twice) + sum(b.created_beyond_attempts.values())
    return Verdict(d.jobs, d.lost, d.unsettled, ledger_problems(engine), twice,
                   b.charged_vs_billed, d.waited_s, lost_states(engine, d.lost))


def assert_kept(v: Verdict) -> None:
    assert not v.lost, f"{len(v.lost)} jobs not final ({v.lost_states}): {v.lost[:5]}"
    assert not v.unsettled, f"{len(v.unsettled)} jobs still owe work: {v.unsettled[:5]}"
    assert v.audit == [], v.audit[:10]
    assert v.paid_twice == 0
    assert not v.charged_not_billed, v.charged_not_billed[:5]


class Figures:
    """One line per test, ``chaos <test> key=value …``: printed (``pytest -s`` shows it) and
    appended to ``path`` (``chaos-figures.txt`` in pytest's base temporary directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, test: str, **values: Any) -> str:
        line = f"chaos {test} " + " ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
        return line
