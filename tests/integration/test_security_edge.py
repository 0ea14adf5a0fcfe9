"""The API's edge over real HTTP (raw sockets where a client library would not misbehave
enough): authentication before the body, failed-authentication limits per client address,
slow bodies and heads, oversized heads, the connection cap, a hung Redis under the limits."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import redis
from sqlalchemy import text

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.api.app import create_app
from orchestrator.bootstrap import Container
from orchestrator.store.keys import create_key

from .api_fixture import Api, api_fixture, start_api, video  # noqa: F401
from .e2e_support import Rig
from .raw_http import closed_by_server, connect, head, read_answer

MB = 1024 * 1024


def unknown_key() -> str:
    return f"orch_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


@contextmanager
def api_with(rig: Rig, **limits: object) -> Iterator[Api]:
    a = start_api(rig, ApiConfig(key_cache_s=0, **limits))  # type: ignore[arg-type]
    try:
        yield a
    finally:
        a.close()


def forget_failures(rig: Rig) -> None:
    redis.Redis.from_url(rig.redis_url).flushdb()


def jobs_written(api: Api) -> int:
    with api.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


# -- authentication before the body ----------------------------------------------------------
def test_an_unauthenticated_body_is_never_read(api: Api) -> None:
    """Heads that announce a body which never comes: without a valid key the answer is 401
    at once (the server would otherwise wait for the body), and the connection is closed."""
    cases: list[dict[str, str]] = [
        {"Content-Length": str(500_000)},                    # under the body limit
        {"Content-Length": str(10 * MB)},                    # over it: still 401, not 413
        {"Transfer-Encoding": "chunked"},                    # a body without end
        {"Content-Length": str(500_000), "Authorization": f"Bearer {unknown_key()}"},
        {"Content-Length": str(500_000), "Authorization": "Bearer not-a-key"},
    ]
    for headers in cases:
        with connect(api.url) as sock:
            sock.sendall(head("POST", "/v1/jobs",
                              {"Content-Type": "application/json", **headers}))
            if headers.get("Transfer-Encoding"):
                sock.sendall(b"5\r\n{\"kin\r\n")
            answer = read_answer(sock, f"POST /v1/jobs with {headers} and no body")
            assert answer.status == 401, (headers, answer)
            assert answer.error()["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.headers["connection"] == "close"
            assert closed_by_server(sock)
    assert jobs_written(api) == 0


def test_a_valid_key_still_reads_the_body(api: Api) -> None:
    r = api.tenant().post("/v1/jobs", json=video())
    assert r.status_code == 202, r.text
    assert api.tenant().get("/v1/jobs").json()["items"][0]["id"] == r.json()["id"]


def test_every_v1_route_is_behind_the_gate_and_nothing_else(api: Api) -> None:
    """The gate guards /v1 by prefix; every route that takes a principal (it documents the
    bearer scheme) is under /v1, and only /healthz, /readyz, /metrics and the docs are not."""
    from orchestrator.api.gate import protected

    paths = create_app(api.rig.container).openapi()["paths"]
    assert {p for p in paths if not protected(p)} == {"/healthz", "/readyz", "/metrics"}
    for path, operations in paths.items():
        for method, op in operations.items():
            assert bool(op.get("security")) == protected(path), (method, path)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert httpx.get(api.url + path).status_code == 200, path
    assert httpx.get(api.url + "/redoc").status_code == 404  # its bundle needs a CDN
    assert httpx.get(api.url + "/v1/nothing").status_code == 401  # the gate before routing


def test_two_authorization_headers_are_refused_not_one_of_them_chosen(api: Api) -> None:
    """Which of two keys a request acts with must not depend on header order (a proxy that
    adds its own key, or checks the last one, would disagree with the API): 401."""
    tenant, admin = api.keys["acme"], api.admin_key
    for pair in ((tenant, admin), (admin, tenant), (tenant, tenant), ("not-a-key", admin)):
        r = httpx.get(f"{api.url}/v1/whoami",
                      headers=[("Authorization", f"Bearer {k}") for k in pair])
        assert r.status_code == 401, (pair == (tenant, admin), r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert "one Authorization header" in r.json()["error"]["message"]
    for scheme in ("Bearer", "bearer", "BEARER", "Bearer "):  # case-insensitive, spaces
        r = httpx.get(f"{api.url}/v1/whoami", headers={"Authorization": f"{scheme} {tenant}"})
        assert r.status_code == 200 and r.json()["tenant"] == "acme", scheme


# -- failed authentications per client address -----------------------------------------------
def test_an_unknown_key_storm_from_one_address_gets_429(rig: Rig) -> None:
    with api_with(rig, auth_fail_limit=5, auth_fail_window_s=60) as api:
        known = api.tenant()
        assert known.get("/v1/jobs").status_code == 200  # verified before the storm
        for _ in range(5):
            r = api.client(unknown_key()).get("/v1/jobs")
            assert r.status_code == 401, r.text
        for client in (api.client(unknown_key()), api.client(None),
                       api.client("orch_bad")):
            r = client.post("/v1/jobs", json=video())
            assert r.status_code == 429, r.text
            err = r.json()["error"]
            assert err["code"] == "rate_limited"
            assert "failed authentications" in err["message"]
            retry = int(r.headers["Retry-After"])
            assert 1 <= retry <= 60
            assert err["details"] == {"retry_after_s": retry, "limit": 5, "window_s": 60}
        # a key this replica found valid before keeps working from the blocked address;
        # a key it has never seen waits for the window like the storm (documented)
        assert known.get("/v1/jobs").status_code == 200
        assert api.client(api.new_key("acme")).get("/v1/jobs").status_code == 429
        assert httpx.get(f"{api.url}/healthz").status_code == 200
        assert jobs_written(api) == 0


def test_forwarded_for_is_believed_only_from_named_proxies(rig: Rig) -> None:
    def storm(api: Api, forwarded: Callable[[int], str]) -> list[int]:
        return [api.client(unknown_key()).get(
                    "/v1/jobs", headers={"X-Forwarded-For": forwarded(i)}).status_code
                for i in range(4)]

    # default: no proxy is trusted, a client cannot pick its address to dodge the count
    with api_with(rig, auth_fail_limit=3) as api:
        assert storm(api, lambda i: f"198.51.100.{i}") == [401, 401, 401, 429]
    forget_failures(rig)
    # behind a named proxy, each forwarded client has its own count
    with api_with(rig, auth_fail_limit=3, forwarded_allow_ips="127.0.0.1") as api:
        assert storm(api, lambda i: "203.0.113.7") == [401, 401, 401, 429]
        other = {"X-Forwarded-For": "203.0.113.8"}
        assert api.client(unknown_key()).get("/v1/jobs", headers=other).status_code == 401
        fresh = api.client(api.new_key("acme"))
        assert fresh.get("/v1/jobs", headers=other).status_code == 200
        # an IPv6 client counts by its /64
        v6 = [api.client(unknown_key()).get("/v1/jobs", headers={
            "X-Forwarded-For": f"2001:db8:1:2::{i + 1}"}).status_code for i in range(4)]
        assert v6 == [401, 401, 401, 429]


# -- slow and oversized requests -------------------------------------------------------------
def test_a_slow_body_is_cut_off_with_408(rig: Rig) -> None:
    with api_with(rig, body_timeout_s=0.5) as api, connect(api.url) as sock:
        sock.sendall(head("POST", "/v1/jobs", {
            "Authorization": f"Bearer {api.keys['acme']}",
            "Content-Type": "application/json", "Content-Length": "400"}))
        sock.sendall(b'{"kind": "video", "input": {"prompt": "')  # and then nothing
        answer = read_answer(sock, "a body that stopped after 40 of 400 bytes")
        assert answer.status == 408, answer
        err = answer.error()
        assert err["code"] == "request_timeout" and "0.5 s" in err["message"]
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock)
        assert jobs_written(api) == 0
        assert api.tenant().post("/v1/jobs", json=video()).status_code == 202


def test_a_slow_or_oversized_head_is_refused(rig: Rig) -> None:
    with api_with(rig, header_timeout_s=0.5, max_header_bytes=8192) as api:
        with connect(api.url) as sock:  # a head that stops half-way
            sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
            answer = read_answer(sock, "a request head that stopped half-way")
            assert answer.status == 408 and answer.error()["code"] == "request_timeout"
            assert closed_by_server(sock)
        with connect(api.url) as sock:  # a connection that never says anything
            assert closed_by_server(sock), "an idle new connection was held open"
        with connect(api.url) as sock:
            sock.sendall(head("GET", "/v1/jobs", {"X-Big": "x" * 20_000}))
            answer = read_answer(sock, "a 20 kB header")
            assert answer.status == 431 and answer.error()["code"] == "headers_too_large"
            assert closed_by_server(sock)
        with connect(api.url) as sock:  # a header that never ends is not buffered on
            sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: test\r\nX-Big: " + b"x" * 20_000)
            answer = read_answer(sock, "20 kB of a header without end")
            assert answer.status == 431 and answer.error()["code"] == "headers_too_large"
        ok = api.tenant().get("/v1/jobs", headers={"X-Fine": "y" * 2000})
        assert ok.status_code == 200


def test_the_connection_cap_answers_503_at_once(rig: Rig) -> None:
    with api_with(rig, limit_concurrency=3, timeout_keep_alive_s=30) as api:
        held: list[socket.socket] = []
        try:
            for _ in range(3):  # three kept-alive connections, each known to the server
                sock = connect(api.url)
                held.append(sock)
                sock.sendall(head("GET", "/healthz"))
                assert read_answer(sock, "healthz").status == 200
            with connect(api.url) as fourth:
                fourth.sendall(head("GET", "/v1/jobs", {
                    "Authorization": f"Bearer {api.keys['acme']}"}))
                answer = read_answer(fourth, "a request over the connection cap")
                assert answer.status == 503, answer
                assert answer.error()["code"] == "unavailable"
                assert answer.headers["retry-after"] == "1"
                assert answer.headers["cache-control"] == "no-store"  # as every /v1 error
                assert closed_by_server(fourth)
            held[0].sendall(head("GET", "/v1/jobs", {
                "Authorization": f"Bearer {api.keys['acme']}"}))
            assert read_answer(held[0], "a request on a held connection").status == 200
        finally:
            for sock in held:
                sock.close()


# -- a hung Redis under the rate limit and the failed-authentication count -------------------
class RedisRelay:
    """A TCP relay to the real Redis that can hang: while ``hung``, what clients send is
    swallowed, so their connections stay open and no reply ever comes (a paused, overloaded
    or partitioned Redis, which a refused connection does not show)."""

    def __init__(self, upstream_url: str) -> None:
        up = urlsplit(upstream_url)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 6379)
        self.server = socket.create_server(("127.0.0.1", 0))
        port = self.server.getsockname()[1]
        self.url = up._replace(netloc=up.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
                               if "@" in up.netloc else f"127.0.0.1:{port}").geturl()
        self.hung = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if not self.hung:
                    dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            sock.close()

    def close(self) -> None:
        self.server.close()
        for sock in self._socks:
            sock.close()


def test_a_hung_redis_costs_one_request_its_timeout_not_every_request(rig: Rig) -> None:
    """The limits fail open without Redis; a Redis that does not answer must not make every
    request wait for the Redis timeout (2 s) before it is let through: after one call timed
    out the limits go without Redis for a while, then try it again, and count again once it
    answers."""
    relay = RedisRelay(rig.redis_url)
    settings = rig.container.settings.model_copy(update={"redis_url": relay.url})
    container = Container(settings, enqueue=rig.container.enqueue)
    with rig.engine.begin() as conn:
        acme, globex = create_key(conn, "acme"), create_key(conn, "globex")
    running = start_in_thread(container, config=ApiConfig(rate_limit=3, key_cache_s=60))
    clients: list[httpx.Client] = []

    def client(key: str) -> httpx.Client:
        clients.append(httpx.Client(base_url=running.url, timeout=30,
                                    headers={"Authorization": f"Bearer {key}"}))
        return clients[-1]

    try:
        a, g = client(acme), client(globex)
        assert [a.get("/v1/whoami").status_code for _ in range(4)] == [200, 200, 200, 429]
        relay.hung = True
        assert g.get("/v1/whoami").status_code == 200  # let through once Redis timed out
        for _ in range(5):
            started = time.monotonic()
            for c in (g, a):  # acme over its limit too: the limit is not counted
                assert c.get("/v1/whoami").status_code == 200
            assert time.monotonic() - started < 1.0, "each request waited for Redis"
        relay.hung = False
        direct = redis.Redis.from_url(rig.redis_url)
        deadline = time.monotonic() + 30
        while not direct.exists("orch:ratelimit:globex"):  # counted again once it answers
            assert time.monotonic() < deadline, "the rate limit never asked Redis again"
            assert g.get("/v1/whoami").status_code == 200
        codes = [g.get("/v1/whoami").status_code for _ in range(4)]
        assert codes[-1] == 429, codes
    finally:
        for c in clients:
            c.close()
        running.stop()
        container.engine.dispose()
        relay.close()
