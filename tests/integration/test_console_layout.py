"""The console's layout as a user sees it, in real headless Chromium over real HTTP against the
API (real PostgreSQL and Redis), on a phone-sized and a laptop-sized window: the status line
never covers the page's last line; no view scrolls sideways as a whole, nor an admin's header;
a budget's tick labels stay on one line, and its ticks and forecast line inside its bar, at
100 % too; the spend chart's labels are legible; a redraw (a
poll, an event) keeps the user's focus, the table they opened and how far they scrolled a
table sideways."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from .api_fixture import Api, api_fixture, video  # noqa: F401
from .console_support import browser_fixture, shot  # noqa: F401
from .test_console_safety import page_fixture, sign_in  # noqa: F401

PHONE = {"width": 375, "height": 700}
LAPTOP = {"width": 1366, "height": 700}
JOBS = 30  # a list longer than either window

# after scrolling to the end: where the last row and the status line are, in the window
BOTTOM = """() => {
  window.scrollTo(0, document.scrollingElement.scrollHeight);
  const rows = document.querySelectorAll('#jobs-body tbody tr');
  const last = rows[rows.length - 1].getBoundingClientRect();
  const status = document.getElementById('status').getBoundingClientRect();
  return { last: last.bottom, status: status.top, statusBottom: status.bottom,
           window: window.innerHeight };
}"""
STATUS_AT_TOP = """() => { window.scrollTo(0, 0);
  const r = document.getElementById('status').getBoundingClientRect();
  return [r.top, r.bottom, window.innerHeight]; }"""
SIDEWAYS = "document.documentElement.scrollWidth - window.innerWidth"


def long_list(api: Api, n: int = JOBS) -> list[str]:
    """``n`` queued jobs of tenant acme (no worker runs them), newest last."""
    client = api.tenant()
    ids = []
    for _ in range(n):
        r = client.post("/v1/jobs", json=video())
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


@pytest.mark.parametrize("window", [PHONE, LAPTOP], ids=["375px", "1366px"])
def test_the_status_line_leaves_the_last_line_of_a_long_page_in_view(
    api: Api, page: Page, window: dict[str, int],
) -> None:
    """The status line was ``position: fixed`` over the page's bottom: once its text took more
    than main's 2 rem of bottom padding (an error's message, two or three lines on a phone),
    the list's last row stayed under it however far one scrolled. It is sticky now: at the
    window's bottom while the page scrolls, below the content at the page's end."""
    long_list(api)
    page.set_viewport_size(window)
    sign_in(page, api.url, api.keys["acme"])
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{api.url}/console/#/jobs")
    expect(page.locator("#jobs-body tbody tr")).to_have_count(JOBS)
    # the API goes away; the next read (a filter changed) fails and the status line says so
    page.route("**/v1/**", lambda route: route.abort("connectionrefused"))
    page.get_by_label("Status").select_option("queued")
    expect(page.locator("#status")).to_contain_text("error: cannot reach the API")
    expect(page.locator("#jobs-body tbody tr")).to_have_count(JOBS)  # the last figures stay
    top, bottom, height = page.evaluate(STATUS_AT_TOP)
    assert bottom == pytest.approx(height, abs=1), (top, bottom, height)  # in view meanwhile
    at_end: dict[str, Any] = page.evaluate(BOTTOM)
    assert at_end["last"] <= at_end["status"] + 0.5, at_end
    assert at_end["statusBottom"] == pytest.approx(at_end["window"], abs=1), at_end
    shot(page, f"jobs-end-{window['width']}px")
    page.unroute_all(behavior="ignoreErrors")


def test_a_phone_sized_window_scrolls_no_view_sideways(api: Api, page: Page) -> None:
    """At 375 px the jobs table (nine columns) made the whole page 700 px wide: the header,
    the filters and the status line scrolled out of sight with it. A budget's card was
    24 rem wide at least, wider than the window, and its "100%" tick label, placed at the
    bar's end, broke into a letter a line down over the figures (at every width)."""
    api.budget("tenant:acme", 100_000_000)
    job = long_list(api, 3)[0]
    page.set_viewport_size(PHONE)
    sign_in(page, api.url, api.keys["acme"])
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    for view, ready in (("jobs", "#jobs-body tbody tr"), (f"job/{job}", "#job-body table"),
                        ("backends", "#backends-body tbody tr"),
                        ("budgets", "#budget-cards article")):
        page.goto(f"{api.url}/console/#/{view}")
        expect(page.locator(ready).first).to_be_visible()
        assert page.evaluate(SIDEWAYS) <= 0, view
    card = page.locator('[data-scope="tenant:acme"]')
    labels = card.locator(".ticklabel")
    expect(labels).to_have_count(3)  # 50%, 80%, 100%
    heights = [box["height"] for box in (labels.nth(i).bounding_box() or {}
                                         for i in range(3))]
    assert max(heights) == pytest.approx(min(heights), abs=1), heights  # one line each
    shot(page, "budgets-375px")


