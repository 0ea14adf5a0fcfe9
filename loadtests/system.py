"""The system under test: ``orchestrator up`` in a temporary data directory, as a user runs
it, or an already running one named by ``--host`` and ``--credentials``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestrator.embedded._ports import free_port

ROOT = Path(__file__).resolve().parents[1]


_SECRETS = (re.compile(r"orch_[0-9a-f]{8}_[A-Za-z0-9_-]+"), re.compile(r"(?<=://)[^/\s@]*@"))


def redact(line: str) -> str:
    """Without API keys and URL credentials (``up`` prints the keys for its user)."""
    for pattern in _SECRETS:
        line = pattern.sub("***", line)
    return line


@dataclass(frozen=True)
class Target:
    api_url: str
    credentials: Path  # credentials.json: admin_key, database_url, simulator_url, ...
    api_pids: tuple[int, ...]  # the API processes, when this run started them
    up_pid: int | None = None  # `orchestrator up`, whose process tree is the whole system

    def creds(self) -> dict[str, str]:
        loaded: dict[str, str] = json.loads(self.credentials.read_text())
        return loaded


@contextmanager
def existing(host: str, credentials: Path) -> Iterator[Target]:
    yield Target(host.rstrip("/"), credentials, ())


@contextmanager
def orchestrator_up(logs_to: Path | None, timeout_s: float = 180.0,
                    env_extra: dict[str, str] | None = None) -> Iterator[Target]:
    """``orchestrator up`` in a temporary data dir (free ports); stopped with SIGTERM at the
    end, its logs copied to ``logs_to``. Its output (which shows the keys) is not echoed."""
    with tempfile.TemporaryDirectory(prefix="orch-loadtest-") as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(ORCH_DATA_DIR=str(data), ORCH_SIMULATOR_URL=f"http://127.0.0.1:{free_port()}",
                   **(env_extra or {}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
             "--port", str(free_port())],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        running = threading.Event()
        tail: list[str] = []

        def read() -> None:  # until `up` says it runs; then keep draining its output
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("running;"):
                    running.set()
                elif not running.is_set():
                    tail.append(redact(line))
                    del tail[:-20]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + timeout_s
            while not running.wait(0.2):
                code = proc.poll()
                if code is not None or time.monotonic() > deadline:
                    why = f"exited {code}" if code is not None else f"{timeout_s:g} s passed"
                    raise RuntimeError(f"`orchestrator up` did not start ({why}); its last "
                                       f"lines:\n{''.join(tail)}")
            creds = data / "credentials.json"
            api = json.loads(creds.read_text())["api_url"]
            yield Target(api, creds, _child_pids(proc.pid, "api"), proc.pid)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # `up` stops its children itself
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            reader.join(timeout=10)
            if logs_to is not None and (data / "logs").is_dir():
                shutil.copytree(data / "logs", logs_to, dirs_exist_ok=True)


def _child_pids(parent: int, command: str) -> tuple[int, ...]:
    """The pids of ``orchestrator <command>`` among ``parent``'s children."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == parent and argv[1:4] == [b"-m", b"orchestrator.cli",
                                                      command.encode()]:
            pids.append(int(stat.parent.name))
    return tuple(sorted(pids))


def set_prediction_duration(target: Target, duration_ms: int) -> list[str]:
    """How long every simulated create-then-poll job runs (the simulator's ``duration_ms`` of
    each ``predictions`` backend); returns their names."""
    creds = target.creds()
    headers = {"Authorization": f"Bearer {creds['admin_key']}"}
    catalogue = httpx.get(f"{target.api_url}/v1/backends", headers=headers, timeout=30)
    catalogue.raise_for_status()
    names = [b["name"] for b in catalogue.json()["backends"] if b["protocol"] == "predictions"]
    sim = creds["simulator_url"].rstrip("/")
    for name in names:
        httpx.post(f"{sim}/_control/{name}", json={"duration_ms": duration_ms},
                   timeout=30).raise_for_status()
    return names
