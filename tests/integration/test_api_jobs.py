"""POST/GET /v1/jobs, cancel, quotes: over real HTTP against the real stack (no worker
running: jobs stay queued unless a test cancels them)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from sqlalchemy import text

from orchestrator.domain.outcomes import Outcome

from .api_fixture import Api, api_fixture, video  # noqa: F401

NO_JOB = "00000000-0000-4000-8000-000000000000"


def _count(a: Api, table: str) -> int:
    with a.rig.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_submit_returns_202_and_the_job_resource(api: Api) -> None:
    r = api.tenant().post("/v1/jobs", json=video(metadata={"project": "p1"}))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["kind"] == "video" and job["tier"] == "draft"
    assert job["estimated_cost_usd"] > 0 and job["cost_usd"] is None
    assert job["route"]["candidates"][0]["backend"] == "vid-cheap"
    assert job["attempts"] == [] and job["metadata"] == {"project": "p1"}
    assert "prompt" not in r.text  # the resource never echoes the input

    got = api.tenant().get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json()["id"] == job["id"]
    with api.rig.engine.connect() as conn:
        tenant = conn.execute(text("SELECT tenant FROM jobs WHERE id = :i"),
                              {"i": job["id"]}).scalar_one()
    assert tenant == "acme"


def test_another_tenants_job_is_not_found(api: Api) -> None:
    job = api.tenant("acme").post("/v1/jobs", json=video()).json()
    for path in (f"/v1/jobs/{job['id']}", NO_JOB):
        r = (api.tenant("globex").get(path) if path.startswith("/")
             else api.tenant("globex").get(f"/v1/jobs/{path}"))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
    r = api.tenant("globex").post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 404
    assert api.tenant("acme").get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert api.tenant("globex").get("/v1/jobs").json() == {"items": [], "next_cursor": None}


def test_list_is_newest_first_with_cursor_paging_and_status_filter(api: Api) -> None:
    c = api.tenant()
    ids = [c.post("/v1/jobs", json=video(duration=d)).json()["id"] for d in range(1, 6)]
    c.post(f"/v1/jobs/{ids[0]}/cancel").raise_for_status()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/jobs", params=params).json()
        pages += 1
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    queued = c.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert [j["id"] for j in queued] == ids[:0:-1]
    cancelled = c.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]

    # not a cursor, or one shaped like ours with an id that is not a string (was a 500)
    for forged in ("not-a-cursor", base64.urlsafe_b64encode(
            b'{"t":"2026-01-01T00:00:00+00:00","id":1}').decode().rstrip("=")):
        bad = c.get("/v1/jobs", params={"cursor": forged})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        assert "cursor" in bad.json()["error"]["message"]
    bad = c.get("/v1/jobs", params={"status": "bogus"})
    assert bad.status_code == 422 and "status" in bad.json()["error"]["message"]


def test_idempotency_same_body_same_job_different_body_conflict(api: Api) -> None:
    c = api.tenant()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = c.post("/v1/jobs", json=video(), headers=key)
    again = c.post("/v1/jobs", json=video(), headers=key)
    assert first.status_code == 202 and again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = c.post("/v1/jobs", json=video(duration=9), headers=key)
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "conflict" and err["details"]["job_id"] == first.json()["id"]
    # the same key belongs to each tenant separately
    theirs = api.tenant("globex").post("/v1/jobs", json=video(), headers=key)
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    assert _count(api, "jobs") == 2 and _count(api, "holds") == 2


# video()'s body as the releases before the result cache (migrations 0007 to 0011) hashed it,
# their request_hash's output: the body's JSON read back, with no ``cache`` field
PRE_CACHE_HASH = "9c8915f35c2478f731d5503e2ff88fe286b436f5f897fad32642bc7f2f4eead5"


def test_a_replay_finds_the_job_an_earlier_release_admitted_with_that_key(api: Api) -> None:
    """A client retrying its submission across an upgrade (the SDK does, through the 503s of
    a restart) sends the same key and body: the job the release before the result cache
    admitted is the answer, not a 409 for a body it hashed without ``cache``."""
    c = api.tenant()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = c.post("/v1/jobs", json=video(), headers=key)
    assert first.status_code == 202
    with api.rig.engine.begin() as conn:  # the row as that release wrote it
        conn.execute(text("UPDATE jobs SET request_hash = :h WHERE id = :i"),
                     {"h": PRE_CACHE_HASH, "i": first.json()["id"]})
    again = c.post("/v1/jobs", json=video(), headers=key)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # another body under the key is still another body
    assert c.post("/v1/jobs", json=video(duration=9), headers=key).status_code == 409
    assert c.post("/v1/jobs", json=video(cache=False), headers=key).status_code == 409
    assert _count(api, "jobs") == 1 and _count(api, "holds") == 1


def test_a_replay_gets_its_job_even_when_nothing_would_route_it_now(api: Api) -> None:
    c = api.tenant()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = c.post("/v1/jobs", json=video(), headers=key)
    assert first.status_code == 202
    container = api.rig.container
    for name in container.catalogue().names:  # every breaker open
        for _ in range(5):
            container.health.record(name, Outcome.BACKEND_FAULT)
    fresh = c.post("/v1/jobs", json=video())
    assert fresh.status_code == 422 and fresh.json()["error"]["code"] == "no_eligible_backend"
    again = c.post("/v1/jobs", json=video(), headers=key)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert c.post("/v1/jobs", json=video(duration=9), headers=key).status_code == 409
    assert _count(api, "jobs") == 1 and _count(api, "holds") == 1


def test_cancel_releases_the_hold_and_is_repeatable(api: Api) -> None:
    api.budget("tenant:acme", 10_000_000)
    c = api.tenant()
    job = c.post("/v1/jobs", json=video()).json()
    with api.rig.engine.connect() as conn:
        held = conn.execute(text("SELECT held_micros FROM budget_periods")).scalar_one()
    assert held > 0
    r = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["error"]["code"] == "cancelled"
    with api.rig.engine.connect() as conn:
        held = conn.execute(text("SELECT held_micros FROM budget_periods")).scalar_one()
    assert held == 0
    again = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert c.post(f"/v1/jobs/{NO_JOB}/cancel").status_code == 404


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` objects deep."""
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        inner = {"a": inner}
    return inner


