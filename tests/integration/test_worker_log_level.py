"""`orchestrator worker` and `beat` log at ORCH_LOG_LEVEL unless `--loglevel` says otherwise
(the option's default used to be INFO, which hid the setting)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _levels(role: str, tmp_path: Path, database_url: str, redis_url: str,
            *args: str, **env_extra: str) -> set[str]:
    """The levels of the lines ``orchestrator <role> <args>`` writes until it is ready."""
    tmp_path.mkdir()
    ready = tmp_path / f"{role}.ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(PYTHONPATH=str(ROOT), ORCH_DATABASE_URL=database_url,
               # a database of its own: no other test's messages to consume
               ORCH_REDIS_URL=redis_url,
               ORCH_DATA_DIR=str(tmp_path), ORCH_READY_FILE=str(ready),
               **env_extra)
    extra = ["--schedule", str(tmp_path / "schedule")] if role == "beat" else []
    log = tmp_path / f"{role}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", role, *args, *extra],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return {json.loads(line)["level"] for line in log.read_text().splitlines()
            if line.startswith("{")}


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_the_log_level_follows_the_setting_unless_the_option_says(
        role: str, tmp_path: Path, database_url: str, spare_redis_url: str) -> None:
    redis_url = spare_redis_url
    assert "INFO" in _levels(role, tmp_path / "default", database_url, redis_url)
    assert "INFO" not in _levels(role, tmp_path / "setting", database_url, redis_url,
                                 ORCH_LOG_LEVEL="WARNING")
    assert "INFO" in _levels(role, tmp_path / "option", database_url, redis_url,
                             "--loglevel", "INFO", ORCH_LOG_LEVEL="WARNING")
