"""The CLI client commands (``register``ed on a Typer app) against the real API over HTTP, and
``keys create`` against the real database."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from orchestrator.cli.client import parse_params, parse_value, usd
from orchestrator.client import Client
from orchestrator.store import jobs as repo

from .api_fixture import Api, api_fixture  # noqa: F401


def run(app: typer.Typer, api: Api, *args: str, key: str | None = "acme") -> Result:
    opts = ["--api-url", api.url] if api else []
    if key:
        opts += ["--api-key", api.keys.get(key, key)]
    return CliRunner().invoke(app, [*args, *opts])


VIDEO = ("submit", "--kind", "video", "--prompt", "a lighthouse at dusk", "--tier", "draft",
         "--param", "duration_s=8", "--param", "resolution=720p")


def one_error_line(result: Result, status: int = 1) -> str:
    assert result.exit_code == status, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_param_values_are_parsed_where_unambiguous() -> None:
    assert parse_params(["duration_s=8", "seed=-3", "guidance=7.5", "loop=true", "hd=false",
                         "style=null", "tags=[\"a\",\"b\"]", "extra={\"k\": 1}",
                         "resolution=720p", "size=1024x1024", "label=\"8\"", "note=a=b",
                         "empty="]) == {
        "duration_s": 8, "seed": -3, "guidance": 7.5, "loop": True, "hd": False,
        "style": None, "tags": ["a", "b"], "extra": {"k": 1}, "resolution": "720p",
        "size": "1024x1024", "label": "8", "note": "a=b", "empty": ""}
    assert parse_value("nan") == "nan" and parse_value("1e3") == 1000.0
    # no JSON number, so the string written: a code with its leading zeros is never 7
    for written in ("007", "01234", "+5", ".5", "1.", "-", "1e", "0x10", "1_000", "1e400"):
        assert parse_value(written) == written, written
    assert (parse_value("0"), parse_value("-0.5"), parse_value("2E-3")) == (0, -0.5, 0.002)
    assert parse_value('{"a": NaN}') == '{"a": NaN}'  # no JSON either
    assert parse_value("{not json") == "{not json"
    for bad in (["novalue"], ["=3"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_params(bad)
    assert (usd(None), usd(1.2), usd(0.0042), usd(1234.5)) == ("-", "$1.20", "$0.0042",
                                                                "$1,234.50")
    assert usd(0.000008) == "$0.000008"  # a short text job's cost, not $0.00


def test_submit_human_and_json_with_typed_params(cli: typer.Typer, api: Api) -> None:
    human = run(cli, api, *VIDEO, "--project", "p1")
    assert human.exit_code == 0, human.output
    assert "status     queued" in human.stdout and "vid-cheap" not in human.stderr
    # the worst case over its candidates: 8 s x $0.07 x 1.5 (720p) on vid-mid
    assert "estimate   $0.84" in human.stdout
    job_id = human.stdout.split()[1]
    with api.rig.engine.connect() as conn:
        row = repo.get_job(conn, uuid.UUID(job_id))
    assert row is not None and row.spec["input"]["duration_s"] == 8
    assert row.spec["metadata"] == {"project": "p1"}

    as_json = run(cli, api, *VIDEO, "--json")
    assert as_json.exit_code == 0, as_json.output
    job = json.loads(as_json.stdout)
    assert job["status"] == "queued" and job["estimated_cost_usd"] == 0.84
    assert job["route"]["candidates"][0]["backend"] == "vid-cheap" and job["id"] != job_id


def test_submit_refused_for_want_of_a_backend_says_why_each_was_left_out(
        cli: typer.Typer, api: Api) -> None:
    line = one_error_line(run(cli, api, *VIDEO, "--backend", "vid-nope"))
    assert line.startswith("error: the job is pinned to 'vid-nope': no backend 'vid-nope' "
                           "in the catalogue ("), line
    assert "vid-cheap: job is pinned to vid-nope" in line
    premium = one_error_line(run(cli, api, *VIDEO, "--tier", "premium"))
    assert premium.startswith("error: no backend can run this job (vid-cheap: tier draft is "
                              "below premium; "), premium


def test_submit_with_an_idempotency_key_returns_the_same_job(cli: typer.Typer,
                                                            api: Api) -> None:
    first = json.loads(run(cli, api, *VIDEO, "--idempotency-key", "k-1", "--json").stdout)
    again = json.loads(run(cli, api, *VIDEO, "--idempotency-key", "k-1", "--json").stdout)
    assert first["id"] == again["id"]
    listed = json.loads(run(cli, api, "jobs", "list", "--json").stdout)
    assert [j["id"] for j in listed["items"]] == [first["id"]]


def test_jobs_get_list_cancel(cli: typer.Typer, api: Api) -> None:
    ids = [json.loads(run(cli, api, *VIDEO, "--json").stdout)["id"] for _ in range(3)]

    got = run(cli, api, "jobs", "get", ids[0])
    assert got.exit_code == 0 and f"job        {ids[0]}" in got.stdout
    assert json.loads(run(cli, api, "jobs", "get", ids[0], "--json").stdout)["id"] == ids[0]

    table = run(cli, api, "jobs", "list", "--limit", "2")
    assert table.exit_code == 0, table.output
    rows = table.stdout.strip().splitlines()
    assert rows[0].split()[:2] == ["id", "status"]
    assert [r.split()[0] for r in rows[1:3]] == [ids[2], ids[1]]
    assert rows[3].startswith("more: --cursor ")
    rest = run(cli, api, "jobs", "list", "--limit", "2", "--cursor", rows[3].split()[-1],
               "--json")
    assert [j["id"] for j in json.loads(rest.stdout)["items"]] == [ids[0]]

    cancelled = run(cli, api, "jobs", "cancel", ids[1])
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"job {ids[1]} cancelled"
    only = json.loads(run(cli, api, "jobs", "list", "--status", "cancelled", "--json").stdout)
    assert [j["id"] for j in only["items"]] == [ids[1]]
    assert run(cli, api, "jobs", "list", "--status", "failed").stdout.strip() == "no jobs"


def test_backends_human_and_json(cli: typer.Typer, api: Api) -> None:
    human = run(cli, api, "backends")
    assert human.exit_code == 0, human.output
    lines = human.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["name", "kinds", "tier", "breaker"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["txt-one", "vid-cheap", "vid-mid"]
    assert all(line.split()[3] == "closed" for line in lines[1:])
    data = json.loads(run(cli, api, "backends", "--json").stdout)
    by_name = {b["name"]: b for b in data["backends"]}
    assert by_name["vid-mid"]["tier"] == "standard"
    assert by_name["vid-mid"]["breaker"]["state"] == "closed"


def test_failures_exit_non_zero_with_one_line(cli: typer.Typer, api: Api) -> None:
    api.budget("tenant:acme", 200_000)  # $0.20 < the $0.84 this job may cost
    line = one_error_line(run(cli, api, *VIDEO))
    [budget] = Client(api.url, api.keys["acme"]).budgets()
    assert budget.period_start is not None
    month = budget.period_start.date().isoformat()
    assert line == (f"error: budget tenant:acme (month from {month}) has $0.20 remaining; "
                    "this job needs up to $0.84")

    line = one_error_line(run(cli, api, "submit", "--kind", "video", "--prompt", "x"))
    assert "duration_s" in line
    missing = str(uuid.uuid4())
    assert one_error_line(run(cli, api, "jobs", "get", missing)) == f"error: no job {missing}"
    assert "key" in one_error_line(run(cli, api, "backends", key="orch_00000000_" + "x" * 40))
    line = one_error_line(run(cli, api, "submit", "--kind", "text", "--prompt", "x",
                              "--param", "oops"), status=2)  # a usage error, as click's
    assert line == "error: --param 'oops': expected key=value"
    no_server = CliRunner().invoke(cli, ["backends", "--api-url", "http://127.0.0.1:9",
                                         "--api-key", api.keys["acme"]])
    assert "cannot reach http://127.0.0.1:9" in one_error_line(no_server)


def test_values_the_api_would_refuse_are_usage_errors_before_any_request(
    cli: typer.Typer, api: Api, capsys: pytest.CaptureFixture[str],
) -> None:
    """Status 2 with the usage line, as ``orchestrator`` runs (``main.run``), and nothing
    reaches the API: a request would have been a 422 (status 1) and, for submit, a job."""
    from orchestrator.cli.main import run as orchestrator

    def usage_error(*args: str) -> str:
        status = orchestrator([*args, "--api-url", api.url, "--api-key", api.keys["acme"]])
        out, err = capsys.readouterr()
        assert status == 2 and out == "", (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: Invalid value for "), err
        return lines[0]

    assert usage_error("report", "--group-by", "nope") == (
        "error: Invalid value for '--group-by': 'nope' is not one of backend, tier, project, "
        "day, tenant")
    assert usage_error("jobs", "list", "--status", "bogus").endswith(
        "'bogus' is not one of queued, running, succeeded, failed, cancelled")
    for command in ("get", "cancel", "watch", "result"):
        assert usage_error("jobs", command, "not-a-uuid") == (
            "error: Invalid value for 'ID': 'not-a-uuid' is not a job id (a UUID)")
    for args in (("--kind", "movie"), ("--kind", "text", "--tier", "gold"),
                 ("--kind", "text", "--strategy", "cheap")):
        usage_error("submit", "--prompt", "x", *args)
    usage_error("report", "--from", "yesterday")
    with api.rig.engine.connect() as conn:
        assert repo.list_jobs(conn, "acme", limit=5) == []
    # the same values, well formed, are the server's to judge (an id in canonical form)
    missing = uuid.uuid4()
    line = one_error_line(run(cli, api, "jobs", "get", missing.hex))
    assert line == f"error: no job {missing}"
    report = run(cli, api, "report", "--from", "20250501", "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["from"] == "2025-05-01T00:00:00+00:00"  # not a Unix time


def test_wait_times_out_on_a_job_nobody_runs(cli: typer.Typer, api: Api) -> None:
    line = one_error_line(run(cli, api, *VIDEO, "--wait", "--timeout", "0.3"))
    assert line.startswith("error: job ") and "still queued after 0.3s" in line
    # --json: the job, which runs on, on stdout all the same (a script learns its id)
    timed_out = run(cli, api, *VIDEO, "--wait", "--timeout", "0.3", "--json")
    line = one_error_line(timed_out)
    job = json.loads(timed_out.stdout)
    assert job["status"] == "queued" and job["id"] in line


def test_submit_wait_prints_the_finished_job(cli: typer.Typer, api: Api) -> None:
    api.rig.start_worker(concurrency=2)
    done = run(cli, api, "submit", "--kind", "text", "--prompt", "hello", "--param",
               "max_tokens=16", "--wait", "--timeout", "60", "--json")
    assert done.exit_code == 0, done.output
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["backend"] == "txt-one" and job["cost_usd"] > 0


def test_api_url_and_key_come_from_env_or_up_credentials(
    cli: typer.Typer, api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    creds: dict[str, Any] = {"api_url": api.url, "tenant_key": api.keys["globex"]}
    (data_dir / "credentials.json").write_text(json.dumps(creds))
    monkeypatch.setenv("ORCH_DATA_DIR", str(data_dir))
    runner = CliRunner()
    made = json.loads(runner.invoke(cli, [*VIDEO, "--json"]).stdout)
    assert json.loads(runner.invoke(cli, ["jobs", "get", made["id"], "--json"]).stdout)["id"] \
        == made["id"]
    with api.rig.engine.connect() as conn:
        row = repo.get_job(conn, uuid.UUID(made["id"]))
    assert row is not None and row.tenant == "globex"

    monkeypatch.setenv("ORCH_API_URL", api.url)
    monkeypatch.setenv("ORCH_API_KEY", api.keys["acme"])
    listed = json.loads(runner.invoke(cli, ["jobs", "list", "--json"]).stdout)
    assert listed["items"] == []  # acme's view: globex's job is not visible


def test_keys_create_writes_a_working_key_to_the_database(
    cli: typer.Typer, api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", database_url)
    made = CliRunner().invoke(cli, ["keys", "create", "--tenant", "initech"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("orch_") and "shown once" in made.stderr
    assert run(cli, api, "jobs", "list", key=key).stdout.strip() == "no jobs"
    forbidden = run(cli, api, "submit", "--kind", "text", "--prompt", "x", key=key)
    assert forbidden.exit_code == 0  # a tenant key may submit

    admin = CliRunner().invoke(cli, ["keys", "create", "--tenant", "ops2", "--admin"])
    assert admin.exit_code == 0 and admin.stdout.strip() != key
    bad = CliRunner().invoke(cli, ["keys", "create", "--tenant", "no spaces"])
    # a usage error (status 2; one line as `orchestrator` prints it: test_cli_errors.py)
    assert bad.exit_code == 2 and "invalid tenant 'no spaces'" in bad.output
