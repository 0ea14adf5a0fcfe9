"""The console's live updates in real headless Chromium against ``orchestrator up``: with
polling set to 10 minutes (``?poll=600``) a job the SDK submits still appears and finishes in
the jobs list and on its page, so the event streams drive them; a hidden tab closes its stream
and resumes with Last-Event-ID; a burst of jobs is re-read in batches (at most once a second),
not one request per event; with the ``/events`` routes answering 404 (a proxy in front of
the API) the console says "polling" and still shows the job finish; a feed that cannot connect is
polled and retried until live; the SSE parser takes a stream cut anywhere; a job's page shows
the late charge of a job cancelled while its provider works, then says its updates ended.
Screenshots: ``test-artifacts/console/``."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, Request, Route, expect

from orchestrator.client import Client

from .console_support import (  # noqa: F401
    VIDEO,
    EventsBlockingProxy,
    Stack,
    browser_fixture,
    page_fixture,
    shot,
    sign_in,
    stack_fixture,
    view,
)

SLOW = "vid-standard"
# in-page: how many answers the console has had from one API path (Resource Timing)
FETCHED = ("([path]) => performance.getEntriesByType('resource')"
           ".filter(e => new URL(e.name).pathname === path).length")
# the same, waited for in-page: a function and its argument (a string expression would be
# evaluated by the page, which its Content-Security-Policy forbids)
AT_LEAST = ("([path, n]) => performance.getEntriesByType('resource')"
            ".filter(e => new URL(e.name).pathname === path).length >= n")
VISIBILITY = """([hidden]) => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def path_is(path: str) -> Callable[[Request], bool]:
    return lambda r: urlparse(r.url).path == path


@pytest.fixture(name="slow")
def slow_fixture(stack: Stack) -> Iterator[None]:
    """Jobs on SLOW run 8 s: long enough to see them before they end."""
    stack.control(SLOW, duration_ms=8000)
    yield
    stack.control(SLOW, duration_ms=1000)


def submit(stack: Stack) -> str:
    with Client(base_url=stack.url, api_key=stack.creds["tenant_key"]) as sdk:
        return sdk.submit(kind="video", tier="standard", input=VIDEO, backend=SLOW).id


def test_the_event_streams_drive_the_jobs_list_and_the_job_page(
        stack: Stack, page: Page, slow: None) -> None:
    sign_in(page, stack, stack.creds["tenant_key"], "tenant demo", query="?poll=600")
    view(page, "Jobs")
    status = page.locator("#status")
    expect(status).to_have_attribute("data-updates", "live")
    expect(status).to_contain_text("live updates")
    # the list was read at the start and when the stream opened; nothing polls it after that
    page.wait_for_function(AT_LEAST, arg=["/v1/jobs", 2])
    lists = page.evaluate(FETCHED, ["/v1/jobs"])

    job_id = submit(stack)
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "succeeded", timeout=90_000)
    expect(row).to_contain_text(SLOW)
    assert page.evaluate(FETCHED, ["/v1/jobs"]) == lists  # no poll: the feed's events did it
    assert page.evaluate(FETCHED, [f"/v1/jobs/{job_id}"]) >= 1
    shot(page, "live-jobs")

    # a hidden tab closes the stream; shown again, it resumes after the last event it had
    with page.expect_event("requestfailed", predicate=path_is("/v1/events")):
        page.evaluate(VISIBILITY, [True])
    with page.expect_request(path_is("/v1/events")) as resumed:
        page.evaluate(VISIBILITY, [False])
    # the id: of the last message, which is its event's id
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        resumed.value.headers.get("last-event-id", ""))
    answer = resumed.value.response()
    assert answer is not None and answer.status == 200  # the API took it up from there
    expect(status).to_have_attribute("data-updates", "live")

    # the job page: leaving the list closes its feed; the job's own stream re-renders it
    second = submit(stack)
    with page.expect_event("requestfailed", predicate=path_is("/v1/events")):
        page.goto(f"{stack.url}/console/?poll=600#/job/{second}")
    timeline = page.get_by_role("list", name="Timeline")
    expect(timeline).to_contain_text(f"Attempt 1 on {SLOW}", timeout=30_000)
    expect(timeline).to_contain_text("in flight")
    expect(status).to_have_attribute("data-updates", "live")
    expect(timeline).to_contain_text("Finished", timeout=90_000)
    expect(page.locator("#job-body h2")).to_contain_text("succeeded")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert page.evaluate(FETCHED, [f"/v1/jobs/{second}"]) >= 3  # start, open, its events
    # the job's stream ended after its terminal event (a finished fetch has a timing entry)
    page.wait_for_function(AT_LEAST, arg=[f"/v1/jobs/{second}/events", 1])
    expect(status).to_have_attribute("data-updates", "ended")
    shot(page, "live-job")


