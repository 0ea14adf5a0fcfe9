"""Latency at each number of users: where the knee is.

Read from Locust's stats history, written with ``--csv-full-history`` so that each row's
percentiles cover Locust's last 10 seconds (without it they cover the run so far, and a slow
minute hides behind the fast ones before it). Rows of one user count form a level; its first
``settle_s`` seconds (users still starting, windows straddling two levels) are left out.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Level:
    users: int
    seconds: int
    rps: float
    p95_ms: float  # the median of the level's 10-second p95s
    p95_max_ms: float

    def __str__(self) -> str:
        return (f"users={self.users} s={self.seconds} rps={self.rps:.1f} "
                f"p95_ms={self.p95_ms:.0f} p95_max_ms={self.p95_max_ms:.0f}")


def levels(history: Path, settle_s: int = 10) -> list[Level]:
    with history.open(newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["Name"] == "Aggregated" and r["User Count"] not in ("", "0")]
    runs: list[list[dict[str, str]]] = []
    for r in rows:
        if runs and runs[-1][0]["User Count"] == r["User Count"]:
            runs[-1].append(r)
        else:
            runs.append([r])
    out = []
    for run in runs:
        start = int(run[0]["Timestamp"])
        kept = [r for r in run if int(r["Timestamp"]) >= start + settle_s and r["95%"] != "N/A"]
        if not kept:
            continue
        p95s = [float(r["95%"]) for r in kept]
        out.append(Level(users=int(run[0]["User Count"]), seconds=len(kept),
                         rps=statistics.fmean(float(r["Requests/s"]) for r in kept),
                         p95_ms=statistics.median(p95s), p95_max_ms=max(p95s)))
    return out
