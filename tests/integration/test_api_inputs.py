"""Only declared inputs reach a provider, over real HTTP: the API refuses a field no backend
declares (quotes and jobs, nothing written), routing leaves out a backend that does not accept
the input, and what the simulator receives is the declared parameters only (seen through a
small recording proxy in front of it)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml
from sqlalchemy import text
from typer.testing import CliRunner

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.client import Client
from orchestrator.client.errors import InvalidRequest
from orchestrator.store.keys import create_key

from .api_fixture import TENANTS, Api
from .e2e_support import E2E_CATALOGUE, Rig, run_chain

Seen = list[tuple[str, str, Any]]


class NoEnqueue:
    """The chain runs in this process (``run_chain``): no start message is sent."""

    def start(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
              backend: str | None = None) -> None:
        pass

    def poll(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
             countdown_s: float) -> None:
        pass

    def resume(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
               countdown_s: float = 0.0) -> None:
        pass


@contextmanager
def recording_proxy(target: str) -> Iterator[tuple[str, Seen]]:
    """An HTTP proxy to ``target`` that records every request's method, path and JSON body."""
    seen: Seen = []
    upstream = httpx.Client(base_url=target, timeout=10.0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, json.loads(raw) if raw else None))
            keep = ("content-type", "idempotency-key", "authorization")
            r = upstream.request(self.command, self.path, content=raw, headers={
                k: v for k, v in self.headers.items() if k.lower() in keep})
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = forward

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


def catalogue(proxy: str, sim: str, declare: bool = True) -> dict[str, Any]:
    """The e2e catalogue with vid-mid and txt-one behind the proxy; with ``declare``, vid-mid
    takes a seed and an fps (default 24), txt-one a temperature."""
    by_name = {b["name"]: dict(b) for b in E2E_CATALOGUE["backends"]}
    by_name["vid-cheap"]["base_url"] = f"{sim}/vid-cheap"
    by_name["vid-mid"]["base_url"] = f"{proxy}/vid-mid"
    by_name["txt-one"]["base_url"] = f"{proxy}/txt-one"
    if declare:
        by_name["vid-mid"]["params"] = {
            "seed": {"type": "integer", "min": 0, "max": 1000},
            "fps": {"type": "integer", "min": 8, "max": 60, "default": 24}}
        by_name["txt-one"]["params"] = {"temperature": {"type": "number", "min": 0, "max": 2}}
    return {**E2E_CATALOGUE, "backends": list(by_name.values())}


def container_for(base: Container, doc: dict[str, Any], path: Path) -> Container:
    """A container like ``base`` over the catalogue ``doc``; this process runs its chains."""
    path.write_text(yaml.safe_dump(doc))
    settings = base.settings.model_copy(update={"backends_file": path})
    return Container(settings, enqueue=NoEnqueue())


@dataclass
class Declared:
    api: Api
    container: Container
    proxy: str
    seen: Seen

    def count(self, table: str) -> int:
        with self.api.rig.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    def run(self, container: Container, job_id: str) -> dict[str, Any]:
        job = self.api.rig.job(uuid.UUID(job_id))
        assert job.chain_token is not None
        run_chain(container.runner, job.id, job.chain_token)
        final: dict[str, Any] = self.api.tenant().get(f"/v1/jobs/{job_id}").json()
        assert final["status"] == "succeeded", final
        return final


@pytest.fixture()
def declared(rig: Rig, tmp_path: Path) -> Iterator[Declared]:
    with recording_proxy(rig.sim_url) as (proxy, seen):
        container = container_for(rig.container, catalogue(proxy, rig.sim_url),
                                  tmp_path / "declared.yaml")
        with rig.engine.begin() as conn:
            admin_key = create_key(conn, "ops", admin=True)
            keys = {t: create_key(conn, t) for t in TENANTS}
        api = Api(rig, start_in_thread(container, config=ApiConfig(key_cache_s=0)), admin_key,
                  keys)
        for name in ("vid-cheap", "vid-mid"):
            rig.control(name, duration_ms=50)
        try:
            yield Declared(api, container, proxy, seen)
        finally:
            api.close()
            container.engine.dispose()


def video(**inp: Any) -> dict[str, Any]:
    return {"kind": "video", "tier": "draft",
            "input": {"prompt": "a lighthouse at dusk", "duration_s": 4, **inp}}


def test_an_undeclared_field_is_422_naming_it_and_writes_nothing(declared: Declared) -> None:
    c = declared.api.tenant()
    for path in ("/v1/quotes", "/v1/jobs"):
        for body, field in ((video(api_key="sk-live-1"), "input.api_key"),
                            ({"kind": "text", "input": {"prompt": "hi", "top_p": 0.5}},
                             "input.top_p")):
            r = c.post(path, json=body, headers={"Idempotency-Key": f"k-{uuid.uuid4()}"})
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["code"] == "invalid_request" and err["details"]["field"] == field
            assert err["message"] == f"{field}: no {body['kind']} backend accepts this field"
            assert "sk-live" not in r.text and "lighthouse" not in r.text
    assert declared.count("jobs") == declared.count("holds") == 0
    assert declared.seen == []  # no provider heard of it


