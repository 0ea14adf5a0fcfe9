"""`orchestrator up` and its data dir: one `up` per data dir at a time (a second refuses in
one line and touches nothing of the first's), and a data dir left by an interrupted or killed
`up` starts again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.embedded._ports import free_port

from .test_up import ROOT, processes_mentioning, wait_for


@pytest.fixture()
def root() -> Iterator[Path]:
    """Not under tmp_path (see test_up.root)."""
    with tempfile.TemporaryDirectory(prefix="orch-up-") as tmp:
        yield Path(tmp)


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_SIMULATOR_URL=f"http://127.0.0.1:{free_port()}", ORCH_DATA_DIR=str(data))
    return env


class Up:
    """An `orchestrator up` subprocess with its output collected line by line."""

    def __init__(self, data: Path, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
             "--port", str(self.port), *args],
            cwd=ROOT, env=_env(data), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []),
                                       daemon=True)
        self.reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_running(self) -> None:
        wait_for("`up` to say it is running", lambda: "running;" in self.out
                 or self.proc.poll() is not None, timeout=180)
        assert self.proc.poll() is None, self.out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return code


def _cleanup(data: Path) -> None:
    for pid in processes_mentioning(str(data)):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_a_second_up_on_the_same_data_dir_refuses_and_leaves_the_first_alone(
        root: Path) -> None:
    data = root / "data"
    first = Up(data)
    try:
        first.wait_running()
        creds = (data / "credentials.json").read_bytes()
        pg_pid = (data / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0]
        redis_pid = (data / "redis" / "redis.pid").read_text().strip()
        # another port and no simulator: nothing but the data dir is shared; and the very
        # same command (its ports taken too): the data dir is what is named, not a port
        for options in (["--port", str(free_port()), "--no-simulator"],
                        ["--port", str(first.port)]):
            second = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
                 *options], cwd=ROOT, env=_env(data), capture_output=True, text=True,
                timeout=120)
            assert second.returncode == 1, second.stdout + second.stderr
            assert second.stderr.startswith("error: another `orchestrator up` is running on "
                                            f"{data} (pid {first.proc.pid})"), second.stderr
            assert second.stderr.count("\n") == 1 and second.stdout == ""
        # the first one's servers and credentials untouched, nothing restarted
        assert (data / "credentials.json").read_bytes() == creds
        assert (data / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0] \
            == pg_pid
        assert (data / "redis" / "redis.pid").read_text().strip() == redis_pid
        assert "restart" not in first.out and first.proc.poll() is None, first.out
    finally:
        code = first.stop()
        _cleanup(data)
    assert code == 0, first.out


def test_a_ctrl_c_while_the_database_is_made_leaves_a_data_dir_that_starts(
        root: Path) -> None:
    """Ctrl-C in the terminal (SIGINT to `up`'s process group) on the first start, while
    initdb runs: `up` stops, and the next `up` on that data dir starts."""
    data = root / "data"
    first = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
         "--port", str(free_port()), "--no-simulator"],
        cwd=ROOT, env=_env(data), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        # the password file initdb reads exists while (and only while) initdb runs
        wait_for("initdb to begin", lambda: (data / "postgres" / ".initdb-password").exists()
                 or first.poll() is not None, timeout=60)
        os.killpg(first.pid, signal.SIGINT)
        out, _ = first.communicate(timeout=120)
        assert "admin key" not in out, out
        wait_for("every process to exit", lambda: processes_mentioning(str(data)) == [],
                 timeout=30)
        again = Up(data, "--no-simulator")
        try:
            again.wait_running()
        finally:
            code = again.stop()
        assert code == 0, again.out
    finally:
        if first.poll() is None:
            first.kill()
        _cleanup(data)


def test_a_data_dir_that_is_a_file_is_refused_in_one_line_that_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
         "--port", str(free_port()), "--no-simulator"],
        cwd=ROOT, env=_env(data), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"error: the data dir {data} is not a directory (--data-dir)\n"
    assert result.stdout == "" and data.read_text() == "not a directory"
