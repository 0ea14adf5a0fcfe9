"""loadtests/locustfile.py: what a user's request counts as in Locust's stats, against a local
fake of the API. Locust monkey-patches the process it is imported in (gevent), so the user
runs in a subprocess of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from .sdk_fakes import JsonAnswers

ROOT = Path(__file__).resolve().parents[2]

# One call of a user's task against ``url``; prints the stats it left.
_RUN = """
import locust  # first, as the locust command does: it monkey-patches before ssl is imported
import json, sys
sys.path.insert(0, "loadtests")
import locustfile as lf
from locust.env import Environment

cls = getattr(lf, sys.argv[2])
cls.host = sys.argv[1]  # what the runner sets from --host
env = Environment(user_classes=[cls], host=sys.argv[1])
env.create_local_runner()
user = cls(env)
user.tenant, user.auth = "lt-test-00", {"Authorization": "Bearer test"}
raised = None
try:
    getattr(user, sys.argv[3])()
except Exception as exc:
    raised = type(exc).__name__
    # what Locust's TaskSet.run does with an exception out of a task
    env.events.user_error.fire(user_instance=user, exception=exc, tb=exc.__traceback__)
total, summary = env.stats.total, lf.summary(env)
print(json.dumps({"requests": total.num_requests, "failures": total.num_failures,
                  "raised": raised,
                  "errors": [str(e.error) for e in env.stats.errors.values()],
                  "summary": {k: summary.get(k) for k in
                              ("requests", "failures", "user_errors", "user_error_messages")}}))
"""


class _Api(JsonAnswers):
    """Answers every GET 200 with ``body``: JSON of the right outer shape whose items lack
    fields the checks read."""

    body: bytes = b""
    url: str = ""


@pytest.fixture
def api() -> Iterator[type[_Api]]:
    handler: type[_Api] = type("Api", (_Api,), {})  # its own body and url
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _run_task(api: type[_Api], tmp_path: Path, user: str, task: str) -> dict[str, object]:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"admin_key": "admin", "simulator_url": api.url}))
    env = {"LOAD_SHAPE": "none", "LOADTEST_CREDENTIALS": str(creds),
           "LOADTEST_OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", _RUN, api.url, user, task],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_an_answer_a_check_cannot_read_is_a_failed_request(
        api: type[_Api], tmp_path: Path) -> None:
    # a page of jobs whose job has neither status nor created_at: the list's check reads both
    api.body = json.dumps({"items": [{"id": "j1"}], "next_cursor": None}).encode()
    got = _run_task(api, tmp_path, "Watcher", "list_jobs")
    assert (got["requests"], got["failures"], got["raised"]) == (1, 1, None), got
    errors = got["errors"]
    assert isinstance(errors, list) and any("KeyError" in e for e in errors), got



def test_an_error_in_a_users_task_reaches_the_summary(api: type[_Api], tmp_path: Path) -> None:
    # a canceller's list of queued jobs without "items": its task stops on a KeyError after a
    # request that succeeded; the run's figures must not read as if nothing went wrong
    api.body = json.dumps({"jobs": []}).encode()
    got = _run_task(api, tmp_path, "Canceller", "cancel")
    assert (got["requests"], got["failures"], got["raised"]) == (1, 0, "KeyError"), got
    summary = got["summary"]
    assert isinstance(summary, dict)
    assert summary["user_errors"] == 1, summary
    (message,) = summary["user_error_messages"]
    assert message.startswith("x1 'items' at locustfile.py:"), message
    assert message.endswith(" in cancel"), message