def test_metadata_as_deep_as_allowed_reads_back_in_every_answer(api: Api) -> None:
    c = api.tenant()
    meta = {"project": "p1", "deep": nested(31)}  # 32 levels with the metadata itself
    job = c.post("/v1/jobs", json=video(metadata=meta)).json()
    assert job["metadata"] == meta
    assert c.get(f"/v1/jobs/{job['id']}").json()["metadata"] == meta
    assert c.get("/v1/jobs?limit=5").json()["items"][0]["metadata"] == meta


def test_invalid_specs_are_422_naming_the_field(api: Api) -> None:
    c = api.tenant()
    cases = [
        ({**video(), "kind": "hologram"}, "kind"),
        (video(duration=0), "duration_s"),
        ({**video(), "max_cost_usd": -1}, "max_cost_usd"),
        ({**video(), "surprise": 1}, "surprise"),
        ({"kind": "video"}, "input"),
        (video(metadata={"note": "a\x00b"}), "metadata.note"),
        # deeper than any answer could carry back (MAX_NESTING = 32)
        (video(metadata=nested(40)), "metadata nests"),
        ({**video(), "input": {**video()["input"], "seed": [nested(40)]}}, "input nests"),
    ]
    for body, field in cases:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and field in err["message"], err
        assert "Traceback" not in r.text and "a lighthouse" not in r.text
    for raw in (b"{not json", b'{"kind": "\xff\xfe"}'):
        r = c.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["error"]["message"], r.text
        assert r.json()["error"]["details"]["field"] == "body", r.text
    # NaN and Infinity: Python reads them, JSON has no such numbers (they were stored as null)
    body = json.dumps(video(metadata={"n": 1.5})).replace("1.5", "NaN").encode()
    for raw in (body, body.replace(b"NaN", b"-Infinity"), body.replace(b"NaN", b'"\\ud800"')):
        r = c.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "metadata.n"
    r = c.post("/v1/jobs", json=video(), headers={"Idempotency-Key": "x" * 201})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["error"]["message"]
    assert _count(api, "jobs") == 0


