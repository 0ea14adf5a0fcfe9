"""Benchmark: submit latency (POST /v1/jobs -> 202, as bench/submit.py measures it) with and
without 200 event streams (SSE) held open against the same `orchestrator up`.

    .venv/bin/python bench/streams.py [--streams 200] [--rate 100] [--seconds 30]

It runs ``orchestrator up`` as bench/submit.py does, then submits ``--streams`` premium video
jobs that run for ten minutes on the simulator (those above vid-premium's concurrency wait
for a slot): the jobs the streams watch. Then, against the same running system:

1. without streams: submit at ``--rate`` for ``--seconds`` (bench/submit.py's open loop);
2. with one ``GET /v1/jobs/{id}/events`` stream open per watched job (all opened, answered
   200 and held through the measurement, read by one asyncio thread here), the same again.

Before each phase it waits until only the watched jobs are live (the worker has finished the
jobs submitted before). Each phase prints ``streams=N submit_p50_ms=… submit_p99_ms=…
errors=…``; the last line is the phase with streams. ``errors`` counts failed submissions
and streams that were refused, broke or ended during the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

import httpx
import httpx_sse
from _stack import cpu_seconds
from submit import ERRORS, offer, pct, up_process

WATCHED_BODY: dict[str, Any] = {
    "kind": "video", "tier": "premium", "backend": "vid-premium",
    "input": {"prompt": "a long take of the sea", "duration_s": 4, "resolution": "720p"}}


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


def watched_jobs(url: str, key: str, sim_url: str, n: int) -> list[str]:
    httpx.post(f"{sim_url}/_control/vid-premium", json={"duration_ms": 600_000},
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


def phase(url: str, key: str, rate: float, seconds: float, pid: int) -> tuple[str, int]:
    settle(url, key)
    ERRORS.clear()
    cpu0 = cpu_seconds(pid)
    latencies, errors = offer(url, key, rate, seconds)
    api_ms = (cpu_seconds(pid) - cpu0) * 1000 / max(1, len(latencies) + errors)
    for what, count in ERRORS.most_common(5):
        print(f"error x{count}: {what}")
    print(f"api_cpu_ms_per_submit={api_ms:.2f}")
    return (f"submit_p50_ms={pct(latencies, 50):.2f} submit_p99_ms={pct(latencies, 99):.2f}",
            errors)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--streams-first", action="store_true",
                    help="measure with the streams first, then without (order effects)")
    args = ap.parse_args()
    info: dict[str, str] = {}
    with up_process(budget_usd=10_000_000, info=info) as (url, key, pid):
        ids = watched_jobs(url, key, info["sim_url"], args.streams)
        if not args.streams_first:
            figures, errors = phase(url, key, args.rate, args.seconds, pid)
            print(f"streams=0 {figures} errors={errors}", flush=True)
        streams = Streams(url, key, ids)
        streams.thread.start()
        if not streams.all_open.wait(60):
            raise SystemExit(f"only {streams.open} of {args.streams} streams opened: "
                             f"{streams.errors[:5]}")
        opened = time.monotonic()
        figures, errors = phase(url, key, args.rate, args.seconds, pid)
        held = time.monotonic() - opened
        broken = len(streams.errors)
        still_open = streams.open
        streams.stop()
        print(f"streams held {held:.0f} s, {streams.events} events read, "
              f"stream errors: {streams.errors[:5]}")
        with_streams = f"streams={still_open} {figures} errors={errors + broken}"
        if args.streams_first:
            print(with_streams, flush=True)
            figures, errors = phase(url, key, args.rate, args.seconds, pid)
            print(f"streams=0 {figures} errors={errors}")
        print(with_streams)


if __name__ == "__main__":
    main()
