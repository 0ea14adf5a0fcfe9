"""The API as a client written outside this project meets it: plain httpx and raw sockets,
read against docs/api.md and the WHATWG Server-Sent Events rules only (never our SDK). Real
API, PostgreSQL and Redis."""

from __future__ import annotations

import gzip
import json
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from orchestrator.events.retention import expire

from . import raw_http
from .api_fixture import Api, api_fixture, video  # noqa: F401


def test_a_finished_jobs_stream_with_no_event_left_is_204_not_an_empty_stream(api: Api) -> None:
    """An EventSource reconnects after every 200 stream that ends, and without a
    Last-Event-ID when the stream gave it no id: a 200 with nothing in it, for a job that is
    over and whose events retention deleted, would have it reconnect every few seconds for
    ever. Only a 204 stops it (as after the terminal event)."""
    c = api.tenant()
    job_id = c.post("/v1/jobs", json=video()).json()["id"]  # no worker: it waits
    assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    gone = expire(api.rig.engine, 30, datetime.now(UTC) + timedelta(days=31))
    assert gone.events >= 2
    with api.rig.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM job_events WHERE job_id = :j"),
                            {"j": job_id}).scalar_one()
    assert left == 0
    first = c.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
    assert first.status_code == 204 and first.content == b"", first.text
    # as after the terminal event, a seq resumed after is 204 too
    assert c.get(f"/v1/jobs/{job_id}/events", params={"after": 1}).status_code == 204
    # the job itself says how it ended
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def _operations(api: Api) -> list[tuple[str, str, dict[str, Any]]]:
    doc = httpx.get(f"{api.url}/openapi.json").json()
    return [(method.upper(), path, op) for path, ops in doc["paths"].items()
            for method, op in ops.items() if path.startswith("/v1/")]


def _concrete(path: str) -> str:
    """A path of the document with its parameters filled in (ids that name nothing)."""
    return (path.replace("{job_id}", str(uuid.uuid4())).replace("{n}", "0")
            .replace("{key_id}", "999999").replace("{delivery_id}", "999999"))


def test_every_status_a_route_answers_at_its_edge_is_in_the_openapi_document(api: Api) -> None:
    """A client generated from /openapi.json (or a proxy that validates answers against it)
    takes an undeclared status for a broken server: a compressed body is 415 on every /v1
    route, before the route runs, so every operation declares it."""
    gz = gzip.compress(b'{"kind": "video"}')
    c = api.admin()
    for method, path, op in _operations(api):
        r = c.request(method, _concrete(path), content=gz,
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 415, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
        assert "415" in op["responses"], (method, path, sorted(op["responses"]))


def test_a_submissions_202_declares_its_location_and_replay_headers(api: Api) -> None:
    """Both headers of a submission's 202 are in the document, so a generated client
    exposes them (Location: the job to poll; Idempotent-Replayed: a retry's answer)."""
    [op] = [op for method, path, op in _operations(api)
            if (method, path) == ("POST", "/v1/jobs")]
    headers = op["responses"]["202"].get("headers", {})
    assert headers.get("Location", {}).get("required") is True, headers
    assert "Idempotent-Replayed" in headers, headers
    c = api.tenant()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first, again = (c.post("/v1/jobs", json=video(), headers=key) for _ in range(2))
    assert first.headers["Location"] == again.headers["Location"] == (
        f"/v1/jobs/{first.json()['id']}")
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_422_names_a_list_item_as_the_documented_fields_do_and_jsons_types(
        api: Api) -> None:
    """``details.field`` is one syntax whoever finds the fault (``channels[1].type`` is
    documented, and what the channel checks say), and a message names JSON's types (an
    object, a list), not Python's (a dictionary, a tuple)."""
    admin = api.admin()
    budget = {"scope": "global", "period": "month", "limit_usd": 1}
    for channels, field in (([{"type": "slack", "url": "https://hooks.slack.com/x"}, 1],
                             "channels[1]"),
                            ([{"type": "email", "to": ["ops@example.com"]}],
                             "channels[0].type")):
        r = admin.put("/v1/budgets", json={**budget, "channels": channels})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["field"] == field, r.text
    bad = admin.put("/v1/budgets", json={**budget, "alert_thresholds": [0.5, "x"]})
    assert bad.json()["error"]["details"]["field"] == "alert_thresholds[1]", bad.text
    c = api.tenant()
    for body, field, message in (
            ({**video(), "input": []}, "input", "Input should be a valid object"),
            ({**video(), "metadata": "x"}, "metadata", "Input should be a valid object"),
            ({**video(), "webhook_events": "job.queued"}, "webhook_events",
             "Input should be a valid list"),
            ({**budget, "channels": [1]}, "channels[0]", "Input should be a valid object")):
        r = (admin.put("/v1/budgets", json=body) if "scope" in body
             else c.post("/v1/quotes", json=body))
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["details"]["field"], err["message"]) == (field, f"{field}: {message}"), err
    for not_an_object in ([video()], "x"):
        r = c.post("/v1/jobs", json=not_an_object)
        assert r.json()["error"]["message"] == "body: Input should be a valid object", r.text


