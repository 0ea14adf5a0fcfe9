"""Authentication, rate limits, body limits, error envelopes and ops routes over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from sqlalchemy import text

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.store.keys import hash_key, revoke_key
from workers.enqueue import CeleryEnqueue

from .api_fixture import Api, api_fixture, limited_api_fixture, video  # noqa: F401

PROMPT = "a secret storyboard about a lighthouse"


def _error(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert "Traceback" not in r.text
    err: dict[str, object] = body["error"]
    return err


def test_requests_without_a_valid_key_are_401(api: Api) -> None:
    unknown = "orch_deadbeef_" + "A" * 43
    for headers in ({}, {"Authorization": "Bearer nonsense"},
                    {"Authorization": f"Bearer {unknown}"},
                    {"Authorization": f"Basic {api.keys['acme']}"},
                    {"Authorization": f"Bearer {api.keys['acme']}x"}):
        with httpx.Client(base_url=api.url, headers=headers) as c:
            for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
                                 ("GET", "/v1/budgets"), ("PUT", "/v1/budgets"),
                                 ("POST", "/v1/keys"), ("GET", "/v1/backends")):
                r = c.request(method, path, json=video())
                _error(r, 401, "unauthorized")
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_a_revoked_key_stops_working(api: Api) -> None:
    key = api.new_key("acme")
    c = api.client(key)
    assert c.get("/v1/jobs").status_code == 200
    with api.rig.engine.begin() as conn:
        key_id = conn.execute(text("SELECT id FROM api_keys WHERE key_hash = :h"),
                              {"h": hash_key(key)}).scalar_one()
        assert revoke_key(conn, key_id).revoked_at is not None
    _error(c.get("/v1/jobs"), 401, "unauthorized")
    assert api.tenant().get("/v1/jobs").status_code == 200


def test_rate_limit_is_per_tenant_with_retry_after(limited_api: Api) -> None:
    acme = limited_api.tenant("acme")
    for _ in range(3):
        assert acme.get("/v1/jobs").status_code == 200
    r = acme.post("/v1/jobs", json=video())
    err = _error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert err["details"] == {"retry_after_s": int(r.headers["Retry-After"]), "limit": 3,
                              "window_s": 60}
    assert limited_api.tenant("globex").get("/v1/jobs").status_code == 200
    assert httpx.get(f"{limited_api.url}/healthz").status_code == 200  # not limited
    with limited_api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_bodies_above_the_limit_are_413(limited_api: Api) -> None:
    c = limited_api.tenant()
    big = video()
    big["input"]["prompt"] = "x" * 5000
    err = _error(c.post("/v1/jobs", json=big), 413, "payload_too_large")
    assert "4096" in str(err["message"])

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"kind": "video", "input": {"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}}'

    r = c.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    _error(r, 413, "payload_too_large")
    assert c.post("/v1/jobs", json=video()).status_code == 202


def test_unknown_routes_and_methods_use_the_envelope(api: Api) -> None:
    _error(api.tenant().get("/v1/nothing"), 404, "not_found")
    # Allow names every method of the path, not only the first route's (RFC 9110 §15.5.6)
    for path, allow in (("/v1/jobs", "GET, HEAD, POST"), ("/v1/budgets", "GET, HEAD, PUT"),
                        ("/v1/webhooks", "GET, HEAD, PUT"), ("/v1/events", "GET"),
                        ("/console/", "GET, HEAD")):
        r = api.tenant().request("PATCH", path)
        _error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == allow, path


def test_a_body_that_is_not_json_is_415_naming_the_content_type(api: Api) -> None:
    form = api.tenant().post("/v1/jobs", data={"kind": "video"})  # what curl -d sends
    _error(form, 415, "unsupported_media_type")
    assert "application/x-www-form-urlencoded" in form.json()["error"]["message"]
    text = api.tenant().post("/v1/quotes", content=b"kind=video",
                             headers={"Content-Type": "text/plain"})
    _error(text, 415, "unsupported_media_type")
    # JSON without a Content-Type (httpx's content=, a bare urllib request) is not read as JSON
    bare = httpx.post(f"{api.url}/v1/jobs", content=b'{"kind": "video"}',
                      headers={"Authorization": f"Bearer {api.keys['acme']}"})
    assert "content-type" not in bare.request.headers
    _error(bare, 415, "unsupported_media_type")
    assert "Content-Type: application/json), and none was sent" in bare.json()["error"]["message"]
    # no body at all is a missing field, whatever the headers
    empty = httpx.post(f"{api.url}/v1/jobs",
                       headers={"Authorization": f"Bearer {api.keys['acme']}"})
    _error(empty, 422, "invalid_request")
    # a JSON body that is wrong is still about its field
    bad = api.tenant().post("/v1/jobs", json={"kind": "video", "input": []})
    _error(bad, 422, "invalid_request")
    # a bad query or path value is about itself, whatever the body's type
    query = api.tenant().post("/v1/jobs/x/cancel", content=b"",
                              headers={"Content-Type": "text/plain"})
    _error(query, 422, "invalid_request")


def test_a_query_parameter_the_route_does_not_take_is_refused_not_ignored(api: Api) -> None:
    """A filter the route does not offer would answer every job as if none had been asked."""
    c = api.tenant()
    for path, params in (("/v1/jobs", {"kind": "video"}), ("/v1/jobs", {"Status": "queued"}),
                         ("/v1/budgets", {"tenant": "acme"}), ("/v1/whoami", {"x": "1"})):
        r = c.get(path, params=params)
        _error(r, 422, "invalid_request")
        name = next(iter(params))
        assert r.json()["error"]["details"]["field"] == f"query.{name}", r.text
    listed = c.get("/v1/jobs", params={"kind": "video"}).json()["error"]["message"]
    assert listed == ("query: unknown parameter 'kind' (this route takes: cursor, limit, "
                      "status, tenant)"), listed
    # what the routes take still works, their dependencies' parameters included
    assert c.get("/v1/jobs", params={"status": "queued", "limit": 5}).status_code == 200
    assert c.get("/v1/reports/costs", params={"group_by": "tier"}).status_code == 200
    assert httpx.get(f"{api.url}/healthz", params={"probe": "1"}).status_code == 200


def test_a_query_parameter_given_twice_is_refused_not_half_ignored(api: Api) -> None:
    """The framework keeps the last value: ?group_by=day&group_by=tier was a report by
    tier, and ?status=queued&status=failed listed failed jobs only."""
    c = api.tenant()
    for path, query in (("/v1/reports/costs", "group_by=day&group_by=tier"),
                        ("/v1/reports/costs", "from=2026-11-01T00:00:00Z&from=2026-12-01"),
                        ("/v1/jobs", "status=queued&status=failed")):
        r = c.get(f"{path}?{query}")
        _error(r, 422, "invalid_request")
        name = query.split("=")[0]
        assert r.json()["error"]["details"]["field"] == f"query.{name}", r.text
        assert r.json()["error"]["message"] == (
            f"query.{name}: given more than once (it takes one value)"), r.text
    assert c.get("/v1/reports/costs?group_by=day&from=2026-11-01").status_code == 200


def test_head_answers_as_get_without_a_body(api: Api) -> None:
    # uptime monitors probe with HEAD (RFC 9110 §9.1: a server supports GET and HEAD)
    for path in ("/healthz", "/readyz"):
        get, head = httpx.get(f"{api.url}{path}"), httpx.head(f"{api.url}{path}")
        assert head.status_code == get.status_code == 200, path
        # GET's headers, its length included; httpx reads no body after a HEAD
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"] != "0"
    assert httpx.head(f"{api.url}/metrics").status_code == 200
    listed = api.tenant().head("/v1/jobs")
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    # and no body on the wire: the next answer on the same connection is read whole
    with httpx.Client(base_url=api.url) as one:
        assert one.head("/healthz").status_code == 200
        assert one.get("/healthz").json() == {"status": "ok"}
    assert api.client(None).head("/v1/jobs").status_code == 401  # the key still counts
    assert api.tenant().head("/v1/events").status_code == 405  # a stream never ends


def test_health_ready_and_metrics_need_no_key(api: Api) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    api.tenant().post("/v1/jobs", json=video()).raise_for_status()
    api.tenant().post("/v1/jobs", json=video(tier="premium"))
    m = httpx.get(f"{api.url}/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    lines = m.text.splitlines()
    assert any(ln.startswith("orchestrator_jobs_submitted_total{") and 'status="accepted"' in ln
               and 'backend="vid-cheap"' in ln for ln in lines), m.text[:2000]
    assert any('status="no_eligible_backend"' in ln for ln in lines)


def test_redis_down_readyz_503_and_requests_still_served(api: Api, tmp_path: Path) -> None:
    settings = api.rig.container.settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0"})
    container = Container(settings, enqueue=CeleryEnqueue(Celery("dead", broker="memory://")))
    running = start_in_thread(container, config=ApiConfig(key_cache_s=0))
    try:
        r = httpx.get(f"{running.url}/readyz", timeout=10)
        err = _error(r, 503, "not_ready")
        assert r.headers["Retry-After"] == "2"  # as every 503 for an outage says
        checks = err["details"]["checks"]  # type: ignore[index]
        assert checks["database"] == "ok" and checks["redis"].startswith("error")
        # the rate limiter fails open: losing Redis does not stop the API
        listed = httpx.get(f"{running.url}/v1/jobs", timeout=10,
                           headers={"Authorization": f"Bearer {api.keys['acme']}"})
        assert listed.status_code == 200
    finally:
        running.stop()
        container.engine.dispose()


def test_unexpected_failures_are_500_without_details(api: Api, tmp_path: Path) -> None:
    settings = api.rig.container.settings.model_copy(
        update={"backends_file": tmp_path / "missing.yaml"})
    container = Container(settings, enqueue=api.rig.container.enqueue)
    running = start_in_thread(container)
    try:
        r = httpx.get(f"{running.url}/v1/backends", timeout=10,
                      headers={"Authorization": f"Bearer {api.keys['acme']}"})
        err = _error(r, 500, "internal_error")
        assert err["details"] == {} and "missing.yaml" not in r.text
    finally:
        running.stop()
        container.engine.dispose()


def test_a_database_it_cannot_reach_is_503_without_its_error_or_prompt(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.engine import make_url

    caplog.set_level(logging.DEBUG)
    url = make_url(api.rig.container.database_url).set(database="no_such_database")
    settings = api.rig.container.settings.model_copy(
        update={"database_url": url.render_as_string(hide_password=False)})
    container = Container(settings, enqueue=api.rig.container.enqueue)
    running = start_in_thread(container)
    try:
        spec = video()
        spec["input"]["prompt"] = PROMPT
        r = httpx.post(f"{running.url}/v1/jobs", json=spec, timeout=10,
                       headers={"Authorization": f"Bearer {api.keys['acme']}"})
        # the gate's key lookup cannot connect: unavailable, never 500, and not why
        err = _error(r, 503, "unavailable")
        assert err["details"] == {"dependency": "database"}
        assert r.headers["Retry-After"] == "2"
        assert "no_such_database" not in r.text and PROMPT not in r.text
    finally:
        running.stop()
        container.engine.dispose()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "OperationalError" in logged and api.keys["acme"] not in logged


def test_keys_and_prompts_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    caplog.set_level(logging.DEBUG)
    c = api.tenant()
    spec = video()
    spec["input"]["prompt"] = PROMPT
    c.post("/v1/jobs", json=spec).raise_for_status()
    c.post("/v1/jobs", json={**spec, "tier": "premium"})
    c.post("/v1/jobs", json={**spec, "bogus": True})
    c.post("/v1/quotes", json=spec).raise_for_status()
    api.client(api.keys["acme"] + "x").get("/v1/jobs")
    api.admin().post("/v1/keys", json={"tenant": "newco"}).raise_for_status()
    text_logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert PROMPT not in text_logged
    for key in (api.keys["acme"], api.admin_key):
        assert key not in text_logged and key.split("_", 2)[2] not in text_logged
