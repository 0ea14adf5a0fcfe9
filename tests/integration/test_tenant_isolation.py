"""Tenant isolation over real HTTP, as an auditor tries it: another tenant's ids on every job
route answer exactly as a missing one does, an ``Idempotency-Key`` is the tenant's own, and an
open event stream ends once its key is revoked (its reconnection is then 401). Real API,
PostgreSQL and Redis."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

import httpx
import httpx_sse
import pytest

from orchestrator.api import RunningApi

from .api_fixture import PING_S, Api, api_fixture, pinging_fixture, video  # noqa: F401


def _key_id(api: Api, key: str) -> int:
    r = api.client(key).get("/v1/whoami")
    r.raise_for_status()
    key_id: int = r.json()["key_id"]
    return key_id


def _read_until_end(url: str, key: str, path: str, out: queue.Queue[Any]) -> None:
    """Read one stream to its end; put "open" once it is, then "ended" or the error."""
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=httpx.Timeout(10.0, read=30.0)) as client, \
                httpx_sse.connect_sse(client, "GET", path) as source:
            out.put(source.response.status_code)
            for _ in source.iter_sse():
                pass
        out.put("ended")
    except Exception as exc:  # the test reads it from the queue
        out.put(exc)


@pytest.mark.parametrize("via", ["another process", "the streaming process"])
def test_an_open_stream_ends_once_its_key_is_revoked(api: Api, pinging: RunningApi,
                                                      via: str) -> None:
    key = api.new_key("acme")
    job = api.client(key).post("/v1/jobs", json=video())  # no worker: it stays queued
    assert job.status_code == 202, job.text
    paths = ("/v1/events", f"/v1/jobs/{job.json()['id']}/events")
    outs: list[queue.Queue[Any]] = [queue.Queue() for _ in paths]
    for path, out in zip(paths, outs, strict=True):
        threading.Thread(target=_read_until_end, args=(pinging.url, key, path, out),
                         daemon=True).start()
        assert out.get(timeout=15) == 200
    # both streams stay open while the key lives (a queued job's stream does not end)
    time.sleep(5 * PING_S)
    assert all(out.empty() for out in outs)

    # revoked through another API process (this one learns it from the database), or
    # through this one (which knows at once)
    url = api.url if via == "another process" else pinging.url
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api.admin_key}"},
                      timeout=10.0) as admin:
        assert admin.delete(f"/v1/keys/{_key_id(api, key)}").status_code == 204
    for out in outs:
        assert out.get(timeout=10) == "ended"
    for path in paths:  # what an EventSource or the SDK does next: reconnect, refused
        with httpx.Client(base_url=pinging.url, timeout=10.0,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            assert client.get(path).status_code == 401


def test_another_tenants_job_answers_as_a_missing_one(api: Api) -> None:
    theirs = api.tenant("globex").post("/v1/jobs", json=video()).json()["id"]
    missing = str(uuid.uuid4())
    acme = api.tenant("acme")
    for method, suffix in (("GET", ""), ("GET", "/result"), ("GET", "/result/files/0"),
                           ("POST", "/cancel"), ("GET", "/events")):
        answers = [acme.request(method, f"/v1/jobs/{job_id}{suffix}")
                   for job_id in (theirs, missing)]
        foreign, absent = answers
        assert foreign.status_code == absent.status_code == 404, (suffix, foreign.text)
        assert foreign.text.replace(theirs, "ID") == absent.text.replace(missing, "ID")
        drop = {"date", "content-length"}
        assert ({k: v for k, v in foreign.headers.items() if k not in drop}
                == {k: v for k, v in absent.headers.items() if k not in drop})
    # and the job is untouched: acme's cancel did not cancel it
    assert api.tenant("globex").get(f"/v1/jobs/{theirs}").json()["status"] == "queued"


def test_one_idempotency_key_makes_one_job_per_tenant(api: Api) -> None:
    headers = {"Idempotency-Key": "shared-key-1"}
    acme = api.tenant("acme").post("/v1/jobs", json=video(), headers=headers)
    globex = api.tenant("globex").post("/v1/jobs", json=video(), headers=headers)
    assert acme.status_code == globex.status_code == 202
    assert "Idempotent-Replayed" not in globex.headers
    assert acme.json()["id"] != globex.json()["id"]
    # another body under the same key is globex's own business, not a conflict with acme's
    other = api.tenant("globex").post("/v1/jobs", json=video(duration=5), headers=headers)
    assert other.status_code == 409
    replay = api.tenant("acme").post("/v1/jobs", json=video(), headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == acme.json()["id"]


JSON = {"Accept": "application/json"}


def test_the_feed_shows_nothing_of_other_tenants_activity(api: Api) -> None:
    """The feed's place inside counts every tenant's transactions and events: shown, the gap
    between two of acme's cursors was how much globex did meanwhile, and a made-up cursor
    answered by where the global counter stood. A client sees acme's own event ids only."""
    acme, globex = api.tenant("acme"), api.tenant("globex")
    empty = acme.get("/v1/events", headers=JSON).json()
    assert empty == {"items": [], "next_cursor": "0"}  # nothing yet: the start
    acme.post("/v1/jobs", json=video()).raise_for_status()
    for _ in range(3):
        globex.post("/v1/jobs", json=video()).raise_for_status()
    acme.post("/v1/jobs", json=video()).raise_for_status()
    page = acme.get("/v1/events", params={"since": "0"}, headers=JSON).json()
    ids = [e["id"] for e in page["items"]]
    assert len(ids) == 2 and [e["cursor"] for e in page["items"]] == ids
    assert page["next_cursor"] == ids[-1]
    assert acme.get("/v1/events", headers=JSON).json()["next_cursor"] == ids[-1]
    with httpx_sse.connect_sse(acme, "GET", "/v1/events") as source:
        assert next(source.iter_sse()).id == ids[-1]  # a stream from now starts at it too
    # made-up places (the <txid>-<position> of earlier releases) answer alike, wherever
    # the global counters stand: from the start of acme's feed
    answers = [acme.get("/v1/events", params={"since": since}, headers=JSON)
               for since in ("1-0", "999999999999-0")]
    assert answers[0].json() == answers[1].json() == page
    # another tenant's event id is no place in acme's feed: as a deleted one, from the start
    theirs = globex.get("/v1/events", params={"since": "0"}, headers=JSON).json()["items"]
    foreign = acme.get("/v1/events", params={"since": theirs[-1]["id"]}, headers=JSON).json()
    assert [e["id"] for e in foreign["items"]] == ids


def test_the_apis_metrics_name_no_tenant_project_or_job(api: Api) -> None:
    """``/metrics`` takes no key: what it shows is totals by kind, tier, backend and route
    template, never whose."""
    acme = api.tenant("acme")
    job = acme.post("/v1/jobs", json=video(metadata={"project": "skunkworks"})).json()["id"]
    api.budget("tenant:globex", 0)
    assert api.tenant("globex").post("/v1/jobs", json=video()).status_code == 402
    assert api.tenant("globex").get(f"/v1/jobs/{job}").status_code == 404
    with httpx.Client(base_url=api.url, timeout=10.0) as anonymous:
        metrics = anonymous.get("/metrics")
    assert metrics.status_code == 200
    assert "orchestrator_jobs_submitted_total" in metrics.text
    assert 'route="/v1/jobs/{job_id}"' in metrics.text
    for secret in ("acme", "globex", "skunkworks", job, "tenant:"):
        assert secret not in metrics.text, secret