def test_a_query_or_header_parameter_is_named_one_way_whatever_its_fault(api: Api) -> None:
    """Outside the body ``details.field`` is ``query.<name>`` or ``header.<name>``
    (docs/api.md, Errors): a client keys its message on it, so a value too long and a value
    of the wrong form name the same parameter the same way."""
    c = api.tenant()
    job_id = c.post("/v1/jobs", json=video()).json()["id"]
    admin = api.admin()
    for client, path, kw, field in (
            (c, f"/v1/jobs/{job_id}/events", "header", "header.Last-Event-ID"),
            (c, "/v1/events", "header", "header.Last-Event-ID"),
            (c, "/v1/events", "query", "query.since"),
            (admin, "/v1/webhooks", "tenant", "query.tenant"),
            (admin, "/v1/webhooks/secret", "tenant", "query.tenant"),
            (admin, "/v1/webhooks/deliveries", "tenant", "query.tenant")):
        for value in ("x" * 101, "not one!"):  # too long (the framework's check); malformed
            if kw == "header":
                r = client.get(path, headers={"Last-Event-ID": value,
                                              "Accept": "application/json"})
            else:
                r = client.get(path, params={"since" if kw == "query" else "tenant": value,
                                             }, headers={"Accept": "application/json"})
            assert r.status_code == 422, (path, value, r.text)
            assert r.json()["error"]["details"]["field"] == field, (path, value, r.text)
    # an empty Last-Event-ID is none: the feed's since decides
    r = c.get("/v1/events", params={"since": "0"},
              headers={"Last-Event-ID": "", "Accept": "application/json"})
    assert r.status_code == 200 and r.json()["items"], r.text
    r = admin.post("/v1/webhooks/deliveries/redeliver-failed", params={"tenant": "not one!"})
    assert r.json()["error"]["details"]["field"] == "query.tenant", r.text
    # a PUT's tenant is in its body: named as a body field
    r = admin.put("/v1/webhooks", json={"tenant": "not one!", "secret": "s" * 16})
    assert r.json()["error"]["details"]["field"] == "tenant", r.text


def test_a_value_refused_by_its_own_check_names_the_item_or_member(api: Api) -> None:
    """``alert_thresholds[0]`` is documented as a ``details.field``: a threshold out of
    range or too precise, or an unknown event type, names its item as one of the wrong type
    does, and a bad ``metadata.project`` names that member, not the whole of ``metadata``."""
    admin = api.admin()
    budget = {"scope": "global", "period": "month", "limit_usd": 1}
    for name in ("alert_thresholds", "forecast_thresholds"):
        for bad in (11, 0, 0.50004, "x"):
            r = admin.put("/v1/budgets", json={**budget, name: [0.5, bad]})
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["details"]["field"] == f"{name}[1]", (bad, r.text)
            assert err["message"].startswith(f"{name}[1]: "), (bad, r.text)
    r = api.tenant().post("/v1/quotes", json={**video(), "metadata": {"project": "a b"}})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["details"]["field"] == "metadata.project", r.text
    assert err["message"] == ("metadata.project: must be 1-64 letters, digits, '_', '.' "
                              "or '-'"), r.text
    # an unknown event type: the item of the list that names it
    r = api.tenant().post("/v1/quotes", json={**video(), "webhook_events": [
        "job.succeeded", "job.done"]})
    assert r.json()["error"]["details"]["field"] == "webhook_events[1]", r.text
    r = api.tenant().put("/v1/webhooks", json={"secret": "s" * 16,
                                               "events": ["job.failed", "job.done"]})
    assert r.json()["error"]["details"]["field"] == "events[1]", r.text


