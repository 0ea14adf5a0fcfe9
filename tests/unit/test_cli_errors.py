"""Every ``orchestrator`` command ends a failure with one line ``error: <reason>`` on stderr
and a non-zero exit status, never a traceback (docs/api.md, "CLI")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli.main import app
from orchestrator.secrets import new_key

from .sdk_fakes import JsonAnswers

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-never-shown"
# port 1: nothing listens there, so the connection is refused at once
CLOSED_DB = f"postgresql+psycopg://orch:{PASSWORD}@127.0.0.1:1/orch"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """``orchestrator ARGS`` as a user runs it (``main()``), with only the ``ORCH_`` settings
    in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT,
                            env={**base, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_database_commands_say_in_one_line_that_the_database_is_unreachable(
    tmp_path: Path,
) -> None:
    env = {"ORCH_DATABASE_URL": CLOSED_DB, "ORCH_DATA_DIR": str(tmp_path),
           "ORCH_SECRET_KEY": new_key()}
    commands = [
        ["keys", "create", "--tenant", "acme"], ["keys", "list"], ["keys", "revoke", "1"],
        ["budgets", "list"], ["budgets", "set", "--scope", "tenant:acme", "--period", "day",
                              "--limit-usd", "5"],
        ["migrate"], ["secrets", "rotate"],
    ]
    running = [(args, start(args, env)) for args in commands]  # at once: each starts Python
    for args, proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (args, err)
        line = one_line(err)
        assert line.startswith("error: cannot reach the database: "), (args, line)
        assert "127.0.0.1" in line and PASSWORD not in out + err, (args, line)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"ORCH_API_KEY": "k"})


@pytest.mark.parametrize("command", [["jobs", "list"], ["backends"], ["report"],
                                     ["jobs", "watch", "5d8211f4-79ac-4a59-b6f1-4e0a95187c7f"]])
def test_a_malformed_api_url_is_one_line(command: list[str]) -> None:
    # no scheme, or one httpx does not speak, is no API URL either
    for bad in ("http://[::1", "127.0.0.1:8000", "ht!tp://x", "ftp://host/"):
        result = invoke(*command, "--api-url", bad)
        assert result.exit_code == 1, (bad, result.output)
        assert one_line(result.stderr).startswith("error: invalid API URL: "), bad
    # httpx's own reason quotes what it could not read: here, part of the password
    for url in (f"http://me:{PASSWORD}@[::1", f"http://me:{PASSWORD}/x@host:1"):
        result = invoke(*command, "--api-url", url)
        assert result.exit_code == 1, result.output
        assert one_line(result.stderr).startswith("error: invalid API URL: ")
        assert PASSWORD[:6] not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["jobs", "list"], ["backends"], ["report"]])
def test_an_unreachable_api_is_named_by_its_origin_only(command: list[str]) -> None:
    result = invoke(*command, "--api-url", "http://127.0.0.1:1/x?token=t0k")
    assert result.exit_code == 1, result.output
    line = one_line(result.stderr)
    assert "http://127.0.0.1:1" in line, line
    assert "t0k" not in line, line


@pytest.mark.parametrize("command", [["jobs", "list"], ["backends"], ["report"]])
def test_an_api_url_with_credentials_is_refused_never_quoted(command: list[str]) -> None:
    result = invoke(*command, "--api-url", f"http://me:{PASSWORD}@127.0.0.1:1/x")
    assert result.exit_code == 1, result.output
    line = one_line(result.stderr)
    assert line.startswith("error: invalid API URL: it carries a user name or password"), line
    assert PASSWORD not in line, line


@pytest.mark.parametrize("command", [["jobs", "list"], ["backends"], ["report"],
                                     ["webhooks", "deliveries"]])
def test_no_key_anywhere_says_where_one_can_come_from(command: list[str],
                                                      tmp_path: Path) -> None:
    # `up --data-dir X` run elsewhere: no credentials.json where this command looks. Port 1
    # refuses at once, so a request sent anyway would end as "cannot reach", not this line
    env = {"ORCH_DATA_DIR": str(tmp_path), "ORCH_API_URL": "http://127.0.0.1:1",
           "ORCH_API_KEY": None}
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 1, result.output
    assert one_line(result.stderr) == (
        "error: no API key: give --api-key or ORCH_API_KEY, or run `orchestrator up` (no "
        f"credentials.json in {tmp_path}; ORCH_DATA_DIR names the data dir it uses)")


class _Counted(BaseHTTPRequestHandler):
    """An API that answers every request 200 with nothing, counting them."""

    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("command", [["jobs", "list"], ["backends"], ["report"],
                                     ["jobs", "watch", "5d8211f4-79ac-4a59-b6f1-4e0a95187c7f"]])