BURST = 60     # jobs submitted at once, each with 3 or more events (queued, started, the end)
FAST = "txt-small"
FINAL = ("succeeded", "failed", "cancelled")
# in-page: each listed job's row status (None: no row)
ROW_STATUS = ("([ids]) => ids.map(id => document.querySelector(`tr[data-job='${id}']`)"
              "?.dataset.status ?? null)")


def test_a_burst_of_events_is_read_in_batches_not_one_request_each(
        stack: Stack, page: Page) -> None:
    """A busy tenant's feed carries hundreds of events a second. Before, the Jobs view re-read
    a job (GET /v1/jobs/{id}) at every event: one open tab sent as many requests as there were
    events, with the tenant's key, against the rate limit its producers share
    (ORCH_API_RATE_LIMIT), so an operator looking could get real submissions refused (429).
    Now the events' jobs are gathered and re-read at most once a second (one list read when
    there are many), and every row still ends in its final status."""
    sign_in(page, stack, stack.creds["tenant_key"], "tenant demo", query="?poll=600")
    view(page, "Jobs")
    page.get_by_label("Newest").select_option("100")  # the whole burst fits in the list
    status = page.locator("#status")
    expect(status).to_have_attribute("data-updates", "live")
    page.wait_for_function(AT_LEAST, arg=["/v1/jobs", 2])  # the first reads are not counted
    sent: list[float] = []  # when the page asked GET /v1/jobs or /v1/jobs/{id}
    page.on("request", lambda r: sent.append(time.monotonic()) if re.fullmatch(
        r"/v1/jobs(/[^/]+)?", urlparse(r.url).path) and r.method == "GET" else None)

    started = time.monotonic()
    with Client(base_url=stack.url, api_key=stack.creds["tenant_key"]) as sdk:
        ids = [sdk.submit(kind="text", tier="standard", backend=FAST,
                          input={"prompt": f"burst {i}", "max_tokens": 8}).id
               for i in range(BURST)]
    deadline = time.monotonic() + 120
    while True:  # every row in its final status, read by the view (no poll: ?poll=600)
        rows = page.evaluate(ROW_STATUS, [ids])
        if all(s in FINAL for s in rows):
            break
        assert time.monotonic() < deadline, rows
        page.wait_for_timeout(100)
    burst_s = time.monotonic() - started
    asked = len(sent)
    shot(page, "live-jobs-burst")
    # a batch a second at most, each one list read or up to five jobs' own (a slow machine
    # spreads the burst into small batches), plus the first: before, about one per event
    # (70 of this burst's 180 and more, in 3 s)
    assert asked <= 5 * (burst_s + 1) + 2, (asked, round(burst_s, 1))


def test_batches_come_at_most_once_a_period_and_stop_with_their_view(
        stack: Stack, page: Page) -> None:
    """live.js's batched(), in the page on a paused clock: the first batch comes at once, the
    next a period after it (the keys seen meanwhile, once each), none once stopped (the view
    left: ctx.timers)."""
    page.clock.install(time=1_000_000)
    page.goto(f"{stack.url}/console/")
    page.clock.pause_at(1_001_000)
    page.evaluate("""async () => {
      const { batched } = await import("./js/live.js");
      window.__ctx = { timers: [] };
      window.__batches = [];
      window.__add = batched(window.__ctx, 1000, keys => window.__batches.push(keys));
    }""")

    def add(*keys: str) -> None:
        page.evaluate("([keys]) => keys.forEach(k => window.__add(k))", [list(keys)])

    def batches() -> list[list[str]]:
        return page.evaluate("() => window.__batches")

    add("a", "b", "a")
    assert batches() == []  # not within the same turn: a chunk of events is one batch
    page.clock.run_for(1)
    assert batches() == [["a", "b"]]
    add("c", "d", "c")
    page.clock.run_for(998)
    assert batches() == [["a", "b"]]
    page.clock.run_for(2)
    assert batches() == [["a", "b"], ["c", "d"]]
    page.clock.run_for(5000)  # a quiet feed: no empty batches
    assert len(batches()) == 2
    add("e")  # after a quiet period: at once again
    page.clock.run_for(1)
    assert batches()[-1] == ["e"]
    add("f")
    page.evaluate("() => window.__ctx.timers.forEach(t => t.stop())")  # the view is left
    add("g")
    page.clock.run_for(5000)
    assert batches()[-1] == ["e"] and len(batches()) == 3


