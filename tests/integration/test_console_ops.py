"""The console as an operator uses it, in real headless Chromium over real HTTP against the
API (real PostgreSQL and Redis): a reload while the API refuses for a while (429) keeps the key,
and asks again when the answer's ``Retry-After`` says (within bounds); so do a view's polls and
its event stream's reconnections; markup in what the API answers is shown as text, and a long
unbroken value (a provider's error with a long URL in it) wraps inside its column rather than
over the next one; after Cancel job the focus is on the job's heading (on the button again when
the cancel was refused)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect
from sqlalchemy import Engine

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.settings import Settings
from orchestrator.store.keys import create_key

from .api_fixture import Api, api_fixture, start_api, video  # noqa: F401
from .console_support import browser_fixture, shot  # noqa: F401
from .e2e_support import Rig
from .test_console_safety import page_fixture, sign_in, tenant_key_fixture  # noqa: F401
from .test_console_static import served  # noqa: F401

LIMIT = 40  # requests per tenant per minute: room for signing in, then used up by the test


@pytest.fixture(name="limited")
def limited_fixture(db: Engine, database_url: str, redis_url: str) -> Iterator[str]:
    container = Container(Settings(database_url=database_url, redis_url=redis_url,
                                   api_rate_limit=LIMIT, api_rate_window_s=60))
    running = start_in_thread(container)
    try:
        yield running.url
    finally:
        running.stop()


def use_up_the_limit(url: str, key: str) -> None:
    """The tenant's producers use up its rate limit (the next request is answered 429)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=10) as producer:
        for _ in range(LIMIT + 1):
            if producer.get("/v1/whoami").status_code == 429:
                return
    pytest.fail("the rate limit never answered 429")


def sign_in_at(page: Page, url: str, key: str, where: str) -> None:
    """Sign in on the console at ``where`` (``?poll=1#/backends``): straight to that view,
    sparing the tenant's rate limit the spend view's 14 reports."""
    page.goto(f"{url}/console/{where}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#identity")).to_contain_text("tenant")


@pytest.fixture(name="rated")
def rated_fixture(rig: Rig) -> Iterator[Api]:
    """The API as ``limited`` has it, on the e2e rig (where a job can be submitted)."""
    a = start_api(rig, ApiConfig(rate_limit=LIMIT, rate_window_s=60, key_cache_s=0))
    try:
        yield a
    finally:
        a.close()


def until(page: Page, condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(50)


def test_a_reload_while_the_api_refuses_keeps_the_key(
    limited: str, db: Engine, page: Page,
) -> None:
    """docs/console.md: the key is gone when the tab closes or on Sign out, and "a 401 signs
    the console out". Before, reloading the page while the tenant's producers had used up its
    rate limit (429; a 503 or the API down the same) forgot the key: the operator had to find
    it again (``orchestrator up`` prints it once)."""
    with db.begin() as conn:
        key = create_key(conn, "busy")
    page.clock.install()  # its retry waits the Retry-After: up to the 60 s window's end
    sign_in(page, limited, key)
    expect(page.locator("#identity")).to_contain_text("tenant busy")
    page.goto(f"{limited}/console/?poll=600#/backends")
    expect(page.locator("#backends-body table")).to_be_visible()

    held: list[Route] = []
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if r.url.endswith("/v1/whoami") else None)
    page.route("**/v1/whoami", lambda route: held.append(route) if not held
               else route.continue_())
    page.reload()
    until(page, lambda: len(held) == 1)
    # the tenant's producers use up its limit meanwhile
    with httpx.Client(base_url=limited, headers={"Authorization": f"Bearer {key}"},
                      timeout=10) as producer:
        for _ in range(LIMIT + 1):
            if producer.get("/v1/whoami").status_code == 429:
                break
        else:
            pytest.fail("the rate limit never answered 429")
    held[0].continue_()
    expect(page.locator("#signin-error")).to_contain_text(
        re.compile(r"Cannot sign in: rate limit of 40 requests per 60 s exceeded.*trying again"))
    assert page.evaluate("sessionStorage.getItem('orchestrator.console.key')") == key
    before = len(asked)
    page.clock.fast_forward(61_000)
    until(page, lambda: len(asked) > before, timeout_s=15)  # and it asks again by itself
    assert key not in page.content()


# the page's calls to fetch(), counted in the page itself: with its clock paused, what a
# timer asked is counted by the time run_for() returns
COUNT_FETCHES = """() => { window.asked = 0; const real = window.fetch;
    window.fetch = (...args) => { window.asked++; return real(...args); }; }"""


def hold_whoami(page: Page, path: str = "/v1/whoami") -> list[Route]:
    """Hold the console's next ``GET <path>``; the later ones go on to the API."""
    held: list[Route] = []
    page.route(f"**{path}", lambda route: held.append(route) if not held
               else route.continue_())
    return held


