"""Benchmark: submit latency (POST /v1/jobs -> 202, as bench/submit.py measures it) with and
without 200 event streams (SSE) held open against the same `orchestrator up`.

    .venv/bin/python bench/streams.py [--streams 200] [--rate 100] [--seconds 30] [--blocks 2]
                                      [--shipped]

It runs ``orchestrator up`` as bench/submit.py does, then submits ``--streams`` premium video
jobs that run for half an hour on the simulator: the jobs the streams watch. ``up`` gets the
shipped catalogue with one change, to ``vid-premium``, the watched jobs' backend: it says what
those jobs are (half an hour each: ``expected_latency_ms``, a ``start_to_close_s`` above it)
and takes them all at once (``max_concurrency``). With the shipped entry (20 at a time,
900 ms expected, stopped after 20 minutes) the jobs waiting for a slot woke every 10 s and the
running ones were polled as often: some 20 worker steps a second, streams or not, which
bench/submit.py's system does not carry (``--shipped``: that entry).

Then, against the same running system, phases of ``--seconds`` each submit at ``--rate``
(bench/submit.py's open loop), in blocks of four:
without streams, with, with, without. In a phase "with", one ``GET /v1/jobs/{id}/events``
stream per watched job is opened first (all answered 200), held through the phase, read by
one asyncio loop in a process of its own, and closed after it.

Why blocks and not one phase of each: a later phase meets bigger tables and PostgreSQL's
background work (autovacuum, checkpoints), and was the slower one whichever it was; the
without/with/with/without order gives both the same share of early and late.

Before each phase it waits until only the watched jobs are live (the worker has finished the
jobs submitted before). Each phase prints a line; the last two lines pool every phase's
submissions of each kind: ``streams=0 submit_p50_ms=… submit_p99_ms=… errors=…`` and, last,
``streams=200 …``. ``errors`` counts failed submissions and streams that were refused, broke
or ended during a phase.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import yaml
from _stack import ROOT, cpu_seconds
from submit import ERRORS, offer, pct, up_process

WATCHED_BODY: dict[str, Any] = {
    "kind": "video", "tier": "premium", "backend": "vid-premium",
    "input": {"prompt": "a long take of the sea", "duration_s": 4, "resolution": "720p"},
    "deadline_s": 3600}
WATCHED_MS = 1_800_000  # how long the simulator takes to make a watched job's video


class Streams:
    """``n`` job streams held open by one asyncio loop in a thread."""

    def __init__(self, url: str, key: str, job_ids: list[str]) -> None:
        self.url, self.key, self.job_ids = url, key, job_ids
        self.open = 0
        self.events = 0
        self.errors: list[str] = []
        self.all_open = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        limits = httpx.Limits(max_connections=len(self.job_ids) + 10)
        async with httpx.AsyncClient(base_url=self.url, limits=limits,
                                     headers={"Authorization": f"Bearer {self.key}"},
                                     timeout=httpx.Timeout(30.0, read=120.0)) as client:
            await asyncio.gather(*(self._one(client, j) for j in self.job_ids))

    async def _one(self, client: httpx.AsyncClient, job_id: str) -> None:
        assert self._stop is not None
        try:
            async with httpx_sse.aconnect_sse(client, "GET", f"/v1/jobs/{job_id}/events"
                                              ) as source:
                if source.response.status_code != 200:
                    self.errors.append(f"HTTP {source.response.status_code}")
                    return
                self.open += 1
                if self.open == len(self.job_ids):
                    self.all_open.set()
                reader = asyncio.ensure_future(self._read(source))
                stopped = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not stopped.done():
                    self.errors.append("stream ended early")
                reader.cancel()
                stopped.cancel()
        except httpx.HTTPError as exc:
            self.errors.append(type(exc).__name__)

    async def _read(self, source: httpx_sse.EventSource) -> None:
        async for _ in source.aiter_sse():
            self.events += 1

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=60)


def _hold_streams(url: str, key: str, ids: list[str], opened: Any, stop: Any,
                  report: Any) -> None:
    streams = Streams(url, key, ids)
    streams.thread.start()
    if streams.all_open.wait(60):
        opened.set()
        stop.wait()
    streams.stop()
    report.put((streams.open, streams.errors))


class StreamsProcess:
    """:class:`Streams` in a process of its own, as the clients of a real system are: in
    this one, the stream reader would take the interpreter lock from the threads that time
    the submissions."""

    def __init__(self, url: str, key: str, ids: list[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.opened, self.stopping, self.report = ctx.Event(), ctx.Event(), ctx.Queue()
        self.process = ctx.Process(target=_hold_streams, daemon=True, args=(
            url, key, ids, self.opened, self.stopping, self.report))
        self.process.start()
        if not self.opened.wait(90):
            self.stopping.set()
            held, errors = self.report.get(timeout=90)
            raise SystemExit(f"only {held} of {len(ids)} streams opened: {errors[:5]}")

    def stop(self) -> tuple[int, list[str]]:
        """(streams opened, errors: refused, broke or ended early)"""
        self.stopping.set()
        held, errors = self.report.get(timeout=90)
        self.process.join(timeout=30)
        return held, errors


def watched_catalogue(path: Path, streams: int) -> Path:
    """The shipped catalogue, with ``vid-premium`` declaring the watched jobs' half hour and
    taking all of them at once, written to ``path``."""
    catalogue = yaml.safe_load((ROOT / "config" / "backends.yaml").read_text())
    entry = next(b for b in catalogue["backends"] if b["name"] == "vid-premium")
    entry["expected_latency_ms"] = WATCHED_MS
    entry.setdefault("timeouts", {})["start_to_close_s"] = WATCHED_MS / 1000 + 600
    entry["max_concurrency"] = max(entry.get("max_concurrency", 1), streams)
    path.write_text(yaml.safe_dump(catalogue, sort_keys=False))
    return path


def watched_jobs(url: str, key: str, sim_url: str, n: int) -> list[str]:
    httpx.post(f"{sim_url}/_control/vid-premium", json={"duration_ms": WATCHED_MS},
               timeout=10).raise_for_status()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30.0) as client:
        ids = []
        for _ in range(n):
            r = client.post("/v1/jobs", json=WATCHED_BODY)
            r.raise_for_status()
            ids.append(r.json()["id"])
    return ids


def settle(url: str, key: str, timeout_s: float = 600.0) -> None:
    """Until only the watched (premium) jobs are live: the previous phase's jobs, still run by
    the worker, would otherwise load the next phase's machine."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30.0) as client:
        while True:
            live = [j for status in ("queued", "running") for j in client.get(
                "/v1/jobs", params={"status": status, "limit": 200}).json()["items"]]
            if all(j["tier"] == "premium" for j in live):
                return
            if time.monotonic() > deadline:
                raise SystemExit("the previous phase's jobs did not end in time")
            time.sleep(1.0)  # a poll interval: the loop checks the jobs


