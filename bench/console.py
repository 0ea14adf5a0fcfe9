"""Benchmark: the web console's first paint and its first view, in headless Chromium.

    .venv/bin/python bench/console.py [--runs 10] [--jobs 30]

Runs ``orchestrator up`` as a user does (bench/submit.py's ``up_process``), submits ``--jobs``
video jobs with the demo tenant's key (so the views have data) and waits for them to end, then
loads ``/console/`` ``--runs`` times in Debian's headless Chromium (/usr/bin/chromium; a fresh
browser context each time: nothing cached) and reads the browser's own paint timings
(``first-paint``, ``first-contentful-paint``: from navigation start). Each run then signs in
and times until the Spend view has drawn its chart (about 15 cost reports), and the Jobs view
its table.
Last line: ``first_paint_ms_p50=... first_paint_ms_max=... fcp_ms_max=... spend_view_ms_p50=...
jobs_view_ms_p50=... runs=...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import httpx
from playwright.sync_api import sync_playwright
from submit import up_process  # bench/ is this script's directory

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAINTS = """() => Object.fromEntries(performance.getEntriesByType('paint')
                                        .map(e => [e.name, e.startTime]))"""


def submit_and_wait(url: str, key: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        ids = [http.post("/v1/jobs", json={"kind": "video", "tier": "draft", "input": {
            "prompt": "a lighthouse", "duration_s": 4}}).json()["id"] for _ in range(n)]
        deadline = time.monotonic() + 300
        while any(http.get(f"/v1/jobs/{i}").json()["status"] in ("queued", "running")
                  for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError("the jobs did not end within 300 s")
            time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=30)
    args = ap.parse_args()
    fp: list[float] = []
    fcp: list[float] = []
    spend: list[float] = []
    jobs: list[float] = []
    with up_process(budget_usd=1000) as (url, key, _pids):
        submit_and_wait(url, key, args.jobs)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for _ in range(args.runs):
                context = browser.new_context(viewport={"width": 1366, "height": 800})
                page = context.new_page()
                page.goto(f"{url}/console/", wait_until="load")
                page.wait_for_function("performance.getEntriesByType('paint').length >= 2")
                paints = page.evaluate(PAINTS)
                fp.append(paints["first-paint"])
                fcp.append(paints["first-contentful-paint"])
                page.get_by_label("API key").fill(key)
                t0 = time.perf_counter()
                page.get_by_role("button", name="Sign in").click()
                try:
                    page.locator("#spend-body[aria-busy=false] svg").wait_for()
                except Exception:  # say what the console said before giving up
                    print(f"spend view not drawn; status: {page.inner_text('#status')!r}",
                          file=sys.stderr)
                    raise
                spend.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                page.get_by_role("link", name="Jobs", exact=True).click()
                page.locator("#jobs-body table").wait_for()
                jobs.append((time.perf_counter() - t0) * 1000)
                context.close()
            browser.close()
    print(f"runs={args.runs} jobs={args.jobs} first_paint_ms={[round(v) for v in fp]} "
          f"spend_view_ms={[round(v) for v in spend]}")
    print(f"first_paint_ms_p50={statistics.median(fp):.0f} first_paint_ms_max={max(fp):.0f} "
          f"fcp_ms_max={max(fcp):.0f} spend_view_ms_p50={statistics.median(spend):.0f} "
          f"jobs_view_ms_p50={statistics.median(jobs):.0f} runs={args.runs}")


if __name__ == "__main__":
    main()