def pause_clock(page: Page) -> float:
    """Stop the page's clock on the next whole second (a Retry-After date has no finer
    one); its timers then fire only as the test runs the clock on."""
    now = math.ceil(page.evaluate("Date.now()") / 1000) + 1
    page.clock.pause_at(now)
    return float(now)


def asks_again_after(page: Page, wait_ms: int) -> None:
    """The console asks nothing until ``wait_ms`` have passed, then asks again."""
    page.evaluate(COUNT_FETCHES)
    page.clock.run_for(wait_ms - 1)
    assert page.evaluate("window.asked") == 0, f"asked again before {wait_ms} ms"
    page.clock.run_for(1)
    # at least: once answered, the signed-in views ask for their own data at once
    assert page.evaluate("window.asked") >= 1, f"not asked again at {wait_ms} ms"


def test_a_reload_refused_with_retry_after_asks_again_when_it_says(
    limited: str, db: Engine, page: Page,
) -> None:
    """The API's 429 says in ``Retry-After`` when the tenant's rate window ends. Before, the
    console asked ``GET /v1/whoami`` again every 5 s regardless: each ask refused, and counted
    against the tenant's limit that its producers share. The console reads the header of
    this same-origin answer (no CORS exposure needed) and waits that long."""
    with db.begin() as conn:
        key = create_key(conn, "patient")  # a tenant whose rate window is its own
    page.clock.install()
    sign_in(page, limited, key)
    expect(page.locator("#identity")).to_contain_text("tenant patient")
    held = hold_whoami(page)
    page.reload()
    until(page, lambda: len(held) == 1)
    with httpx.Client(base_url=limited, headers={"Authorization": f"Bearer {key}"},
                      timeout=10) as producer:
        for _ in range(LIMIT + 1):
            if producer.get("/v1/whoami").status_code == 429:
                break
        else:
            pytest.fail("the rate limit never answered 429")
    pause_clock(page)
    with page.expect_response(lambda r: r.url.endswith("/v1/whoami")) as refused:
        held[0].continue_()
    assert refused.value.status == 429
    retry_after = int(refused.value.headers["retry-after"])  # the rest of the 60 s window
    assert 5 < retry_after <= 60, retry_after
    expect(page.locator("#signin-error")).to_contain_text(
        f"rate limit of 40 requests per 60 s exceeded; retry in {retry_after} s "
        f"(trying again in {retry_after} s)")
    asks_again_after(page, retry_after * 1000)
    assert page.evaluate("sessionStorage.getItem('orchestrator.console.key')") == key


@pytest.mark.parametrize(("retry_after", "wait_s"), [
    ("37", 37),
    ("date in 40 s", 40),
    ("1", 5),         # never sooner than without one
    ("86400", 300),   # nor later than 5 minutes
    (None, 5),
    ("soon", 5),      # unreadable: as if there were none
])
def test_a_reload_refused_by_a_proxy_waits_its_retry_after_within_bounds(
    served: str, tenant_key: str, page: Page, retry_after: str | None,  # noqa: F811
    wait_s: int,
) -> None:
    """A proxy or a load balancer in front of the API answers ``503`` while the API
    restarts, with ``Retry-After`` in seconds or as an HTTP date (RFC 9110), or none."""
    page.clock.install()
    sign_in(page, served, tenant_key)
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    held = hold_whoami(page)
    page.reload()
    until(page, lambda: len(held) == 1)
    now = pause_clock(page)
    headers = {"Content-Type": "text/html"}
    if retry_after == "date in 40 s":
        headers["Retry-After"] = formatdate(now + 40, usegmt=True)
    elif retry_after is not None:
        headers["Retry-After"] = retry_after
    held[0].fulfill(status=503, headers=headers, body="<h1>503 Service Unavailable</h1>")
    expect(page.locator("#signin-error")).to_contain_text(f"(trying again in {wait_s} s)")
    asks_again_after(page, wait_s * 1000)
    expect(page.locator("#identity")).to_contain_text("tenant acme")  # the API answers it


MARKUP = '<img src=x id=planted onerror="window.planted=1"><script>window.planted=2</script>'
# a provider's error quoting a presigned URL: one unbroken run of 600 characters
LONG_URL = ("https://storage.example.invalid/out/video.mp4?X-Amz-Signature="
            + "0123456789abcdef" * 34)


def planted(route: Route) -> None:
    """The API's real answer for the job, with markup and a long URL in what a provider or a
    catalogue may put there (the API lets no markup into backend names or metadata, so it
    is planted in the answer: what is checked is how the console shows it)."""
    answer = route.fetch()
    job: dict[str, Any] = answer.json()
    failed = {"code": "invalid_input", "message": f"{MARKUP} the provider said: {LONG_URL}"}
    job.update(status="failed", error=failed, finished_at=job["created_at"], attempts=[{
        "backend": f"vid{MARKUP}", "external_id": "p_1", "outcome": "failed", "error": failed,
        "cost_usd": 0.1, "possible_cost_usd": None, "started_at": job["created_at"],
        "finished_at": job["created_at"]}])
    job["route"]["excluded"].append({"code": "x", "backend": MARKUP, "reason": MARKUP})
    route.fulfill(response=answer, body=json.dumps(job))


