"""`orchestrator up` as a user runs it: a subprocess in a temporary data dir, on embedded
PostgreSQL and Redis; submit with the CLI (--wait) and the SDK; SIGTERM; nothing left."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from orchestrator.client import Client
from orchestrator.embedded._ports import free_port, port_is_free

ROOT = Path(__file__).resolve().parents[2]


def processes_mentioning(marker: str) -> list[int]:
    """Live processes whose command line, environment or working directory names ``marker``
    (our data dir): the embedded Redis rewrites its command line and gets no environment
    of ours, but runs in its data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            blob += os.readlink(entry / "cwd").encode()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def pids_of(marker: str, command: str) -> list[int]:
    """The pids of the `orchestrator <command>` processes under data dir ``marker``."""
    found = []
    for pid in processes_mentioning(marker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"orchestrator.cli", command.encode()]:
            found.append(pid)
    return sorted(found)


def niceness_of(marker: str, command: str) -> set[int]:
    """The nice values of the `orchestrator <command>` processes under data dir ``marker``."""
    found = set()
    for pid in pids_of(marker, command):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        found.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_for(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def child_env(marker: str, command: str) -> dict[str, str]:
    """The environment of the `orchestrator <command>` process under data dir ``marker``."""
    for pid in pids_of(marker, command):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        pairs = (item.decode().partition("=") for item in environ if item)
        return {name: value for name, _, value in pairs}
    raise AssertionError(f"no `orchestrator {command}` under {marker}")


@pytest.fixture()
def root() -> Iterator[Path]:
    """Not under tmp_path: a pytest session starting elsewhere on the machine takes the group
    and other bits off /tmp/pytest-of-<user>, and a root run's PostgreSQL (its own system
    user) must traverse down to its data whenever `up` runs pg_ctl."""
    with tempfile.TemporaryDirectory(prefix="orch-up-") as tmp:
        yield Path(tmp)


def test_up_runs_the_system_and_stops_cleanly(root: Path) -> None:
    data = root / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    # left by an earlier run with modes too open: `up` makes them the owner's alone
    (data / "credentials.json").write_text("{}")
    (data / "credentials.json").chmod(0o644)
    key = Fernet.generate_key().decode()
    (data / "secret.key").write_text(key + "\n")
    (data / "secret.key").chmod(0o644)
    port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORCH_DATABASE_URL", "ORCH_REDIS_URL", "ORCH_API_URL", "ORCH_API_KEY")}
    env.update(ORCH_SIMULATOR_URL=f"http://127.0.0.1:{sim_port}", ORCH_DATA_DIR=str(data))
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for("`up` to say it is running", lambda: any("running;" in ln for ln in lines)
                 or up.poll() is not None, timeout=180)
        assert up.poll() is None, "".join(lines)
        creds = json.loads((data / "credentials.json").read_text())
        assert creds["api_url"] == f"http://127.0.0.1:{port}"
        assert {"admin_key", "tenant_key", "tenant", "database_url", "redis_url",
                "simulator_url"} <= creds.keys()
        assert any(creds["tenant_key"] in ln for ln in lines)  # printed once for the user
        # the owner's alone: the data dir (a root run lets PostgreSQL's own group traverse
        # it), the credentials (with the servers' passwords in their URLs) and the secret key
        assert mode(data) in (0o700, 0o710)
        if mode(data) == 0o710:
            assert data.stat().st_gid == pwd.getpwnam("embedded_postgres").pw_gid
        assert mode(data / "credentials.json") == mode(data / "secret.key") == 0o600
        assert make_url(creds["database_url"]).password
        assert creds["redis_url"].startswith("redis://:") and "@127.0.0.1:" in creds["redis_url"]
        # the key kept; the children read it from the data dir they are given
        assert (data / "secret.key").read_text().strip() == key
        assert child_env(str(data), "api")["ORCH_DATA_DIR"] == str(data)
        password = make_url(creds["database_url"]).password
        assert password and not any(password in ln for ln in lines)
        # the API keeps the CPU first; the worker and beat yield it (ORCH_UP_BACKGROUND_NICE)
        assert niceness_of(str(data), "api") == {0}
        assert niceness_of(str(data), "worker") == niceness_of(str(data), "beat") == {10}
        # "running" once every child works: the worker consumes and beat schedules
        assert {p.name for p in (data / "run").iterdir()} == {"worker.ready", "beat.ready"}
        assert httpx.get(f"{env['ORCH_SIMULATOR_URL']}/healthz", timeout=5).status_code == 200

        cli = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "submit", "--kind", "video", "--prompt",
             "a red kite over hills", "--param", "duration_s=4", "--wait", "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )
        assert cli.returncode == 0, cli.stderr
        job = json.loads(cli.stdout)
        assert job["status"] == "succeeded" and job["cost_usd"] > 0

        # the embedded Redis dies: `up` starts it again on its port, and work goes on
        pidfile = data / "redis" / "redis.pid"
        os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        wait_for("`up` to restart Redis",
                 lambda: any("embedded Redis is not running; restarting" in ln for ln in lines),
                 timeout=30)

        with Client(base_url=creds["api_url"], api_key=creds["tenant_key"]) as sdk:
            submitted = sdk.submit(kind="text", input={"prompt": "hello", "max_tokens": 20})
            done = sdk.wait(submitted.id, timeout=120)
            assert done.status == "succeeded"
            (budget,) = [b for b in sdk.budgets() if b.scope == f"tenant:{creds['tenant']}"]
            assert budget.committed_usd > 0
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
        reader.join(timeout=10)
    assert code == 0, "".join(lines)
    assert any("stopped" in ln for ln in lines)
    wait_for("every child to exit", lambda: processes_mentioning(str(data)) == [], timeout=30)
    # every line the API processes logged, uvicorn's own included, went through the
    # redacting JSON handler (ORCH_LOG_FORMAT's default), none through a handler of uvicorn's
    api_logs = sorted((data / "logs").glob("api*.log"))
    logged = [ln for p in api_logs for ln in p.read_text().splitlines() if ln.strip()]
    assert api_logs and any("uvicorn" in ln for ln in logged), logged
    assert all(json.loads(ln)["logger"] for ln in logged), logged


def test_a_sigterm_while_starting_stops_everything_without_printing_keys(root: Path) -> None:
    data = root / "data"
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORCH_DATABASE_URL", "ORCH_REDIS_URL", "ORCH_API_URL", "ORCH_API_KEY")}
    env.update(ORCH_SIMULATOR_URL=f"http://127.0.0.1:{free_port()}", ORCH_DATA_DIR=str(data))
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", "--port", str(free_port())],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the data dir (ORCH_DATA_DIR: --data-dir's default) is made once its handler is set
        wait_for("`up` to begin starting", lambda: (data / "postgres").exists()
                 or up.poll() is not None, timeout=60)
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=180)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, out
    assert "stopped" in out and "admin key:" not in out and "running" not in out, out
    wait_for("every process to exit", lambda: processes_mentioning(str(data)) == [], timeout=30)