def test_an_admins_header_fits_a_phone(api: Api, page: Page) -> None:
    """An admin's header (identity, the Tenant choice, Sign out) was one row that did not
    wrap: at 375 px it ran 52 px past the window's edge, Sign out out of sight."""
    page.set_viewport_size(PHONE)
    sign_in(page, api.url, api.admin_key)
    expect(page.locator("#identity")).to_contain_text("admin")
    expect(page.get_by_label("Tenant").locator("option", has_text="acme")).to_have_count(1)
    assert page.evaluate(SIDEWAYS) <= 0
    box = page.get_by_role("button", name="Sign out").bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], box
    shot(page, "admin-header-375px")

def test_the_spend_chart_is_legible_on_a_phone(api: Api, page: Page) -> None:
    """The chart was drawn 960 units wide whatever the window: on a phone, shrunk to 340 px,
    its 11-12 px axis labels were 4 px tall. It is drawn as wide as it is shown now."""
    page.set_viewport_size(PHONE)
    sign_in(page, api.url, api.keys["acme"])  # opens on Spend
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    chart = page.get_by_role("img", name=re.compile(r"^Spend per day"))
    expect(chart).to_be_visible()
    boxes: list[dict[str, float]] = chart.locator("text").evaluate_all(
        """texts => texts.map(t => { const r = t.getBoundingClientRect();
             return { left: r.left, right: r.right, top: r.top, height: r.height }; })""")
    assert min(b["height"] for b in boxes) >= 10, boxes
    days = sorted((b for b in boxes if b["top"] == max(x["top"] for x in boxes)),
                  key=lambda b: b["left"])  # the day labels, along the bottom
    assert len(days) >= 3, days
    assert all(a["right"] < b["left"] for a, b in itertools.pairwise(days)), days
    assert page.evaluate(SIDEWAYS) <= 0
    shot(page, "spend-375px")