def test_what_the_api_answers_is_text_and_a_long_value_wraps_in_its_column(
    api: Api, page: Page,
) -> None:
    """Before, a long unbroken value in a job's timeline (a provider's error quoting a
    presigned URL) ran out of its column, over the route's table beside it, and made the page
    scroll sideways across thousands of pixels."""
    job = api.tenant().post("/v1/jobs", json=video()).json()
    page.set_viewport_size({"width": 1366, "height": 800})
    page.route(re.compile(r"/v1/jobs/[0-9a-f-]+(\?|$)"), planted)
    sign_in(page, api.url, api.keys["acme"])
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{api.url}/console/#/job/{job['id']}")
    timeline = page.get_by_role("list", name="Timeline")
    expect(timeline).to_contain_text(f"Attempt 1 on vid{MARKUP}")
    expect(timeline).to_contain_text(LONG_URL)
    expect(page.get_by_role("table", name="Left out")).to_contain_text(MARKUP + MARKUP)
    assert page.evaluate("[window.planted, document.querySelectorAll("
                         "'#planted, main script, main img').length]") == [None, 0]
    # nothing runs out of its column, nor makes the page wider than the window
    overflow = page.evaluate("""() => [...document.querySelectorAll('#job-body section')]
        .map(s => s.scrollWidth - s.clientWidth)
        .concat([document.documentElement.scrollWidth - window.innerWidth])""")
    assert all(px <= 1 for px in overflow), overflow
    shot(page, "job-long-error")
    page.unroute_all(behavior="ignoreErrors")  # a re-read in flight as the tab closes