def test_an_ill_typed_field_is_422_naming_it_and_the_expected_range(declared: Declared) -> None:
    c = declared.api.tenant()
    cases = [(video(seed="abc"), "input.seed", 'expected an integer in [0, 1000], got "abc"'),
             (video(seed=1001), "input.seed", "expected an integer in [0, 1000], got 1001"),
             (video(fps=True), "input.fps", "expected an integer in [8, 60], got true"),
             ({"kind": "text", "input": {"prompt": "hi", "temperature": "hot"}},
              "input.temperature", "expected a number in [0, 2]")]
    for path in ("/v1/quotes", "/v1/jobs"):
        for body, field, words in cases:
            r = c.post(path, json=body)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["details"]["field"] == field and words in err["message"], err
    # the job spec's own checks name the field the same way
    r = c.post("/v1/jobs", json=video(duration_s="long"))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "input.duration_s"
    assert declared.count("jobs") == declared.count("holds") == 0


def test_a_field_only_some_backends_declare_excludes_the_others(declared: Declared) -> None:
    c = declared.api.tenant()
    q = c.post("/v1/quotes", json=video(seed=7)).json()
    assert [x["backend"] for x in q["candidates"]] == ["vid-mid"]
    excluded = {e["backend"]: e for e in q["excluded"]}
    assert excluded["vid-cheap"]["code"] == "input_not_accepted"
    assert excluded["vid-cheap"]["reason"] == "does not accept input.seed"
    plain = c.post("/v1/quotes", json=video()).json()
    assert [x["backend"] for x in plain["candidates"]] == ["vid-cheap", "vid-mid"]
    # a pinned backend that does not accept the input: 422 naming the field
    for path in ("/v1/quotes", "/v1/jobs"):
        r = c.post(path, json={**video(seed=7), "backend": "vid-cheap"})
        assert r.status_code == 422
        assert r.json()["error"]["message"] == (
            "input.seed: backend vid-cheap does not accept this field")
    # what each backend accepts is listed
    params = {b["name"]: b["params"] for b in c.get("/v1/backends").json()["backends"]}
    assert set(params["vid-mid"]["video"]) == {"prompt", "duration_s", "resolution", "seed",
                                               "fps"}
    assert "seed" not in params["vid-cheap"]["video"]
    assert params["txt-one"]["text"]["temperature"]["max"] == 2
    # docs/api.md: type and required always; the others only where set, never null
    for kinds in params.values():
        for declared_params in kinds.values():
            for spec in declared_params.values():
                assert {"type", "required"} <= set(spec) and None not in spec.values(), spec
    assert "max" not in params["txt-one"]["text"]["prompt"]


def test_declared_params_reach_the_provider_and_nothing_else(
    declared: Declared, tmp_path: Path
) -> None:
    c = declared.api.tenant()
    r = c.post("/v1/jobs", json=video(seed=7))
    assert r.status_code == 202, r.text
    assert r.json()["route"]["excluded"][0]["reason"] == "does not accept input.seed"
    declared.run(declared.container, r.json()["id"])
    creates = [b for m, p, b in declared.seen if m == "POST" and p.endswith("/predictions")]
    assert creates == [{"input": {"prompt": "a lighthouse at dusk", "duration_s": 4.0,
                                  "resolution": "720p", "seed": 7, "fps": 24}}]

    t = c.post("/v1/jobs", json={"kind": "text", "input": {"prompt": "hi", "max_tokens": 8,
                                                            "temperature": 0.2}})
    assert t.status_code == 202, t.text
    declared.run(declared.container, t.json()["id"])
    chats = [b for m, p, b in declared.seen if p.endswith("/chat/completions")]
    assert chats == [{"model": "txt-one", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 8, "temperature": 0.2}]

    # the catalogue changed between the submission and the run: vid-mid no longer takes a
    # seed, and the job admitted with one runs without it
    queued = c.post("/v1/jobs", json=video(seed=9))
    assert queued.status_code == 202
    plain = container_for(declared.container,
                          catalogue(declared.proxy, declared.api.rig.sim_url, declare=False),
                          tmp_path / "plain.yaml")
    try:
        declared.run(plain, queued.json()["id"])
    finally:
        plain.engine.dispose()
    creates = [b for m, p, b in declared.seen if m == "POST" and p.endswith("/predictions")]
    assert creates[-1] == {"input": {"prompt": "a lighthouse at dusk", "duration_s": 4.0,
                                     "resolution": "720p"}}


def test_the_sdk_and_the_cli_get_the_field_named(declared: Declared, cli: typer.Typer) -> None:
    api = declared.api
    with Client(api.url, api.keys["acme"]) as sdk, pytest.raises(InvalidRequest) as info:
        sdk.quote(kind="video", input={"prompt": "x", "duration_s": 4, "junk": 1})
    assert info.value.details["field"] == "input.junk"
    result = CliRunner().invoke(cli, [
        "submit", "--kind", "video", "--prompt", "a kite", "--param", "duration_s=4",
        "--param", "junk=1", "--api-url", api.url, "--api-key", api.keys["acme"]])
    assert result.exit_code == 1, result.output
    assert "input.junk: no video backend accepts this field" in result.stderr
    assert declared.count("jobs") == 0
