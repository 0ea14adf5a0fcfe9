"""What a security review of the console found, in real headless Chromium and over real HTTP
against the API (real PostgreSQL and Redis): the key never reaches a URL, even when the
console's script has not run; no cache keeps an API answer (data, or a new key); signing out
leaves nothing of the session in the page; an API that cannot be reached, or an answer that
is not the API's, is named so; a page of another origin can neither read the API, nor submit a
job with a form, nor frame the console."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect
from sqlalchemy import Engine

from orchestrator.store.keys import create_key

from .console_support import browser_fixture  # noqa: F401
from .test_console_static import served  # noqa: F401


@pytest.fixture(name="tenant_key")
def tenant_key_fixture(db: Engine) -> str:
    with db.begin() as conn:
        return create_key(conn, "acme")


@pytest.fixture(name="plain_page", params=["javascript off", "app.js not loaded"])
def plain_page_fixture(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The sign-in page without its script: JavaScript turned off, or app.js not loaded (a
    proxy or an extension blocks it, or the user presses Enter before it has run)."""
    context = browser.new_context(java_script_enabled=request.param != "javascript off")
    page = context.new_page()
    if request.param == "app.js not loaded":
        page.route("**/console/js/app.js", lambda route: route.abort())
    yield page
    context.close()


@pytest.fixture(name="page")
def page_fixture(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], errors


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/console/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def test_submitting_the_form_without_its_script_puts_no_key_in_a_url(
    served: str, tenant_key: str, plain_page: Page,  # noqa: F811
) -> None:
    """Before, the key field had a name, so the browser's own submission of the form (no
    script to stop it) was ``GET /console/?key=orch_…``: the key in the address bar, the
    history and any proxy's access log."""
    urls: list[str] = []
    plain_page.on("request", lambda r: urls.append(r.url))
    plain_page.goto(f"{served}/console/")
    plain_page.get_by_label("API key").fill(tenant_key)
    # the browser's own submission: the page asked again, with a query
    with plain_page.expect_request(lambda r: r.is_navigation_request() and "?" in r.url):
        plain_page.get_by_label("API key").press("Enter")
    assert not any(tenant_key in u or "key=" in u for u in urls), urls
    assert tenant_key not in plain_page.url



def test_no_cache_keeps_an_answer_of_the_api(served: str, db: Engine) -> None:  # noqa: F811
    """Before, ``/v1`` answers had no ``Cache-Control``: a browser (the docs page's "Try it
    out" does not ask for ``no-store``) or a proxy could keep a tenant's jobs, or the answer of
    ``POST /v1/keys`` with its new key, on disk."""
    with db.begin() as conn:
        admin_key = create_key(conn, "ops", admin=True)
    with httpx.Client(base_url=served, timeout=10,
                      headers={"Authorization": f"Bearer {admin_key}"}) as api:
        answers = {
            "whoami": api.get("/v1/whoami"),
            "jobs": api.get("/v1/jobs"),
            "new key": api.post("/v1/keys", json={"tenant": "acme"}),
            "keys": api.get("/v1/keys"),
            "budgets": api.get("/v1/budgets"),
            "invalid": api.get("/v1/jobs", params={"nope": "1"}),
            "no key": httpx.get(f"{served}/v1/jobs", timeout=10),
            "unknown route": api.get("/v1/nope"),
        }
        assert answers["new key"].status_code == 201 and "key" in answers["new key"].json()
        for name, r in answers.items():
            assert r.headers.get("cache-control") == "no-store", (name, r.status_code)
            assert r.headers.get("x-content-type-options") == "nosniff", name
        with api.stream("GET", "/v1/events") as stream:  # a route's own choice stays
            assert stream.status_code == 200
            assert stream.headers["cache-control"] == "no-cache"
        # outside /v1, each keeps its own: the console's files are revalidated, not refused
        assert httpx.get(f"{served}/console/", timeout=10).headers["cache-control"] == "no-cache"
        assert "cache-control" not in httpx.get(f"{served}/healthz", timeout=10).headers