def test_a_body_is_read_as_utf8_only(api: Api) -> None:
    """docs/api.md: bodies are read as UTF-8 (a leading BOM skipped). Python's JSON reader
    given bytes also guesses UTF-16 and UTF-32, which a proxy or audit log in front of the
    API reads as other text: such a body is refused as unreadable, and nothing is admitted."""
    c = api.tenant()
    as_json = {"Content-Type": "application/json"}
    text = json.dumps(video())
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        for path in ("/v1/jobs", "/v1/quotes"):
            r = c.post(path, content=text.encode(encoding), headers=as_json)
            assert r.status_code == 422, (encoding, path, r.text)
            err = r.json()["error"]
            # with a BOM, bytes UTF-8 cannot decode; without, NULs between the characters
            assert err["message"] in ("body: not readable as UTF-8 JSON",
                                      "body: not valid JSON"), (encoding, r.text)
            assert err["details"]["field"] == "body", (encoding, r.text)
    assert c.get("/v1/jobs").json()["items"] == []
    for encoding in ("utf-8", "utf-8-sig"):  # with or without its BOM
        r = c.post("/v1/jobs", content=text.encode(encoding), headers=as_json)
        assert r.status_code == 202, (encoding, r.text)


def test_the_feed_says_its_answer_depends_on_accept(api: Api) -> None:
    """GET /v1/events answers JSON or a stream by the Accept header (proactive negotiation):
    RFC 9110 §12.5.5 has both answers say so with ``Vary: Accept``, so that no cache between
    the client and the API hands one client's representation to another."""
    c = api.tenant()
    page = c.get("/v1/events", headers={"Accept": "application/json"})
    assert page.status_code == 200, page.text
    with c.stream("GET", "/v1/events", headers={"Accept": "text/event-stream"},
                  timeout=httpx.Timeout(10.0, read=10.0)) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        streamed = stream.headers
    for headers in (page.headers, streamed):
        vary = [v.strip().lower() for v in headers.get("vary", "").split(",")]
        assert "accept" in vary, dict(headers)


def _read_to_close(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_an_http10_client_gets_a_stream_it_can_read(api: Api) -> None:
    """HTTP/1.0 is served (docs/api.md), and a 1.0 client knows no chunked coding: RFC 9112
    §6.1 forbids Transfer-Encoding in an answer to it, so a stream (no Content-Length) is
    sent as is and ends with the connection; and one Connection header, not keep-alive."""
    c = api.tenant()
    job_id = c.post("/v1/jobs", json=video()).json()["id"]
    assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200  # events: queued, cancelled
    key = api.keys["acme"]
    with raw_http.connect(api.url) as sock:
        sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.0\r\n"
                     f"Authorization: Bearer {key}\r\n\r\n".encode())
        answer = _read_to_close(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:]]
    assert lines[0].split(" ")[1] == "200", head
    assert not [v for n, v in headers if n.lower() == "transfer-encoding"], head
    assert [v.lower() for n, v in headers if n.lower() == "connection"] == ["close"], head
    assert body.startswith(b"id: "), body[:80]
    assert [ln for ln in body.decode().splitlines() if ln.startswith("event: ")] == [
        "event: job.queued", "event: job.cancelled"], body
    # a 1.0 answer of known length is unchanged; a 1.1 stream is still chunked
    with raw_http.connect(api.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert _read_to_close(sock).endswith(b'{"status":"ok"}')
    with c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        assert b"event: job.cancelled" in r.read()