def test_a_key_signed_in_while_a_retry_is_answered_stays_signed_in(
    limited: str, db: Engine, page: Page,
) -> None:
    """The reload's retry for the stored key is in flight when the operator signs in with
    another key: the retry's late refusal (429) must not send the new session back to the
    sign-in page, nor its identity be the old key's."""
    with db.begin() as conn:
        old, new = create_key(conn, "busy"), create_key(conn, "calm")
    page.clock.install()  # the retry waits the Retry-After: up to the 60 s window's end
    sign_in(page, limited, old)
    expect(page.locator("#identity")).to_contain_text("tenant busy")
    with httpx.Client(base_url=limited, headers={"Authorization": f"Bearer {old}"},
                      timeout=10) as producer:  # the old key's tenant uses up its limit
        for _ in range(LIMIT + 1):
            if producer.get("/v1/whoami").status_code == 429:
                break
        else:
            pytest.fail("the rate limit never answered 429")
    page.reload()
    expect(page.locator("#signin-error")).to_contain_text("trying again")

    held: list[Route] = []

    def hold_old(route: Route) -> None:
        if route.request.headers.get("authorization") == f"Bearer {old}":
            held.append(route)
        else:
            route.continue_()

    page.route("**/v1/whoami", hold_old)
    page.clock.fast_forward(61_000)
    until(page, lambda: len(held) == 1, timeout_s=15)  # the next retry, held
    page.get_by_label("API key").fill(new)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#identity")).to_contain_text("tenant calm")
    # whether the sign-in page shows, even for a moment, from here on
    page.evaluate("""() => { window.signinShown = false;
        new MutationObserver(() => { if (!document.getElementById("signin").hidden)
            window.signinShown = true; }).observe(document.getElementById("signin"),
                                                  { attributes: true }); }""")
    with page.expect_response(lambda r: r.url.endswith("/v1/whoami")
                              and r.status == 429) as refused:
        held[0].continue_()  # the old key's retry is refused now
    refused.value.finished()
    # a task queued after the answer's own: the page has handled it by then
    page.evaluate("() => new Promise(done => setTimeout(done, 0))")
    assert page.evaluate("window.signinShown") is False
    expect(page.locator("#identity")).to_contain_text("tenant calm")
    expect(page.locator("#signin")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('orchestrator.console.key')") == new


def test_a_poll_refused_with_retry_after_waits_what_it_says(
    limited: str, db: Engine, page: Page,
) -> None:
    """The tenant's producers use up its rate limit while the operator watches Backends. Before,
    the view went on polling every second (``?poll=1``; 3 s without it) while the API answered
    ``429`` with ``Retry-After: <the rest of the window>``: each poll refused again, and
    counted against the limit the producers share. Now the next poll waits what it says."""
    with db.begin() as conn:
        key = create_key(conn, "poller")
    page.clock.install()
    sign_in_at(page, limited, key, "?poll=1#/backends")
    expect(page.locator("#backends-body table")).to_be_visible()
    held = hold_whoami(page, "/v1/backends")
    until(page, lambda: len(held) == 1)  # the next poll, held while the limit is used up
    use_up_the_limit(limited, key)
    pause_clock(page)
    with page.expect_response(lambda r: r.url.endswith("/v1/backends")) as refused:
        held[0].continue_()
    assert refused.value.status == 429
    retry_after = int(refused.value.headers["retry-after"])  # the rest of the 60 s window
    assert 1 < retry_after <= 60, retry_after
    status = page.locator("#status")
    expect(status).to_contain_text("error: rate limit")
    said = status.inner_text()
    asks_again_after(page, retry_after * 1000)
    assert said.startswith(f"error: rate limit of 40 requests per 60 s exceeded; retry in "
                           f"{retry_after} s (trying again in {retry_after} s)"), said


# the view's calls to fetch() from now on, by path, counted in the page (see COUNT_FETCHES)
LOG_FETCHES = """() => { window.fetched = []; const real = window.fetch;
    window.fetch = (url, ...rest) => {
      window.fetched.push(new URL(url, location.href).pathname); return real(url, ...rest); }; }"""
VISIBILITY = """([hidden]) => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_a_stream_refused_with_retry_after_is_tried_again_when_it_says(
    limited: str, db: Engine, page: Page,
) -> None:
    """The jobs list's event stream is refused ``429`` (the tenant's rate limit) when it
    reconnects. Before, it was tried again after 1 s (then 2, 5, 10, 30 s), and the list was
    polled at once: both refused again, whatever ``Retry-After`` said. Now neither is asked
    before it has passed."""
    with db.begin() as conn:
        key = create_key(conn, "streamer")
    page.clock.install()
    sign_in_at(page, limited, key, "?poll=600#/jobs")
    status = page.locator("#status")
    expect(status).to_have_attribute("data-updates", "live")
    # a hidden tab closes the stream; it reconnects when the tab is shown again
    with page.expect_event("requestfailed", predicate=lambda r: r.url.endswith("/v1/events")):
        page.evaluate(VISIBILITY, [True])
    use_up_the_limit(limited, key)
    pause_clock(page)
    page.evaluate(LOG_FETCHES)
    with page.expect_response(lambda r: r.url.endswith("/v1/events")) as refused:
        page.evaluate(VISIBILITY, [False])
    assert refused.value.status == 429
    retry_after = int(refused.value.headers["retry-after"])
    assert 1 < retry_after <= 60, retry_after
    expect(status).to_have_attribute("data-updates", "polling")
    page.clock.run_for(retry_after * 1000 - 1)
    assert page.evaluate("window.fetched") == ["/v1/events"], "asked again before Retry-After"
    page.clock.run_for(1)
    # the stream tried again, and the list polled meanwhile
    assert sorted(page.evaluate("window.fetched")) == ["/v1/events", "/v1/events", "/v1/jobs"]


def submitted(api: Api, key: str) -> str:
    """A job of the key's tenant; no worker runs here, so it stays queued."""
    answer = api.client(key).post("/v1/jobs", json=video())
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_after_cancel_job_the_focus_is_on_the_jobs_heading(rated: Api, page: Page) -> None:
    """A keyboard user presses Cancel job: the button goes with the job's end. Before, the
    focus went with it, back to the top of the page (the next Tab: the skip link), and the
    screen reader said nothing of what became of the job. Now it is on the job's heading,
    which says it: cancelled."""
    key = rated.new_key("canceller")
    job = submitted(rated, key)
    sign_in_at(page, rated.url, key, f"#/job/{job}")
    button = page.get_by_role("button", name="Cancel job")
    button.focus()
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    heading = page.get_by_role("heading", level=2)
    expect(heading).to_contain_text("cancelled")
    expect(button).to_have_count(0)
    expect(heading).to_be_focused()


def test_a_refused_cancel_gives_the_focus_back_to_its_button(rated: Api, page: Page) -> None:
    """The cancel is refused (here: the tenant's rate limit is used up). Before, the button
    stayed disabled (the job could not be re-read either) and the focus was lost to the
    page; now the button is enabled again, with the focus, to try again."""
    key = rated.new_key("refused")
    job = submitted(rated, key)
    sign_in_at(page, rated.url, key, f"?poll=600#/job/{job}")
    button = page.get_by_role("button", name="Cancel job")
    button.focus()
    use_up_the_limit(rated.url, key)
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.url.endswith("/cancel")) as refused:
        page.keyboard.press("Enter")
    assert refused.value.status == 429
    expect(page.locator("#status")).to_contain_text("rate limit")
    expect(button).to_be_enabled()
    expect(button).to_be_focused()