def test_a_key_no_header_can_carry_is_one_line_that_never_shows_it(
    command: list[str], tmp_path: Path,
) -> None:
    """A key with its newline (read from a file into ORCH_API_KEY): httpx would refuse the
    header at every request, the SDK after its retries, quoting ``Bearer <the key>``."""
    server = HTTPServer(("127.0.0.1", 0), _Counted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Counted.requests = 0
    env = {"ORCH_DATA_DIR": str(tmp_path), "ORCH_API_KEY": "orch_0123abcd_SECRETKEY\n",
           "ORCH_API_URL": f"http://127.0.0.1:{server.server_port}"}
    try:
        result = CliRunner().invoke(app, command, env=env)
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    assert one_line(result.stderr) == (
        "error: the API key (--api-key, ORCH_API_KEY or the credentials file) has a space, "
        "a control character (a newline read with it from a file?) or a non-ASCII character")
    assert "SECRET" not in result.stdout + result.stderr
    assert _Counted.requests == 0


class _ProxyPage(BaseHTTPRequestHandler):
    body = b"<html>upstream says: internal-detail-never-shown</html>"
    content_type = "text/html"

    def do_GET(self) -> None:
        self.send_response(502)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


class _ErrorText(_ProxyPage):
    body = b'{"error": "upstream-words-never-shown"}'
    content_type = "application/json"


@pytest.mark.parametrize("page", [_ProxyPage, _ErrorText])
def test_a_page_that_is_not_an_api_error_is_named_not_shown(
        page: type[BaseHTTPRequestHandler]) -> None:
    server = HTTPServer(("127.0.0.1", 0), page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = invoke("report", "--api-url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    line = one_line(result.stderr)
    assert line == f"error: HTTP 502 from http://127.0.0.1:{server.server_port}, not an API error"


class _OtherJson(JsonAnswers):
    """Not the API: a service that answers any path 200 with JSON of its own (a wrong port,
    a proxy's health page)."""

    body = b'{"status": "ok"}'
    do_POST = JsonAnswers.do_GET


class _OtherReport(_OtherJson):
    body = (b'{"group_by": "backend", "groups": [{"key": "b"}], "jobs": 1, '
            b'"total_micros": 1, "accuracy": []}')


NOT_A_REPORT = "{origin} answered something that is not a cost report (is the API URL right?)"


@pytest.mark.parametrize(("page", "command", "said"), [
    (_OtherJson, ["report"], NOT_A_REPORT), (_OtherJson, ["report", "--json"], NOT_A_REPORT),
    (_OtherReport, ["report"], NOT_A_REPORT),
    # not "no jobs" (status 0): a page has its items
    (_OtherJson, ["jobs", "list"],
     "GET /v1/jobs: unexpected response shape (items: Field required); is the API URL right?"),
    (_OtherJson, ["webhooks", "deliveries"],
     "GET /v1/webhooks/deliveries: unexpected response shape (items: Field required); is the "
     "API URL right?"),
])
def test_an_answer_that_is_not_what_the_api_sends_is_one_line(
    page: type[BaseHTTPRequestHandler], command: list[str], said: str,
) -> None:
    server = HTTPServer(("127.0.0.1", 0), page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_port}"
    try:
        result = invoke(*command, "--api-url", origin)
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert one_line(result.stderr) == "error: " + said.format(origin=origin)


def test_usage_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    env = {"ORCH_DATA_DIR": str(tmp_path), "ORCH_API_URL": "http://127.0.0.1:9",
           "ORCH_DATABASE_URL": CLOSED_DB}
    expected = {
        ("keys", "create"): "error: Missing option '--tenant'.",
        ("bogus",): "error: No such command 'bogus'.",
        ("keys", "revoke", "abc"): "error: Invalid value for 'ID': ",
        ("budgets", "set", "--scope", "global", "--period", "day", "--limit-usd", "ten"):
            "error: Invalid value for '--limit-usd': ",
        ("jobs", "list", "--no-such-option"): "error: No such option: --no-such-option",
        # values the server would refuse: found before any request (the API URL here has
        # nothing listening, which would be status 1)
        ("report", "--group-by", "nope"): "error: Invalid value for '--group-by': 'nope' is "
                                          "not one of backend, tier, project, day, "
                                          "tenant",
        ("jobs", "list", "--status", "bogus"):
            "error: Invalid value for '--status': 'bogus' is not one of queued, running, "
            "succeeded, failed, cancelled",
        ("jobs", "list", "--limit", "0"): "error: Invalid value for '--limit': ",
        ("jobs", "get", "not-a-uuid"):
            "error: Invalid value for 'ID': 'not-a-uuid' is not a job id (a UUID)",
        ("jobs", "cancel", "42"): "error: Invalid value for 'ID': '42' is not a job id",
        ("jobs", "watch", "j-1"): "error: Invalid value for 'ID': 'j-1' is not a job id",
        ("jobs", "result", "j-1"): "error: Invalid value for 'ID': 'j-1' is not a job id",
        ("submit", "--kind", "movie", "--prompt", "x"):
            "error: Invalid value for '--kind': 'movie' is not one of video, image, text",
        ("submit", "--kind", "text", "--prompt", "x", "--tier", "gold"):
            "error: Invalid value for '--tier': 'gold' is not one of draft, standard, premium",
        ("submit", "--kind", "text", "--prompt", "x", "--strategy", "cheap"):
            "error: Invalid value for '--strategy': 'cheap' is not one of cheapest, fastest, "
            "balanced",
        ("report", "--from", "yesterday"):
            "error: Invalid value for '--from': 'yesterday' is not an ISO 8601 time",
        ("report", "--from", "2030-01-01", "--to", "2020-01-01"):
            "error: Invalid value for '--to': must be after --from",
        ("report", "--from", "2030-01-01T02:00:00+02:00", "--to", "2030-01-01"):
            "error: Invalid value for '--to': must be after --from",  # the same instant
        ("report", "--tenant", "a/b"): "error: Invalid value for '--tenant': invalid tenant",
        ("keys", "list", "--tenant", "a b"): "error: Invalid value for '--tenant': invalid tenant",
        ("keys", "create", "--tenant", "a/b"):
            "error: Invalid value for '--tenant': invalid tenant",
        ("submit", "--kind", "text", "--prompt", "x", "--max-cost-usd", "0.0000001"):
            "error: Invalid value for '--max-cost-usd': must have at most 6 decimal places",
        ("submit", "--kind", "text", "--prompt", "x", "--max-cost-usd", "nan"):
            "error: Invalid value for '--max-cost-usd': must be a finite number",
        ("submit", "--kind", "text", "--prompt", "x", "--max-cost-usd", "1e400"):
            "error: Invalid value for '--max-cost-usd': must be a finite number",
        ("submit", "--kind", "text", "--prompt", "x", "--max-cost-usd", "-1"):
            "error: Invalid value for '--max-cost-usd': must not be negative",
        # a NaN deadline is never reached: the wait would never end (checked before the
        # job is submitted)
        ("submit", "--kind", "text", "--prompt", "x", "--wait", "--timeout", "nan"):
            "error: Invalid value for '--timeout': nan is not a number of seconds",
        ("submit", "--kind", "text", "--prompt", "x", "--wait", "--timeout", "-5"):
            "error: Invalid value for '--timeout': -5.0 is not a number of seconds",
        ("jobs", "watch", "00000000-0000-0000-0000-000000000001", "--timeout", "inf"):
            "error: Invalid value for '--timeout': inf is not a number of seconds",
        ("budgets", "set", "--scope", "global", "--period", "day", "--limit-usd", "1.0000005"):
            "error: --limit-usd must have at most 6 decimal places (amounts are kept in whole "
            "micro-dollars)",
    }
    running = [(args, start(list(args), env)) for args in expected]
    for args, proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        assert out == "" and one_line(err).startswith(expected[args]), (args, err)


def test_help_is_still_the_full_help() -> None:
    """--help: the help on stdout, status 0; no arguments (of the command or of a group):
    the help too, with status 2, as before."""
    running = [(args, start(args, {})) for args in
               (["--help"], ["keys", "create", "--help"], [], ["keys"])]
    for args, proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == (0 if "--help" in args else 2), (args, err)
        assert "Usage:" in out and len(out.splitlines()) > 5 and err == "", (args, out, err)
        assert ("--tenant" if "create" in args else "revoke") in out, (args, out)


def test_a_failing_command_still_exits_1_and_a_working_one_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from orchestrator.cli import main

    for argv, status in ((["jobs", "list", "--api-url", "http://[::1"], 1),
                         (["secrets", "new-key"], 0)):
        monkeypatch.setattr(sys, "argv", ["orchestrator", *argv])
        with pytest.raises(SystemExit) as exited:
            main()
        assert (exited.value.code or 0) == status, capsys.readouterr()
    out, err = capsys.readouterr()
    assert err.startswith("error: invalid API URL") and len(out.strip()) > 20


def test_an_unexpected_error_is_a_plain_traceback_not_a_rich_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A bug is not a failure with a reason: its traceback is Python's own, short and plain
    (typer's pretty one draws boxes and may show locals, such as a key)."""
    import orchestrator.secrets
    from orchestrator.cli import main

    def broken() -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(orchestrator.secrets, "new_key", broken)
    monkeypatch.setattr(sys, "argv", ["orchestrator", "secrets", "new-key"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer installs its own
    with pytest.raises(RuntimeError) as raised:
        main()
    sys.excepthook(RuntimeError, raised.value, raised.value.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "╭" not in err, err
    assert err.strip().endswith("RuntimeError: a bug")


# Blocks the import of typer (the first module ``orchestrator.cli.main`` loads that is not
# the standard library's) until a signal comes, after saying so: a Ctrl-C that lands while
# the command's modules load, which take a second or so. SIGINT raises KeyboardInterrupt as
# in a terminal: a test run started in the background (CI's) ignores SIGINT, and its
# children inherit that, so Python would not install its handler.
IMPORT_BLOCKED = """
import importlib.abc, runpy, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            print("loading", flush=True)
            time.sleep(60)
        return None
sys.meta_path.insert(0, Block())
runpy.run_module("orchestrator.cli", run_name="__main__")
"""


def test_ctrl_c_while_the_command_loads_ends_it_with_130_and_no_traceback() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    proc = subprocess.Popen([sys.executable, "-c", IMPORT_BLOCKED, "jobs", "list"], cwd=ROOT,
                            env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "loading\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and (out, err) == ("", ""), (proc.returncode, out, err)
