"""loadtests/levels.py: a level per user count from Locust's windowed history."""

from __future__ import annotations

import csv
from pathlib import Path

from .loadtest_scripts import loadtest_module

HEADER = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "95%"]


def _history(path: Path, rows: list[tuple[int, int, str, float, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for ts, users, name, rps, p95 in rows:
            w.writerow([ts, users, "" if name == "Aggregated" else "GET", name, rps, p95])
    return path


def test_each_user_count_is_a_level_without_its_first_seconds(tmp_path: Path) -> None:
    rows: list[tuple[int, int, str, float, str]] = [(0, 0, "Aggregated", 0.0, "N/A")]
    # 100 users for 20 s: 900 ms while they start (first 10 s), then 40, 50, 60 ms
    rows += [(t, 100, "Aggregated", 10.0, "900") for t in range(1, 11)]
    rows += [(t, 100, "Aggregated", 20.0, str(40 + 10 * (t % 3))) for t in range(11, 21)]
    rows += [(t, 100, "/v1/jobs", 5.0, "5000") for t in range(11, 21)]  # not the aggregate
    rows += [(21, 150, "Aggregated", 30.0, "70")]  # a step of the spawn: shorter than 10 s
    rows += [(t, 200, "Aggregated", 40.0, "300" if t == 40 else "120") for t in range(22, 45)]
    levels = loadtest_module("levels").levels(_history(tmp_path / "h.csv", rows))

    assert [(lv.users, lv.seconds) for lv in levels] == [(100, 10), (200, 13)]
    first, second = levels
    assert (first.rps, first.p95_ms, first.p95_max_ms) == (20.0, 50.0, 60.0)
    assert (second.rps, second.p95_ms, second.p95_max_ms) == (40.0, 120.0, 300.0)
    assert str(second) == "users=200 s=13 rps=40.0 p95_ms=120 p95_max_ms=300"
