"""The embedded servers after a crash (or a reboot) left their pid files behind, each naming a
pid that another, unrelated process has since: a start begins a server anew, and neither a
start nor a stop signals that process."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from orchestrator.embedded import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    # not under tmp_path: see test_security_host.data_dir
    with tempfile.TemporaryDirectory(prefix="orch-stale-") as tmp:
        yield Path(tmp)


@pytest.fixture()
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is none of ours (what a reused pid names)."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def _gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with_zombie = Path(f"/proc/{pid}/stat")
        if with_zombie.exists() and with_zombie.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still alive")
        time.sleep(0.05)


def test_a_redis_pid_file_naming_another_process_signals_nothing(
        data_dir: Path, bystander: subprocess.Popen[bytes]) -> None:
    rd = EmbeddedRedis(data_dir, durable=False)
    rd.start()
    pidfile = data_dir / "redis" / "redis.pid"
    old = int(pidfile.read_text())
    os.kill(old, signal.SIGKILL)  # a crash: the pid file stays
    _gone(old)
    pidfile.write_text(f"{bystander.pid}\n")
    again = EmbeddedRedis(data_dir, durable=False)
    try:
        assert not again.running()
        url = again.start()
        assert redis.Redis.from_url(url).ping()
        assert bystander.poll() is None  # not killed
        pid = int(pidfile.read_text())
        assert pid not in (old, bystander.pid)
        again.stop()
        _gone(pid)
        pidfile.write_text(f"{bystander.pid}\n")
        EmbeddedRedis(data_dir).stop()
        assert bystander.poll() is None
    finally:
        again.stop()


def test_a_postmaster_pid_naming_another_process_is_a_server_not_running(
        data_dir: Path, bystander: subprocess.Popen[bytes]) -> None:
    pg = EmbeddedPostgres(data_dir / "pg", durable=False)
    pg.start()
    lockfile = pg.pgdata / "postmaster.pid"
    old = int(lockfile.read_text().splitlines()[0])
    os.kill(old, signal.SIGKILL)  # a crash: the lock file stays
    _gone(old)
    lines = lockfile.read_text().split("\n")
    lockfile.write_text("\n".join([str(bystander.pid), *lines[1:]]))
    again = EmbeddedPostgres(data_dir / "pg", durable=False)
    try:
        assert not again.running()
        if os.geteuid() != 0:  # PostgreSQL itself takes a pid it may signal for a server
            pytest.skip("a root run only: the server (its own user) may not signal the pid")
        url = again.start()
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"),
                             connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert bystander.poll() is None
    finally:
        again.stop()
        assert bystander.poll() is None


def test_root_without_ptrace_still_sees_its_postgres_running(data_dir: Path) -> None:
    """As root, the server runs as a user of its own, whose working directory only
    CAP_SYS_PTRACE may read (Docker's default capabilities leave it out): ``up`` must still
    see its server running, not restart it on every look."""
    capsh = shutil.which("capsh")
    if os.geteuid() != 0 or capsh is None:
        pytest.skip("a root run with capsh only: the server then runs as another user")
    pg = EmbeddedPostgres(data_dir / "pg", durable=False)
    pg.start()
    try:
        code = ("import sys; from pathlib import Path; "
                "from orchestrator.embedded import EmbeddedPostgres; "
                f"sys.exit(0 if EmbeddedPostgres(Path({str(data_dir / 'pg')!r})).running() "
                "else 3)")
        done = subprocess.run([capsh, "--drop=cap_sys_ptrace", "--", "-c",
                               f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"],
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
    finally:
        pg.stop()
