"""What a security review of the console found, in real headless Chromium and over real HTTP
against the API (real PostgreSQL and Redis): the key never reaches a URL, even when the
console's script has not run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page
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