def test_a_killed_up_takes_its_children_with_it(root: Path) -> None:
    """SIGKILL gives `up` no chance to stop anything: its children (in sessions of their own)
    end by themselves, so the API's port is free for the next `up`. The embedded servers
    keep their data and are stopped here (the next `up` would reuse them)."""
    data = root / "data"
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORCH_DATABASE_URL", "ORCH_REDIS_URL", "ORCH_API_URL", "ORCH_API_KEY")}
    port = free_port()
    env.update(ORCH_SIMULATOR_URL=f"http://127.0.0.1:{free_port()}", ORCH_DATA_DIR=str(data))
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
    reader.start()

    def children() -> list[int]:
        return [pid for pid in processes_mentioning(str(data))
                if b"orchestrator.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    try:
        wait_for("`up` to say it is running", lambda: any("running;" in ln for ln in lines)
                 or up.poll() is not None, timeout=180)
        assert up.poll() is None, "".join(lines)
        assert len(children()) >= 4  # two API processes, worker, beat, simulator
        up.kill()
        up.wait(timeout=30)
        wait_for("every child to exit", lambda: children() == [], timeout=60)
        assert port_is_free(port)
    finally:
        for pid in processes_mentioning(str(data)):  # the servers, or anything left
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        wait_for("the embedded servers to exit", lambda: processes_mentioning(str(data)) == [],
                 timeout=60)


def test_up_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir",
             str(tmp_path / "data"), "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port {port} is already in use (choose another with --port)"
    )
    assert not (tmp_path / "data").exists()  # refused before starting anything
    assert result.stdout == ""  # nothing was started, so no "stopped" either