def test_a_batch_waits_for_the_last_one_to_be_read(stack: Stack, page: Page) -> None:
    """On a slow API the next batch waits for the last one's reads (the promise its function
    returns) and gathers meanwhile: before, a batch went every period whatever, and a few
    jobs' reads queued up behind each other without bound."""
    page.clock.install(time=1_000_000)
    page.goto(f"{stack.url}/console/")
    page.clock.pause_at(1_001_000)
    page.evaluate("""async () => {
      const { batched } = await import("./js/live.js");
      window.__batches = [];
      window.__add = batched({ timers: [] }, 1000, keys => {
        window.__batches.push(keys);
        return new Promise(done => { window.__read = done; });  // read when the test says
      });
    }""")
    page.evaluate("() => window.__add('a')")
    page.clock.run_for(1)
    page.evaluate("() => ['b', 'c'].forEach(k => window.__add(k))")
    page.clock.run_for(3000)  # three periods, the first batch still being read
    assert page.evaluate("() => window.__batches") == [["a"]]
    page.evaluate("() => window.__read()")
    page.clock.run_for(1001)
    assert page.evaluate("() => window.__batches") == [["a"], ["b", "c"]]


def test_the_console_polls_when_the_event_routes_are_missing(stack: Stack, page: Page) -> None:
    proxy = EventsBlockingProxy(stack.url)
    try:
        sign_in(page, stack, stack.creds["tenant_key"], "tenant demo", base=proxy.url,
                query="?poll=1")
        view(page, "Jobs")
        status = page.locator("#status")
        expect(status).to_have_attribute("data-updates", "polling")
        expect(status).to_contain_text("polling")
        with Client(base_url=stack.url, api_key=stack.creds["tenant_key"]) as sdk:
            job_id = sdk.submit(kind="video", tier="draft", input=VIDEO).id
        row = page.locator(f'tr[data-job="{job_id}"]')
        expect(row).to_have_attribute("data-status", "succeeded", timeout=90_000)
        assert "/v1/events" in proxy.refused  # the stream was tried, and refused
        shot(page, "polling-jobs")

        page.get_by_role("link", name=f"job {job_id}").click()
        expect(page.get_by_role("list", name="Timeline")).to_contain_text("Finished")
        # polled (no stream), until it was read finished: nothing more will change
        expect(status).to_have_attribute("data-updates", "ended")
        assert f"/v1/jobs/{job_id}/events" in proxy.refused
        shot(page, "polling-job")
    finally:
        proxy.close()


def test_an_admin_follows_its_own_tenant_and_polls_the_others(stack: Stack,
                                                              page: Page) -> None:
    with stack.admin() as admin:
        own = admin.get("/v1/whoami").json()["tenant"]
    sign_in(page, stack, stack.creds["admin_key"], "admin")
    view(page, "Jobs")
    status = page.locator("#status")
    # the feed is the caller's own tenant's: "All tenants" can only be polled
    expect(status).to_have_attribute("data-updates", "polling")
    page.get_by_label("Tenant").select_option(own)
    expect(status).to_have_attribute("data-updates", "live")


# ids, names, multi-line data, a comment (the keep-alive ping), "\r\n" line ends as
# sse-starlette sends them, and a message without "event:"
STREAM = ("id: 7-1\r\nevent: job.queued\r\ndata: {\"a\":1}\r\n\r\n"
          ": ping - now\r\n\r\n"
          "id: 7-2\r\nevent: job.started\r\ndata: line one\r\ndata:line two\r\n\r\n"
          "data: no id\n\n")
PARSED = [{"id": "7-1", "event": "job.queued", "data": '{"a":1}'},
          {"id": "7-2", "event": "job.started", "data": "line one\nline two"},
          {"data": "no id"}]