def test_a_redraw_keeps_the_focus_an_open_table_and_a_table_scrolled_sideways(
    api: Api, page: Page,
) -> None:
    """Views are redrawn at each poll or event, and each redraw replaced what the user was
    in: a keyboard user's focus on a job's link went to the page (the next Tab started over
    at the first row), the spend table opened with "Show as a table" closed again within
    30 s, and a phone's jobs table scrolled sideways went back to its first column."""
    long_list(api, 5)
    page.set_viewport_size(PHONE)
    sign_in(page, api.url, api.keys["acme"])
    expect(page.locator("#identity")).to_contain_text("tenant acme")

    page.goto(f"{api.url}/console/?poll=1#/spend")  # redrawn every second
    page.get_by_text("Show as a table").click()
    page.evaluate("""() => { window.redraws = 0; new MutationObserver(() => window.redraws++)
        .observe(document.getElementById('spend-body'), { childList: true }); }""")
    page.wait_for_function("() => window.redraws >= 2")
    expect(page.locator("#spend-body details")).to_have_attribute("open", "")

    page.goto(f"{api.url}/console/?poll=600#/jobs")  # live: redrawn at each event
    expect(page.locator("#jobs-body tbody tr")).to_have_count(5)
    expect(page.locator("#status")).to_have_attribute("data-updates", "live")
    link = page.locator("#jobs-body tbody tr").nth(2).get_by_role("link")
    link.focus()
    href = link.get_attribute("href")
    box = page.locator("#jobs-body .table-scroll")
    box.evaluate("b => { b.scrollLeft = 150; }")  # after the focus, which scrolls to the link
    new = long_list(api, 1)[0]  # a producer submits: its event redraws the list
    expect(page.locator(f'tr[data-job="{new}"]')).to_be_visible()
    assert page.evaluate("document.activeElement.getAttribute('href')") == href
    assert box.evaluate("b => b.scrollLeft") == 150


# in-page: each mark on a budget's bar (an alert tick, the forecast line), where it is drawn
# against the inside of the bar (which clips what overflows it), and whether it is what shows
# at its own middle
MARKS = """card => { const bar = card.querySelector('[role=meter]');
  const r = bar.getBoundingClientRect();
  const left = r.left + bar.clientLeft, right = left + bar.clientWidth;
  return [...bar.querySelectorAll('.tick, .forecast')].map(m => {
    const b = m.getBoundingClientRect();
    const shown = document.elementFromPoint((b.left + b.right) / 2, (b.top + b.bottom) / 2);
    return { mark: `${m.className} ${m.title}`, left: b.left - left, right: right - b.right,
             width: b.width, shown: shown === m }; }); }"""


def test_a_tick_at_100_percent_and_a_forecast_past_the_limit_show_in_the_bar(
    api: Api, page: Page,
) -> None:
    """An alert threshold at 100 % (one of the defaults) was a tick placed at the bar's end,
    just past its right edge: the bar clips what overflows it, and only the tick's "100%"
    label showed. A forecast past the limit (drawn at the end too) was not seen at all."""
    api.budget("tenant:acme", 100_000_000)
    forecast: list[float] = []  # the forecast planted, as a share of the limit

    def over(route: Route) -> None:
        # the API's answer, with a forecast past the limit (it takes a month's spend to make)
        answer = route.fetch()
        body = answer.json()
        for b in body["budgets"]:
            if forecast:
                b["forecast_usd"] = b["limit_usd"] * forecast[0]
        route.fulfill(response=answer, body=json.dumps(body))

    page.route("**/v1/budgets", over)
    page.set_viewport_size(LAPTOP)
    sign_in(page, api.url, api.keys["acme"])
    expect(page.locator("#identity")).to_contain_text("tenant acme")
    page.goto(f"{api.url}/console/?poll=1#/budgets")
    card = page.locator('[data-scope="tenant:acme"]')
    expect(card.locator(".tick")).to_have_count(3)  # 50 %, 80 %, 100 %
    marks = card.evaluate(MARKS)  # the ticks, and the forecast line ($0: nothing spent)
    assert len(marks) == 4, marks
    for m in marks:
        assert m["width"] >= 2 and m["left"] >= -0.5 and m["right"] >= -0.5, m
        assert m["shown"], m
    shot(page, "budgets-ticks")
    # a forecast past the limit, from the next poll: drawn at the bar's end (over the 100 %
    # tick)
    forecast.append(1.5)
    expect(card.locator(".forecast")).to_have_attribute("title", "forecast $150.00")
    (line,) = [m for m in card.evaluate(MARKS) if m["mark"].startswith("forecast")]
    assert line["width"] >= 3 and line["left"] >= -0.5 and abs(line["right"]) <= 0.5, line
    assert line["shown"], line