def test_up_refuses_a_bad_catalogue_in_one_line_before_starting_anything(
        tmp_path: Path) -> None:
    bad = tmp_path / "backends.yaml"
    bad.write_text(yaml.safe_dump({"backends": [{
        "name": "vid-x", "protocol": "predictions",
        "base_url": "${ORCH_SIMULATOR_URL}/vid-x", "kinds": ["video"], "tier": "draft",
        "price": {"model": "per_second", "usd_per_second": -0.05}}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(tmp_path / "data"),
         "--port", str(free_port())],
        cwd=ROOT, env={**env, "ORCH_BACKENDS_FILE": str(bad)}, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {bad}: backend 'vid-x': price"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "data").exists()  # no server started, no credentials written


def _free_port_pair() -> int:
    """A port p with p and p + 1 both free."""
    for _ in range(50):
        p = free_port()
        if p < 65535 and port_is_free(p + 1):
            return p
    raise AssertionError("no two adjacent free ports")


def _metrics_answer(port: int) -> bool:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and "orchestrator_" in r.text


def test_up_runs_api_processes_on_one_port_and_keeps_it_open_through_a_restart(
        root: Path) -> None:
    """Two API processes (ORCH_UP_API_PROCESSES=2) share the port `up` bound. One killed:
    fresh connections keep being answered by the other while `up` restarts it, and the
    restarted one answers on the same port (the other killed in turn)."""
    data = root / "data"
    port, metrics_port = free_port(), _free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATA_DIR=str(data), ORCH_UP_API_PROCESSES="2",
               ORCH_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
         "--port", str(port), "--no-simulator"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"

    def answered_throughout(seconds: float) -> int:
        """Fresh connections for ``seconds``: each must be answered 200; how many were."""
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            n += 1
        return n

    try:
        wait_for("`up` to say it is running", lambda: any("running;" in ln for ln in lines)
                 or up.poll() is not None, timeout=180)
        assert up.poll() is None, "".join(lines)
        first, second = pids_of(str(data), "api")
        assert niceness_of(str(data), "api") == {0}
        # each process its own /metrics (the recorder is per process): port, port + 1
        wait_for("both /metrics", lambda: _metrics_answer(metrics_port)
                 and _metrics_answer(metrics_port + 1), timeout=30)

        os.kill(first, signal.SIGKILL)
        assert answered_throughout(3.0) > 0
        wait_for("`up` to restart the killed one",
                 lambda: len(pids_of(str(data), "api")) == 2
                 and first not in pids_of(str(data), "api"), timeout=30)
        assert any("exited with -9; restarting" in ln for ln in lines)
        (restarted,) = set(pids_of(str(data), "api")) - {second}
        wait_for("the restarted one's /metrics", lambda: _metrics_answer(metrics_port),
                 timeout=60)

        os.kill(second, signal.SIGKILL)  # now only the restarted one accepts
        assert answered_throughout(2.0) > 0
        assert restarted in pids_of(str(data), "api")
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=120)
        reader.join(timeout=10)
    assert code == 0, "".join(lines)
    wait_for("every child to exit", lambda: processes_mentioning(str(data)) == [], timeout=30)
