"""The embedded servers on a shared host: PostgreSQL and Redis each want a password that is
generated once, kept 0600 in the data dir and carried by the URL, and listen on 127.0.0.1
only. A data dir from before passwords is given one on its next start."""

from __future__ import annotations

import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from orchestrator.embedded import EmbeddedPostgres, EmbeddedRedis
from orchestrator.embedded.redis import redis_server_binary

from .host_support import listening


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    # not under pytest's tmp_path: any pytest session on the machine takes the group and
    # other bits off /tmp/pytest-of-<user> as it starts, and the PostgreSQL of a root run
    # (its own system user) must traverse down to its data
    with tempfile.TemporaryDirectory(prefix="orch-host-") as tmp:
        yield Path(tmp)


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pg_refuses(pg: EmbeddedPostgres, password: str | None) -> str:
    """The server's refusal of a connection as ``postgres`` with ``password``."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", password=password,
                        dbname="postgres", connect_timeout=5).close()
    return str(refused.value)


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])


def test_postgres_wants_its_password_and_listens_on_loopback_only(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir / "pg", durable=False)
    url = pg.start()
    try:
        assert "no password supplied" in pg_refuses(pg, None)
        assert "password authentication failed" in pg_refuses(pg, "guess")
        password = (data_dir / "pg" / "postgres.password").read_text().strip()
        assert mode(data_dir / "pg" / "postgres.password") == 0o600
        assert make_url(url).password == password and len(password) >= 40
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
            rules = conn.execute("SELECT type, address, auth_method FROM pg_hba_file_rules"
                                 ).fetchall()
        assert rules and {method for _, _, method in rules} == {"scram-sha-256"}
        assert {addr for _, addr, _ in rules} <= {None, "127.0.0.1", "::1"}
        assert listening(postmaster_pid(pg)) == {("127.0.0.1", pg.port)}
        pg.stop()
        again = EmbeddedPostgres(data_dir / "pg", durable=False)
        assert make_url(again.start()).password == password  # a restart reuses it
    finally:
        EmbeddedPostgres(data_dir / "pg").stop()


def test_the_embedded_postgres_holds_none_of_the_orchestrators_settings(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`orchestrator backup` starts the embedded server with the backup and secret keys in
    its environment: the server (whose environment its own user reads in /proc) held them."""
    monkeypatch.setenv("ORCH_BACKUP_KEY", "backup-key-not-for-postgres")
    monkeypatch.setenv("ORCH_SECRET_KEY", "secret-key-not-for-postgres")
    monkeypatch.setenv("NOT_ORCH_KEPT", "1")
    pg = EmbeddedPostgres(data_dir / "pg", durable=False)
    pg.start()
    try:
        environ = Path(f"/proc/{postmaster_pid(pg)}/environ").read_bytes().split(b"\0")
        assert b"NOT_ORCH_KEPT=1" in environ  # the rest is passed on
        assert not [v for v in environ if v.startswith(b"ORCH_")]
    finally:
        pg.stop()


def test_a_postgres_data_dir_from_before_passwords_is_given_one(data_dir: Path) -> None:
    """As main made it: trust for everyone, no password file. The next start sets a password
    over the trust it finds, then puts SCRAM in force."""
    pg = EmbeddedPostgres(data_dir / "pg", durable=False)
    pg.start()
    pg.stop()
    (pg.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 "
                                           "trust\n")
    (data_dir / "pg" / "postgres.password").unlink()
    old = EmbeddedPostgres(data_dir / "pg", durable=False)
    try:
        url = old.start()
        new_password = (data_dir / "pg" / "postgres.password").read_text().strip()
        assert make_url(url).password == new_password != pg.password
        assert "no password supplied" in pg_refuses(old, None)
        assert "password authentication failed" in pg_refuses(old, pg.password)
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        old.stop()


def redis_says(port: int, command: bytes) -> bytes:
    """The first line of the server's answer to ``command``, sent before any AUTH."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command + b"\r\n")
        return s.makefile("rb").readline().strip()


def test_redis_wants_its_password_and_listens_on_loopback_only(data_dir: Path) -> None:
    rd = EmbeddedRedis(data_dir, durable=False)
    url = rd.start()
    try:
        assert redis_says(rd.port or 0, b"PING").startswith(b"-NOAUTH")
        assert redis_says(rd.port or 0, b"AUTH guess").startswith(b"-WRONGPASS")
        password = (data_dir / "redis" / "redis.password").read_text().strip()
        assert url == f"redis://:{password}@127.0.0.1:{rd.port}/0"
        for private in ("redis.password", "redis.conf"):
            assert mode(data_dir / "redis" / private) == 0o600
        assert mode(data_dir / "redis") == 0o700
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.ping()
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        pid = int((data_dir / "redis" / "redis.pid").read_text())
        assert listening(pid) == {("127.0.0.1", rd.port)}
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        rd.stop()
        again = EmbeddedRedis(data_dir, durable=False).start()
        assert again.startswith(f"redis://:{password}@")  # a restart reuses the password
    finally:
        EmbeddedRedis(data_dir).stop()


def test_a_redis_running_without_a_password_is_replaced(data_dir: Path) -> None:
    """Our data dir's server (its pid file is there) started as main started it, without a
    password: the next start stops it and starts one that wants the password."""
    rd_dir = data_dir / "redis"
    rd_dir.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (rd_dir / "redis.port").write_text(str(port))
    subprocess.run([str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(port),
                    "--dir", str(rd_dir), "--daemonize", "yes", "--pidfile",
                    str(rd_dir / "redis.pid"), "--save", ""], check=True, timeout=30)
    pidfile = rd_dir / "redis.pid"
    wait_until("the old server's pid file", lambda: pidfile.exists()
               and pidfile.read_text().strip() != "")
    old_pid = int(pidfile.read_text())
    assert redis_says(port, b"PING") == b"+PONG"  # no password asked
    rd = EmbeddedRedis(data_dir, durable=False)
    try:
        url = rd.start()
        assert redis_says(rd.port or 0, b"PING").startswith(b"-NOAUTH")
        assert redis.Redis.from_url(url).ping()
        assert int(pidfile.read_text()) != old_pid
    finally:
        rd.stop()
