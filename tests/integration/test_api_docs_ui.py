"""``/docs`` over real HTTP and in real headless Chromium: Swagger UI from files installed with
the project, nothing fetched from another origin, under the console's strict
Content-Security-Policy (no inline script); FastAPI's CDN pages (``/redoc``, the OAuth2
redirect) are not served."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Request, expect

from orchestrator.console import SECURITY_HEADERS

from .api_fixture import Api, api_fixture  # noqa: F401
from .console_support import browser_fixture  # noqa: F401

CSP = SECURITY_HEADERS["Content-Security-Policy"]


def test_docs_are_served_from_this_origin_with_a_strict_csp(api: Api) -> None:
    with httpx.Client(base_url=api.url, timeout=15) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        html = page.text
        assert "http://" not in html and "https://" not in html and "cdn" not in html
        assert re.search(r"<script>(?!</script>)", html) is None  # no inline script
        linked = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(linked) == 4, linked
        for path in linked:
            r = c.get(path)
            assert r.status_code == 200 and len(r.content) > 100, path
            assert r.headers["content-security-policy"] == CSP, path
        assert "cdn.jsdelivr" not in c.get("/docs/swagger-init.js").text
        for gone in ("/redoc", "/docs/oauth2-redirect"):
            assert c.get(gone).status_code == 404, gone
        assert c.get("/openapi.json").json()["info"]["title"] == "orchestrator"


def test_swagger_ui_renders_the_api_in_a_browser_without_csp_violations(
    api: Api, browser: Browser,
) -> None:
    context = browser.new_context()
    page = context.new_page()
    elsewhere: list[str] = []
    violations: list[str] = []
    errors: list[str] = []
    origin = urlsplit(api.url).netloc

    def watch(request: Request) -> None:
        if urlsplit(request.url).scheme in ("http", "https") and \
                urlsplit(request.url).netloc != origin:
            elsewhere.append(request.url)

    def console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text:
            violations.append(msg.text)

    page.on("request", watch)
    page.on("console", console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{api.url}/docs")
        expect(page.locator(".opblock-summary-path", has_text="/v1/jobs").first).to_be_visible(
            timeout=20_000)
        expect(page.locator(".info .title")).to_contain_text("orchestrator")
    finally:
        context.close()
    assert elsewhere == [] and violations == [] and errors == [], (elsewhere, violations, errors)
