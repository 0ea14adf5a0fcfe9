"""A second review of the console, in real headless Chromium and over real HTTP against the
API (real PostgreSQL and Redis): what a view does after it is left (no polling, nothing on the
next view's status line), a request or a stream that hangs, the headers of every answer
under ``/console``, and what a screen reader is told (not every poll)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from urllib.parse import urlparse

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from .console_support import browser_fixture  # noqa: F401
from .test_console_safety import page_fixture, sign_in, tenant_key_fixture  # noqa: F401
from .test_console_static import served  # noqa: F401

JOBS = re.compile(r"/v1/jobs(\?|$)")
EVENTS = re.compile(r"/v1/events(\?|$)")
REPORTS = re.compile(r"/v1/reports/costs\?")


def until(page: Page, condition: Callable[[], bool], timeout_s: float = 20) -> None:
    """Wait for ``condition`` (on what the page's handlers saw), letting playwright deliver
    its events meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(50)


def test_a_view_left_while_it_reloads_after_its_stream_ended_stops_polling(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """The jobs feed ends (a proxy's idle timeout, a restart) and the view re-reads the list;
    the operator opens another view before that answer comes. Before, follow() went on once
    the read ended as if its view were still shown: it started polling the jobs list (every
    few seconds, for as long as the next view was shown) and set the status line of the
    next view to "polling"."""
    seen: list[str] = []  # "jobs" / "backends", in the order the console asked
    page.on("request", lambda r: seen.extend(
        [name for name, path in (("jobs", "/v1/jobs"), ("backends", "/v1/backends"))
         if urlparse(r.url).path == path]))
    streams: list[Route] = []
    # the feed is held until the list's first read is done
    page.route(EVENTS, lambda route: streams.append(route))
    held: list[Route] = []
    asked = 0

    def jobs(route: Route) -> None:
        nonlocal asked
        asked += 1
        if asked <= 2:  # the view's first read, and the one when its stream opens
            route.continue_()
        else:           # the one after the stream ended: its answer is late
            held.append(route)

    page.route(JOBS, jobs)
    page.goto(f"{served}/console/?poll=1")
    page.get_by_label("API key").fill(tenant_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{served}/console/?poll=1#/jobs")
    expect(page.locator("#jobs-body")).to_contain_text("No job matches.")
    # the feed opens, and ends at once
    streams[0].fulfill(status=200, headers={"Content-Type": "text/event-stream",
                                            "Cache-Control": "no-cache"}, body="")
    until(page, lambda: len(held) == 1)
    page.get_by_role("link", name="Backends", exact=True).click()
    expect(page.locator("#backends-body")).to_contain_text("backends")
    left_at = len(seen)
    held[0].continue_()  # the late answer (what the view asks after it is recorded all the same)
    # three polls of the backends view (one a second, ?poll=1) after the late answer
    until(page, lambda: seen[left_at:].count("backends") >= 3)
    assert "jobs" not in seen[left_at:], seen[left_at:]
    expect(page.locator("#status")).to_contain_text("backends updated")


def test_every_answer_under_console_carries_the_security_headers(
    served: str,  # noqa: F811
) -> None:
    """docs/console.md: "Every console answer carries a strict Content-Security-Policy, …
    nosniff …". Before, only the files found had them: a 404 (a mistyped or an old file's
    path) or a 405 under /console went out with none (no nosniff, no frame-ancestors)."""
    ok = httpx.get(f"{served}/console/", timeout=5)
    assert ok.status_code == 200
    answers = {
        "missing file": httpx.get(f"{served}/console/nope.js", timeout=5),
        "a folder": httpx.get(f"{served}/console/js/", timeout=5),
        "markup in the path": httpx.get(f"{served}/console/%3Cb%3Ex%3C%2Fb%3E", timeout=5),
        "POST": httpx.post(f"{served}/console/", timeout=5),
        # made by a middleware outside the app's routes (the body limit): before, the
        # console's headers were added inside all of them
        "too big": httpx.post(f"{served}/console/", content=b"x" * (2 << 20), timeout=5),
    }
    assert answers["POST"].status_code == 405
    assert answers["POST"].headers["allow"] == "GET, HEAD"
    assert answers["too big"].status_code == 413
    for name, r in answers.items():
        assert r.status_code in (404, 405, 413), name
        for header in ("content-security-policy", "x-content-type-options", "referrer-policy",
                       "x-frame-options"):
            assert r.headers.get(header) == ok.headers[header], (name, header)


def test_an_answer_that_never_comes_is_named_so(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """An API (or a proxy) that holds a request, or a connection dead since the laptop slept:
    before, fetch() waited for ever, the view never polled again and its status line went on
    saying when it was last updated, as if nothing were wrong."""
    page.clock.install()
    sign_in(page, served, tenant_key)
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    held: list[Route] = []
    page.route("**/v1/backends", lambda route: held.append(route))
    page.goto(f"{served}/console/#/backends")
    until(page, lambda: len(held) == 1)
    page.clock.fast_forward(31_000)
    expect(page.locator("#status")).to_contain_text(
        "error: no answer from the API within 30 s")


def test_a_stream_that_stays_silent_is_a_dropped_one(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """The API writes to an open stream at least every ORCH_EVENTS_PING_S (50 s at most).
    Before, a feed whose answer never came (or went silent) was waited on for ever: the jobs
    list was read once and never again, live or polled."""
    page.clock.install()
    lists: list[str] = []
    page.on("request", lambda r: lists.append(r.url) if JOBS.search(r.url) else None)
    held: list[Route] = []
    page.route(EVENTS, lambda route: held.append(route))
    sign_in(page, served, tenant_key)
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{served}/console/#/jobs")
    expect(page.locator("#jobs-body")).to_contain_text("No job matches.")
    until(page, lambda: len(held) == 1)
    read = len(lists)
    page.clock.fast_forward(61_000)
    expect(page.locator("#status")).to_have_attribute("data-updates", "polling")
    until(page, lambda: len(lists) > read)  # polled meanwhile
    until(page, lambda: len(held) == 2)     # and the stream tried again


def test_a_malformed_job_link_is_answered_not_a_blank_page(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """``#/job/%E0`` (a link cut in the middle of an escape): before, decodeURIComponent threw
    in the router and the page stayed blank; now the id is asked for as typed and the API's
    refusal is shown (the page fixture fails the test on any uncaught page error)."""
    sign_in(page, served, tenant_key)
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{served}/console/#/job/%E0")
    expect(page.get_by_role("heading", name="Job not found")).to_be_visible()


# in-page: how many answers of the cost report the console has read (their JSON, or not)
COUNT_REPORTS_READ = """() => { window.reportsRead = 0; const json = Response.prototype.json;
  Response.prototype.json = function () {
    return json.call(this).finally(() => {
      if (this.url.includes('/v1/reports/costs')) window.reportsRead++; }); }; }"""
# in-page: every text the status line has had from now on
WATCH_STATUS = """() => { window.statusSeen = []; const status = document.getElementById('status');
  new MutationObserver(() => window.statusSeen.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true }); }"""


@pytest.mark.parametrize("answer", ["answered", "refused"])
def test_a_view_left_while_it_loads_writes_nothing_on_the_next_views_status_line(
    served: str, tenant_key: str, page: Page, answer: str,  # noqa: F811
) -> None:
    """The spend view asks 14 reports; the operator opens Jobs before they are answered.
    Before, the left view's load ended by writing "spend updated …" (or its error) on the
    status line of the jobs list, which, live, writes there at its events only: the list
    said "spend updated" for as long as no job moved."""
    held: list[Route] = []
    page.route(REPORTS, lambda route: held.append(route))
    page.goto(f"{served}/console/")
    page.evaluate(COUNT_REPORTS_READ)
    page.get_by_label("API key").fill(tenant_key)
    page.get_by_role("button", name="Sign in").click()  # opens on Spend
    until(page, lambda: len(held) == 14)  # one report a day
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("#status")).to_have_attribute("data-updates", "live")
    expect(page.locator("#status")).to_contain_text("jobs updated")
    page.evaluate(WATCH_STATUS)
    for route in held:
        if answer == "answered":
            route.continue_()
        else:
            route.fulfill(status=503, headers={"Retry-After": "2"}, body="busy")
    page.wait_for_function("() => window.reportsRead >= 14")
    page.evaluate("() => new Promise(done => setTimeout(done, 0))")  # what follows has run
    seen: list[str] = page.evaluate("window.statusSeen")
    # the jobs list reads itself again once its stream is open: that is its own to write
    assert [text for text in seen if not text.startswith("jobs updated")] == [], seen
    expect(page.locator("#status")).to_contain_text("jobs updated")


# in-page: every text the page's live regions take from now on (what a screen reader reads)
HEAR = """() => { window.heard = [];
  const regions = document.querySelectorAll(
    '[aria-live]:not([aria-live="off"]), [role="status"], [role="alert"], [role="log"]');
  for (const r of regions) new MutationObserver(() => window.heard.push(r.textContent))
    .observe(r, { childList: true, characterData: true, subtree: true }); }"""


def test_a_screen_reader_hears_an_error_and_the_recovery_not_every_poll(
    served: str, tenant_key: str, page: Page,  # noqa: F811
) -> None:
    """The status line was a polite live region, and every poll rewrote it ("backends updated
    12:00:03", every 3 s; every second here): a screen reader read it out again and again.
    It shows that still; what is announced is what matters, once: an error (not again at
    each poll that meets it), then the view updated again."""
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url)
            if urlparse(r.url).path == "/v1/backends" else None)
    page.goto(f"{served}/console/?poll=1#/backends")
    page.get_by_label("API key").fill(tenant_key)
    page.get_by_role("button", name="Sign in").click()
    status = page.locator("#status")
    expect(status).to_contain_text("backends updated")
    page.evaluate(HEAR)

    def polls(n: int) -> None:
        """``n`` more polls handled (the next one goes out once the last is handled)."""
        at = len(asked)
        until(page, lambda: len(asked) >= at + n + 1)

    polls(3)
    assert page.evaluate("window.heard") == []
    page.route("**/v1/backends", lambda route: route.abort("connectionrefused"))
    polls(3)
    heard = page.evaluate("window.heard")
    assert len(heard) == 1 and "error: cannot reach the API" in heard[0], heard
    expect(status).to_contain_text("error: cannot reach the API")  # shown all along
    page.unroute("**/v1/backends")
    polls(3)
    heard = page.evaluate("window.heard")
    assert len(heard) == 2 and "backends updated" in heard[1], heard