def test_signing_out_leaves_nothing_of_the_session_in_the_page(
    served: str, db: Engine, page: Page,  # noqa: F811
) -> None:
    """Before, Sign out emptied the view but left, hidden, who was signed in and an admin's
    tenant list (the next user of the tab could read them), and the status line kept the last
    update (or an error a load that ended after sign-out wrote there)."""
    with db.begin() as conn:
        admin_key = create_key(conn, "ops", admin=True)
        create_key(conn, "rival-corp")
    sign_in(page, served, admin_key)
    expect(page.locator("#identity")).to_contain_text("admin")
    expect(page.locator("#tenant option", has_text="rival-corp")).to_have_count(1)
    page.goto(f"{served}/console/#/jobs")
    expect(page.locator("#status")).to_contain_text("jobs updated")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#identity")).to_have_text("")
    expect(page.locator("#tenant option")).to_have_count(1)  # "All tenants" only
    expect(page.locator("#status")).to_have_text("")
    assert "rival-corp" not in page.content() and admin_key.split("_")[1] not in page.content()


def test_an_api_that_cannot_be_reached_is_named_so(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """The API down (the connection refused): before, the console showed the browser's own
    words, "Failed to fetch" in Chromium."""
    sign_in(page, served, tenant_key)
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.route("**/v1/**", lambda route: route.abort("connectionrefused"))
    page.goto(f"{served}/console/#/backends")
    expect(page.locator("#status")).to_contain_text("error: cannot reach the API")
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, served, tenant_key)
    expect(page.locator("#signin-error")).to_have_text(
        "Cannot sign in: cannot reach the API (it is down, or the network is)")
    assert tenant_key not in page.content()


def test_an_answer_that_is_not_the_apis_is_named_so(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """A proxy or a captive portal in the way answers 200 with its own HTML page. Before, the
    console said "Cannot read properties of null (reading 'admin')"."""
    portal = "<!doctype html><title>Sign in to the network</title><p>Welcome</p>"

    def intercept(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=portal)

    page.route("**/v1/whoami", intercept)
    sign_in(page, served, tenant_key)
    expect(page.locator("#signin-error")).to_contain_text(
        "not an answer of the API (HTTP 200, text/html")
    assert page.evaluate("sessionStorage.length") == 0  # signed out: the key is not kept
    page.unroute("**/v1/whoami")
    page.route("**/v1/budgets", intercept)
    sign_in(page, served, tenant_key)
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{served}/console/#/budgets")
    expect(page.locator("#status")).to_contain_text("not an answer of the API (HTTP 200")
    assert tenant_key not in page.content()


class OtherOrigin:
    """A page served from another origin (another port) that calls the API, posts a job to it
    with a form, and frames the console."""

    def __init__(self, api: str) -> None:
        # a text/plain form whose body reads as a job's JSON: the classic CSRF on a JSON API
        field = ('{"kind":"text","tier":"draft","input":{"prompt":"csrf","max_tokens":5},'
                 '"metadata":{"x":"')
        page = f"""<!doctype html><title>elsewhere</title>
<iframe id="framed" src="{api}/console/"></iframe>
<form id="csrf" method="POST" action="{api}/v1/jobs" enctype="text/plain">
<input name='{field}' value='"}}}}'></form>""".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_page_of_another_origin_can_neither_read_post_nor_frame(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """What docs/api.md and docs/console.md promise a browser: no CORS (a preflight, which
    carries no key, is 401), the key a bearer header only (a form sends none), no framing."""
    sign_in(page, served, tenant_key)  # the victim is signed in, in this browser
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    with httpx.Client(base_url=served, headers={"Authorization": f"Bearer {tenant_key}"},
                      timeout=10) as api:
        def jobs() -> int:
            return len(api.get("/v1/jobs").json()["items"])

        before = jobs()
        other = OtherOrigin(served)
        try:
            elsewhere = page.context.new_page()
            elsewhere.goto(other.url)
            read = """async ([url, init]) => {
                try { const r = await fetch(url, init); return `read ${r.status}`; }
                catch (e) { return "blocked"; } }"""
            for init in ({"credentials": "include"},
                         {"headers": {"Authorization": f"Bearer {tenant_key}"}},
                         {"method": "POST", "body": "{}", "headers": {
                             "Authorization": f"Bearer {tenant_key}",
                             "Content-Type": "application/json"}}):
                assert elsewhere.evaluate(read, [f"{served}/v1/whoami", init]) == "blocked", init
            # the console refused in a frame: the browser shows its error page instead
            framed = elsewhere.frame_locator("#framed")
            expect(framed.locator("#key")).to_have_count(0)
            assert all(not f.url.startswith(served) for f in elsewhere.frames[1:])
            with elsewhere.expect_navigation():
                elsewhere.evaluate("document.getElementById('csrf').submit()")
            assert '"unauthorized"' in elsewhere.content()
        finally:
            other.close()
        assert jobs() == before
