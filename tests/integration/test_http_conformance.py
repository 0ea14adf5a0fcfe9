"""What a strict HTTP client expects of the API (RFC 9110/9112), over real sockets: malformed
requests and a missing Host answered with the envelope, no redirect built from the Host
header, encoded bodies refused, repeated query parameters refused, a submission's Location."""

from __future__ import annotations

import gzip
import json

from sqlalchemy import text

from .api_fixture import Api, api_fixture, video  # noqa: F401
from .raw_http import Answer, closed_by_server, connect, head, read_answer


def jobs_written(api: Api) -> int:
    with api.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def exchange(api: Api, raw: bytes, what: str) -> tuple[Answer, bool]:
    """The answer to ``raw`` sent on a new connection, and whether the server closed it."""
    with connect(api.url, timeout=5.0) as sock:
        sock.sendall(raw)
        answer = read_answer(sock, what)
        return answer, closed_by_server(sock)


def test_a_request_the_parser_refuses_is_400_with_the_envelope(api: Api) -> None:
    for raw, what in [
        (b"GARBAGE\r\n\r\n", "no request line"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", "a header without ':'"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: b\r\n folded\r\n\r\n", "obs-fold"),
        (b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "Content-Length and chunked"),
    ]:
        answer, closed = exchange(api, raw, what)
        assert answer.status == 400, what
        assert answer.headers["content-type"] == "application/json", what
        assert answer.error()["code"] == "bad_request", what
        assert "date" in answer.headers, what
        assert closed, what


def test_http11_needs_exactly_one_host_and_http10_none(api: Api) -> None:
    for hosts in ([], ["a", "b"]):
        raw = ("GET /healthz HTTP/1.1\r\n" + "".join(f"Host: {h}\r\n" for h in hosts)
               + "\r\n").encode()
        answer, closed = exchange(api, raw, f"{len(hosts)} Host headers")
        assert answer.status == 400 and closed
        err = answer.error()
        assert err["code"] == "bad_request" and f"not {len(hosts)}" in err["message"]
    answer, _ = exchange(api, b"GET /healthz HTTP/1.0\r\n\r\n", "HTTP/1.0 without Host")
    assert answer.status == 200 and json.loads(answer.body) == {"status": "ok"}


def test_an_http_version_not_served_is_505(api: Api) -> None:
    answer, closed = exchange(api, b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", "HTTP/2.0")
    assert answer.status == 505 and closed
    assert answer.error()["code"] == "http_version_not_supported"


def test_a_request_refused_before_the_app_is_not_kept_by_a_cache_either(api: Api) -> None:
    """docs/api.md: every /v1 answer, errors included, carries ``Cache-Control: no-store``
    and ``X-Content-Type-Options: nosniff``: those the HTTP layer answers itself (a missing
    Host, another version, a head too large) too."""
    key = api.keys["acme"]
    for raw, what, status in [
        (f"GET /v1/whoami HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode(),
         "no Host", 400),
        (b"GET /v1/whoami HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", "bad header", 400),
        (b"GET /v1/whoami HTTP/2.0\r\nHost: t\r\n\r\n", "HTTP/2.0", 505),
        (b"GET /v1/whoami HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
         "a head too large", 431),
    ]:
        answer, closed = exchange(api, raw, what)
        assert answer.status == status and closed, what
        assert answer.headers.get("cache-control") == "no-store", (what, answer.headers)
        assert answer.headers.get("x-content-type-options") == "nosniff", what


def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_host_header(api: Api) -> None:
    key = api.keys["acme"]
    for method in ("GET", "POST"):
        raw = head(method, "/v1/jobs/", {"Authorization": f"Bearer {key}",
                                         "Content-Length": "0"})
        raw = raw.replace(b"Host: test", b"Host: evil.example")
        answer, _ = exchange(api, raw, f"{method} with a trailing slash")
        assert answer.status == 404 and "location" not in answer.headers, method
        err = answer.error()
        assert err["code"] == "not_found" and "trailing slash" in err["message"]
    # an unknown path with a slash is the plain 404; the console's own redirect stays
    assert api.tenant().get("/v1/nothing/").json()["error"]["message"] == "Not Found"
    console = api.client(None).get("/console")
    assert console.status_code == 308 and console.headers["location"] == "/console/"


def test_a_content_encoded_body_is_415_and_nothing_is_admitted(api: Api) -> None:
    c = api.tenant()
    plain = json.dumps(video()).encode()
    for coding, body in (("gzip", gzip.compress(plain)), ("br", plain), ("identity, gzip",
                                                                         gzip.compress(plain))):
        r = c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json",
                                                      "Content-Encoding": coding})
        assert r.status_code == 415, (coding, r.text)
        assert r.headers["accept-encoding"] == "identity"
        assert r.json()["error"]["code"] == "unsupported_media_type"
        assert r.json()["error"]["details"] == {"field": "header.Content-Encoding"}
    assert jobs_written(api) == 0
    ok = c.post("/v1/jobs", content=plain, headers={"Content-Type": "application/json",
                                                    "Content-Encoding": "identity"})
    assert ok.status_code == 202, ok.text
    # a request with no body is not refused for a coding it does not use
    assert c.get("/v1/jobs", headers={"Content-Encoding": "gzip"}).status_code == 200


def test_a_submission_answers_where_its_job_is(api: Api) -> None:
    c = api.tenant()
    first = c.post("/v1/jobs", json=video(), headers={"Idempotency-Key": "loc-1"})
    assert first.status_code == 202
    where = first.headers["location"]
    assert where == f"/v1/jobs/{first.json()['id']}"
    assert c.get(where).json()["id"] == first.json()["id"]
    again = c.post("/v1/jobs", json=video(), headers={"Idempotency-Key": "loc-1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == where


def test_a_name_given_twice_in_an_object_is_422_and_writes_nothing(api: Api) -> None:
    c = api.tenant()
    spec = json.dumps(video())
    for body, name in ((spec[:-1] + ', "kind": "text"}', "kind"),
                       (spec[:-1] + ', "metadata": {"project": "a", "project": "b"}}',
                        "project")):
        r = c.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and err["details"]["field"] == "body"
        assert err["message"] == f"body: the name {name!r} is given twice in one object"
    assert jobs_written(api) == 0
    assert c.post("/v1/jobs", content=spec,
                  headers={"Content-Type": "application/json"}).status_code == 202
