"""The load test, CI-sized, so that the locustfile and its checks never rot: 50 users for 30 s
of the failover shape (a backend goes down and comes back mid-run) against ``orchestrator up``,
then every promise checked (loadtests/run.py exits 1 on any miss)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"^users=(?P<users>\d+) rps=(?P<rps>[\d.]+) p50_ms=\d+ p95_ms=\d+ p99_ms=\d+ "
    r"fail_ratio=(?P<fail_ratio>[\d.]+) jobs=(?P<jobs>\d+) lost=(?P<lost>\d+) "
    r"paid_twice=(?P<paid_twice>\d+) overrun=(?P<overrun>\d+)$")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_small_load_test_passes_with_every_promise_kept(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "loadtests/run.py", "--shape", "failover", "--users", "50",
         "--spawn-rate", "25", "--run-time", "30s", "--drain-timeout", "60",
         # a shared CI machine: latency is not what this run is for
         "--max-p95-ms", "5000", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=200)
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    assert (m["lost"], m["paid_twice"], m["overrun"]) == ("0", "0", "0")
    assert m["users"] == "50"
    assert int(m["jobs"]) > 0 and float(m["rps"]) > 0
    assert any(ln.startswith("failover: ") for ln in lines), run.stdout
    assert (tmp_path / "failover" / "failover_stats.csv").exists()
    assert (tmp_path / "failover" / "failover.html").exists()
    # nothing secret on the output: no API key, no password in a URL
    assert not re.search(r"orch_[0-9a-f]{8}_|://[^/\s@]+:[^/\s@]+@", run.stdout + run.stderr)