def phase(url: str, key: str, rate: float, seconds: float, pids: list[int]
          ) -> tuple[list[float], int, float]:
    """One measurement: (latencies, errors, API CPU ms per submission)."""
    settle(url, key)
    ERRORS.clear()
    cpu0 = cpu_seconds(*pids)
    latencies, errors = offer(url, key, rate, seconds)
    api_ms = (cpu_seconds(*pids) - cpu0) * 1000 / max(1, len(latencies) + errors)
    for what, count in ERRORS.most_common(5):
        print(f"error x{count}: {what}")
    return latencies, errors, api_ms


def figures(latencies: list[float]) -> str:
    return f"submit_p50_ms={pct(latencies, 50):.2f} submit_p99_ms={pct(latencies, 99):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="per phase")
    ap.add_argument("--blocks", type=int, default=2,
                    help="blocks of four phases: without, with, with, without streams")
    ap.add_argument("--shipped", action="store_true",
                    help="the shipped catalogue's vid-premium: 20 watched jobs at a time, "
                         "the others waking every 10 s for a slot")
    args = ap.parse_args()
    order = [False, True, True, False] * args.blocks
    if len(order) * (args.seconds + 60) > WATCHED_MS / 1000:
        raise SystemExit("the watched jobs would end before the last phase: fewer --blocks "
                         "or --seconds")
    info: dict[str, str] = {}
    pooled: dict[bool, list[float]] = {False: [], True: []}
    failed = {False: 0, True: 0}
    tmp = tempfile.TemporaryDirectory(prefix="orch-bench-streams-")
    env = {} if args.shipped else {"ORCH_BACKENDS_FILE": str(
        watched_catalogue(Path(tmp.name) / "backends.yaml", args.streams))}
    with tmp, up_process(budget_usd=10_000_000, info=info, env_extra=env) as (url, key, pids):
        ids = watched_jobs(url, key, info["sim_url"], args.streams)
        for i, with_streams in enumerate(order):
            streams = StreamsProcess(url, key, ids) if with_streams else None
            latencies, errors, api_ms = phase(url, key, args.rate, args.seconds, pids)
            held = 0
            if streams is not None:
                held, stream_errors = streams.stop()
                errors += len(stream_errors)
                if stream_errors:
                    print(f"stream errors: {stream_errors[:5]}")
            pooled[with_streams] += latencies
            failed[with_streams] += errors
            print(f"phase={i} streams={held} {figures(latencies)} errors={errors} "
                  f"api_cpu_ms_per_submit={api_ms:.2f}", flush=True)
    for with_streams in (False, True):  # the last line: with streams
        print(f"streams={args.streams if with_streams else 0} {figures(pooled[with_streams])} "
              f"errors={failed[with_streams]}", flush=True)


if __name__ == "__main__":
    main()
