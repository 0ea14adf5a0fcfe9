"""The console's files as the API serves them (real HTTP): where, with which headers, nothing
from another origin, shipped in the wheel, off with ``ORCH_CONSOLE_ENABLED=false``; and
``GET /v1/whoami``, which the console asks after sign-in."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from orchestrator.api import start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.console import STATIC_DIR
from orchestrator.settings import Settings
from orchestrator.store.keys import create_key

from .e2e_support import ROOT

FILES = sorted(p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*")
               if p.is_file())


@pytest.fixture()
def served(db: Engine, database_url: str, redis_url: str,
           request: pytest.FixtureRequest) -> Iterator[str]:
    enabled = getattr(request, "param", True)
    # the 401s asked for below must not meet 127.0.0.1's failed authentications of earlier
    # tests of this process (a 429 once they reach the limit)
    redis.Redis.from_url(redis_url).flushdb()
    container = Container(Settings(database_url=database_url, redis_url=redis_url,
                                   console_enabled=enabled))
    running = start_in_thread(container)
    try:
        yield running.url
    finally:
        running.stop()


def test_the_console_is_served_with_strict_headers(served: str) -> None:
    assert {"index.html", "console.css", "js/app.js", "js/api.js"} <= set(FILES)
    bare = httpx.get(f"{served}/console", timeout=5)
    assert bare.status_code == 308 and bare.headers["location"] == "/console/"
    page = httpx.get(f"{served}/console/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-cache"
    for name in FILES:
        r = httpx.get(f"{served}/console/{name}", timeout=5)
        assert r.status_code == 200, name
        assert r.headers["content-security-policy"] == csp
        if name.endswith(".js"):
            assert "javascript" in r.headers["content-type"]
        again = httpx.get(f"{served}/console/{name}", timeout=5,
                          headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304  # revalidated, not sent again
    assert httpx.get(f"{served}/console/../orchestrator/settings.py",
                     timeout=5).status_code == 404
    assert httpx.get(f"{served}/console/nope.js", timeout=5).status_code == 404
    # counted under the mount's template, not per file
    text = httpx.get(f"{served}/metrics", timeout=5).text
    routes = {s.labels["route"] for fam in text_string_to_metric_families(text)
              if fam.name == "orchestrator_http_requests" for s in fam.samples}
    assert "/console/{path}" in routes and not any("app.js" in r for r in routes)


@pytest.mark.parametrize("served", [False], indirect=True)
def test_orch_console_enabled_false_serves_nothing(served: str) -> None:
    assert httpx.get(f"{served}/console/", timeout=5).status_code == 404
    assert httpx.get(f"{served}/console/js/app.js", timeout=5).status_code == 404
    assert httpx.get(f"{served}/console", timeout=5).status_code == 404


def test_nothing_is_fetched_from_another_origin() -> None:
    external = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.I)
    for name in FILES:
        text = (STATIC_DIR / name).read_text()
        found = set(external.findall(text)) - {"http://www.w3.org"}  # the SVG namespace
        assert not found, f"{name} names another origin: {found}"
        assert not re.search(r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|"
                             r"\beval\(|new Function", text), name  # text, never markup
        assert "localStorage.setItem" not in text, name  # the key lives in sessionStorage


def test_the_package_ships_the_console(tmp_path: Path) -> None:
    # what setuptools puts in a wheel or an install, from pyproject.toml's package data
    # (build_py: no download of build requirements, unlike a wheel build in isolation)
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                    "egg_info", "--egg-base", str(tmp_path), "build_py", "-d", str(tmp_path)],
                   cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    built = tmp_path / "orchestrator" / "console" / "static"
    missing = [f for f in FILES if not (built / f).is_file()]
    assert missing == []


def test_whoami_names_the_calling_key(served: str, db: Engine) -> None:
    with db.begin() as conn:
        tenant_key = create_key(conn, "acme")
        admin_key = create_key(conn, "ops", admin=True)
    me = httpx.get(f"{served}/v1/whoami", timeout=5,
                   headers={"Authorization": f"Bearer {tenant_key}"}).json()
    assert me["tenant"] == "acme" and me["admin"] is False
    assert me["prefix"] == tenant_key.split("_")[1] and me["key_id"] >= 1
    assert tenant_key not in str(me)
    admin = httpx.get(f"{served}/v1/whoami", timeout=5,
                      headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert admin["tenant"] == "ops" and admin["admin"] is True
    assert httpx.get(f"{served}/v1/whoami", timeout=5).status_code == 401