def test_the_console_parses_an_event_stream_cut_anywhere(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.url}/console/")
    # the stream in two chunks cut at every place (inside "\r\n" too), in the console's parser
    got = page.evaluate(
        """async ([text]) => {
          const { readEvents } = await import("./js/live.js");
          const bytes = new TextEncoder().encode(text);
          const results = [];
          for (let cut = 0; cut <= bytes.length; cut++) {
            const body = new ReadableStream({ start(c) {
              c.enqueue(bytes.slice(0, cut)); c.enqueue(bytes.slice(cut)); c.close(); } });
            const seen = [];
            await readEvents(body, m => seen.push(m));
            results.push(JSON.stringify(seen));
          }
          return [...new Set(results)].map(r => JSON.parse(r));
        }""", [STREAM])
    assert got == [PARSED]


def test_a_stream_that_cannot_connect_is_polled_then_retried(stack: Stack, page: Page) -> None:
    # the browser's network fails every feed request (a network error, not an answer)
    tries: list[str] = []

    def fail(route: Route) -> None:
        tries.append(route.request.url)
        route.abort("connectionfailed")

    page.route(re.compile(r"/v1/events(\?|$)"), fail)
    sign_in(page, stack, stack.creds["tenant_key"], "tenant demo")
    view(page, "Jobs")
    status = page.locator("#status")
    expect(status).to_have_attribute("data-updates", "polling")
    expect(page.locator("#jobs-body > *")).to_have_count(1)  # the list is polled meanwhile
    page.wait_for_function(AT_LEAST, arg=["/v1/jobs", 2])  # … more than once
    assert tries  # and the stream was tried
    # once the network lets it through, a retry (1, 2, 5 … s apart) makes the view live
    page.unroute(re.compile(r"/v1/events(\?|$)"), fail)
    expect(status).to_have_attribute("data-updates", "live")


@pytest.mark.parametrize("through", ["stream", "polls"])
def test_a_job_page_shows_a_late_charge_then_says_its_updates_ended(
        stack: Stack, page: Page, through: str) -> None:
    """A job cancelled while its provider works ends at once; its provider, which ignores the
    stop, bills the whole run when it ends: a late ``job.charged``, for which the job's stream
    stays open. Before, the job's page said "live updates" for ever once its stream had ended;
    and polled (no stream through a proxy) it stopped at the job's end, so the charge never
    showed. Now it follows the job until its last attempt concluded, then says so."""
    stack.control(SLOW, duration_ms=15_000, ignore_cancel=True)  # billed in full, later
    proxy = EventsBlockingProxy(stack.url) if through == "polls" else None
    try:
        base = proxy.url if proxy else stack.url
        query = "?poll=1" if proxy else "?poll=600"  # live: only the stream updates it
        sign_in(page, stack, stack.creds["tenant_key"], "tenant demo", base=base, query=query)
        job_id = submit(stack)
        page.goto(f"{base}/console/{query}#/job/{job_id}")
        timeline = page.get_by_role("list", name="Timeline")
        expect(timeline).to_contain_text(f"Attempt 1 on {SLOW}", timeout=30_000)
        status = page.locator("#status")
        following = "live" if through == "stream" else "polling"
        expect(status).to_have_attribute("data-updates", following)
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Cancel job").click()
        expect(page.locator("#job-body h2")).to_contain_text("cancelled")
        # its attempt runs on at the provider: the charge is still to come
        expect(timeline).to_contain_text("in flight")
        expect(status).to_have_attribute("data-updates", following)
        expect(timeline).to_contain_text("charged $", timeout=60_000)
        with Client(base_url=stack.url, api_key=stack.creds["tenant_key"]) as sdk:
            job = sdk.get(job_id)
        assert job.status == "cancelled" and job.cost_usd is not None and job.cost_usd > 0
        shown = page.locator("#job-cost").inner_text()
        assert float(shown.lstrip("$").replace(",", "")) == pytest.approx(job.cost_usd,
                                                                          abs=1e-4), shown
        expect(status).to_have_attribute("data-updates", "ended")
        expect(status).to_contain_text("updates ended")
        shot(page, f"job-late-charge-{through}")
    finally:
        if proxy is not None:
            proxy.close()
        stack.control(SLOW, duration_ms=1000, ignore_cancel=False)