def test_an_idempotency_key_given_twice_is_422_and_nothing_is_written(api: Api) -> None:
    """Two Idempotency-Key lines name two keys: one would be used and the other dropped (a
    proxy joining them into one line would send "a, b", refused for its space), so the
    submission is refused as a query parameter given twice is."""
    c = api.tenant()
    for lines in ([("Idempotency-Key", "k-a"), ("Idempotency-Key", "k-b")],
                  [("Idempotency-Key", "k-a"), ("idempotency-key", "k-a")]):
        r = c.post("/v1/jobs", json=video(), headers=lines)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_request"
        assert err["details"]["field"] == "header.Idempotency-Key"
        assert "more than once" in err["message"]
    assert _count(api, "jobs") == 0 and _count(api, "holds") == 0
    assert c.post("/v1/jobs", json=video(), headers={"Idempotency-Key": "k-a"}
                  ).status_code == 202


def test_a_422_says_what_is_wrong_with_a_body_or_a_number(api: Api) -> None:
    """Unreadable bodies, NaN, and amounts finer than a micro-dollar are named for what they
    are, on submissions and quotes alike, and nothing is written."""
    c = api.tenant()
    as_json = {"Content-Type": "application/json"}
    unreadable = (
        (b"[" * 5000 + b"]" * 5000, "JSON nested too deeply"),
        (b'{"kind": "video", "max_cost_usd": ' + b"7" * 5000 + b"}",
         "a number has too many digits (at most 4300)"),
        (b'{"kind": "\xff\xfe"}', "not readable as UTF-8 JSON"),
    )
    for path in ("/v1/jobs", "/v1/quotes"):
        for raw, problem in unreadable:
            r = c.post(path, content=raw, headers=as_json)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["message"] == f"body: {problem}" and err["details"]["field"] == "body"
        body = json.dumps(video(max_cost_usd=1.5))
        for value in ("NaN", "Infinity", "-Infinity"):
            r = c.post(path, content=body.replace("1.5", value), headers=as_json)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["message"] == "max_cost_usd: must be a finite number"
        nan_duration = json.dumps(video(duration=4)).replace(": 4,", ": NaN,")
        r = c.post(path, content=nan_duration, headers=as_json)
        assert r.json()["error"]["message"] == (
            "input.duration_s: must be a finite number (for a video job)"), r.text
        r = c.post(path, json={"kind": "image", "input": {"prompt": "p", "n": 0}})
        assert r.json()["error"]["message"] == (
            "input.n: Input should be greater than or equal to 1 (for an image job)"), r.text
        r = c.post(path, json=video(webhook_events=["job.nope"]))
        assert r.json()["error"]["message"].startswith(
            "webhook_events[0]: unknown event 'job.nope'; one of job.queued, "), r.text
        for value in ("1.0000005", "0.0000001", "1e-7"):
            r = c.post(path, content=body.replace("1.5", value), headers=as_json)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["details"]["field"] == "max_cost_usd", err
            assert err["message"] == ("max_cost_usd: must have at most 6 decimal places "
                                      "(amounts are kept in whole micro-dollars)")
    assert _count(api, "jobs") == 0
    ok = c.post("/v1/jobs", json=video(max_cost_usd=2.000001))
    assert ok.status_code == 202, ok.text


def test_no_eligible_backend_is_422_with_the_reasons(api: Api) -> None:
    r = api.tenant().post("/v1/jobs", json=video(tier="premium"))
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "no_eligible_backend"
    assert {e["backend"] for e in err["details"]["excluded"]} >= {"vid-cheap", "vid-mid"}
    assert _count(api, "jobs") == 0


def test_quote_ranks_candidates_and_changes_nothing(api: Api) -> None:
    api.budget("tenant:acme", 10_000_000)
    before = (_count(api, "jobs"), _count(api, "holds"), _count(api, "ledger_entries"))
    r = api.tenant().post("/v1/quotes", json=video(tier="draft"))
    assert r.status_code == 200, r.text
    q = r.json()
    assert [c["backend"] for c in q["candidates"]] == ["vid-cheap", "vid-mid"]
    assert q["candidates"][0]["estimated_cost_usd"] == 0.18  # 4 s x $0.03 x 1.5
    assert q["candidates"][0]["reasons"]
    assert {e["backend"] for e in q["excluded"]} == {"txt-one"}
    assert all(e["reason"] for e in q["excluded"])
    assert (_count(api, "jobs"), _count(api, "holds"), _count(api, "ledger_entries")) == before
    bad = api.tenant().post("/v1/quotes", json={"kind": "video", "input": {}})
    assert bad.status_code == 422 and "prompt" in bad.json()["error"]["message"]
