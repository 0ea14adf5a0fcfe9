"""The web console in real headless Chromium against ``orchestrator up``: sign in, a job the
SDK submits appears and finishes, a budget's bar moves, a backend turns open when the
simulator takes it down, cancel; a tenant sees nothing of another tenant through it, an admin
sees every tenant. Screenshots: ``test-artifacts/console/``."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, Request, Route, expect

from orchestrator.client import Client

from .console_support import (  # noqa: F401
    VIDEO,
    Stack,
    browser_fixture,
    page_fixture,
    shot,
    sign_in,
    stack_fixture,
    view,
)


def tenant_client(stack: Stack, key: str | None = None) -> Client:
    return Client(base_url=stack.url, api_key=key or stack.creds["tenant_key"])


def test_sign_in_watch_a_job_finish_and_the_budget_move(stack: Stack, page: Page) -> None:
    key = stack.creds["tenant_key"]
    sign_in(page, stack, key, "tenant demo")
    # the key is in this tab's session storage only, never in a URL
    assert key not in page.url
    assert page.evaluate("sessionStorage.getItem('orchestrator.console.key')") == key
    assert page.evaluate("localStorage.length") == 0
    # every form control is labelled
    assert page.evaluate(
        "[...document.querySelectorAll('input, select')].every(e => e.labels.length > 0)")

    view(page, "Budgets")
    meter = page.get_by_role("meter", name="Use of tenant:demo month")
    before = float(meter.get_attribute("aria-valuenow") or "nan")

    view(page, "Jobs")
    with tenant_client(stack) as sdk:
        job = sdk.submit(kind="video", tier="draft", input=VIDEO,
                         metadata={"project": "console"})
    row = page.locator(f'tr[data-job="{job.id}"]')
    expect(row).to_be_visible()  # it appears while queued or running …
    expect(row).to_have_attribute("data-status", "succeeded", timeout=90_000)  # … and ends
    expect(row).to_contain_text("vid-draft")
    shot(page, "jobs")

    page.get_by_role("link", name=f"job {job.id}").click()
    timeline = page.get_by_role("list", name="Timeline")
    expect(timeline).to_contain_text("Attempt 1 on vid-draft")
    expect(timeline).to_contain_text("Finished")
    expect(page.locator("#job-cost")).to_contain_text("$")
    expect(page.get_by_text("Strategy cheapest")).to_be_visible()
    shot(page, "job")

    with tenant_client(stack) as sdk:
        done = sdk.get(job.id)
    assert done.cost_usd is not None and done.cost_usd > 0
    view(page, "Budgets")
    page.wait_for_function(
        "([v]) => Number(document.querySelector('[data-scope=\"tenant:demo\"] [role=meter]')"
        "?.getAttribute('aria-valuenow')) >= v", arg=[before + done.cost_usd - 1e-6],
        timeout=30_000)
    after = float(meter.get_attribute("aria-valuenow") or "nan")
    assert after == round(before + done.cost_usd, 6)
    shot(page, "budgets")

    view(page, "Spend")
    page.get_by_label("Stacked by").select_option("project")
    expect(page.get_by_role("list", name="Legend")).to_contain_text("console")
    shot(page, "spend")


def test_a_backend_turns_open_when_the_simulator_takes_it_down(stack: Stack,
                                                             page: Page) -> None:
    sign_in(page, stack, stack.creds["tenant_key"], "tenant demo")
    view(page, "Backends")
    row = page.locator('tr[data-backend="vid-draft"]')
    expect(row).to_have_attribute("data-breaker", "closed")
    stack.control("vid-draft", mode="down")
    try:
        with tenant_client(stack) as sdk, ThreadPoolExecutor(3) as pool:
            # three jobs pinned to it fail there: three strikes open its breaker
            jobs = list(pool.map(lambda _: sdk.submit(kind="video", tier="draft", input=VIDEO,
                                                      backend="vid-draft"), range(3)))
        expect(row).to_have_attribute("data-breaker", "open", timeout=120_000)
        expect(row).to_contain_text("open")
        expect(row).to_contain_text("until")  # when it will let a probe through
        shot(page, "backends-open")
    finally:
        stack.control("vid-draft", mode="up")
    view(page, "Jobs")
    for job in jobs:
        expect(page.locator(f'tr[data-job="{job.id}"]')).to_have_attribute(
            "data-status", "failed", timeout=60_000)


def test_cancel_a_running_job_from_its_page(stack: Stack, page: Page) -> None:
    stack.control("vid-standard", duration_ms=600_000)  # its predictions run 10 minutes
    try:
        with tenant_client(stack) as sdk:
            job = sdk.submit(kind="video", tier="standard", input=VIDEO,
                             backend="vid-standard")
        sign_in(page, stack, stack.creds["tenant_key"], "tenant demo")
        page.goto(f"{stack.url}/console/#/job/{job.id}")
        expect(page.get_by_role("list", name="Timeline")).to_contain_text(
            "Attempt 1 on vid-standard", timeout=30_000)
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Cancel job").click()
        expect(page.locator("#job-body h2")).to_contain_text("cancelled", timeout=30_000)
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
        shot(page, "job-cancelled")
        with tenant_client(stack) as sdk:
            assert sdk.get(job.id).status == "cancelled"
    finally:
        stack.control("vid-standard", duration_ms=1000)


def test_a_tenant_sees_nothing_of_another_tenant(stack: Stack, page: Page) -> None:
    with stack.admin() as admin:
        rival_key = admin.post("/v1/keys", json={"tenant": "rival"}).json()["key"]
        admin.put("/v1/budgets", json={"scope": "tenant:rival", "period": "month",
                                       "limit_usd": 50}).raise_for_status()
    with tenant_client(stack, rival_key) as rival:
        theirs = rival.submit(kind="text", input={"prompt": "rival plans", "max_tokens": 30},
                              metadata={"project": "rival-secret"})
        assert rival.wait(theirs.id, timeout=90).status == "succeeded"

    sign_in(page, stack, stack.creds["tenant_key"], "tenant demo")
    expect(page.locator("#tenant-pick")).to_be_hidden()
    page.get_by_label("Stacked by").select_option("project")
    expect(page.locator("#spend-body")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#spend-body")).not_to_contain_text("rival-secret")
    view(page, "Jobs")
    expect(page.locator("#jobs-body table")).to_be_visible()
    assert theirs.id not in page.content()
    view(page, "Budgets")
    expect(page.locator("#budget-cards article").first).to_be_visible()
    assert "tenant:rival" not in page.inner_text("#budget-cards")
    # not by a URL either: the job page of another tenant's job, with or without tenant=
    for suffix in ("", "?tenant=rival"):
        page.goto(f"{stack.url}/console/#/job/{theirs.id}{suffix}")
        expect(page.get_by_role("heading", name="Job not found")).to_be_visible()
    assert "rival plans" not in page.content()
    # the API the console uses refuses it the same way to a script in the page
    status = page.evaluate(
        """async ([id]) => (await fetch(`/v1/jobs/${id}?tenant=rival`, {headers:
           {Authorization: `Bearer ${sessionStorage.getItem('orchestrator.console.key')}`}}
        )).status""", [theirs.id])
    assert status == 403
    shot(page, "tenant-cannot-see-rival")

    page.get_by_role("button", name="Sign out").click()
    assert page.evaluate("sessionStorage.getItem('orchestrator.console.key')") is None
    sign_in(page, stack, stack.creds["admin_key"], "admin")
    picker = page.get_by_label("Tenant")
    expect(picker.locator("option", has_text="rival")).to_have_count(1)
    view(page, "Jobs")
    expect(page.locator(f'tr[data-job="{theirs.id}"]')).to_contain_text("rival")
    picker.select_option("rival")
    expect(page.locator("#jobs-body tbody tr")).to_have_count(1)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    page.get_by_role("link", name=f"job {theirs.id}").click()
    expect(page.locator("#job-body")).to_contain_text("tenant rival")
    # a job's stream answers its owner only: another tenant's job is polled (no stream
    # asked), until it is read finished, as this one is at once
    expect(page.locator("#status")).to_have_attribute("data-updates", "ended")
    assert streams == []
    view(page, "Budgets")
    expect(page.locator('[data-scope="tenant:rival"]')).to_be_visible()
    expect(page.locator('[data-scope="tenant:demo"]')).to_have_count(0)
    shot(page, "admin-sees-rival")


def test_keyboard_only_navigation(stack: Stack, page: Page) -> None:
    page.goto(f"{stack.url}/console")
    page.keyboard.press("Tab")  # the skip link, then the key field
    page.keyboard.press("Tab")
    page.keyboard.type(stack.creds["tenant_key"])
    page.keyboard.press("Enter")
    expect(page.locator("#identity")).to_contain_text("tenant demo")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Backends":
            break
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/backends$"))
    expect(page.get_by_role("heading", name="Backends")).to_be_visible()
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Backends")


def test_spend_draws_the_grouping_asked_last(stack: Stack, page: Page) -> None:
    """The first day-by-day load (by backend) is held at the network while the user asks for
    projects. Before, the project load went out at once and, drawn first, was drawn over by
    the backend one when it came back. Now the project load goes out only after the backend
    one is done, so it is drawn last."""
    held: list[Route] = []
    order: list[tuple[str, str]] = []  # ("sent" | "done", group_by), as the browser saw them
    reports = re.compile(r"/v1/reports/costs\?")

    def group(url: str) -> str:
        return parse_qs(urlsplit(url).query)["group_by"][0]

    holding = [True]

    def seen(what: str) -> Callable[[Request], None]:
        def record(request: Request) -> None:
            if reports.search(request.url):
                order.append((what, group(request.url)))
        return record

    def hold(route: Route) -> None:
        if holding[0] and group(route.request.url) == "backend":
            held.append(route)
        else:
            route.continue_()

    page.on("request", seen("sent"))
    page.on("requestfinished", seen("done"))
    page.route(reports, hold)

    sign_in(page, stack, stack.creds["tenant_key"], "tenant demo")  # opens on Spend
    until(page, lambda: len(held) >= 14, state=lambda: order)  # one report per day bucket
    page.get_by_label("Stacked by").select_option("project")
    holding[0] = False
    for route in held:
        route.continue_()
    until(page, lambda: order.count(("done", "project")) >= 14, state=lambda: order)
    last_backend = max(i for i, e in enumerate(order) if e == ("done", "backend"))
    assert order.index(("sent", "project")) > last_backend, order
    expect(page.locator("#spend-body")).to_have_attribute("data-by", "project")
    chart = page.get_by_role("img", name=re.compile(r"^Spend per day \(UTC\) by project"))
    expect(chart).to_be_visible()


def until(page: Page, done: Callable[[], bool], timeout_s: float = 30,
          state: Callable[[], object] = lambda: None) -> None:
    """Until ``done()``, letting Playwright deliver the page's events between two looks;
    ``state()`` says what was seen when it times out."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out; seen: {state()}"
        page.wait_for_timeout(20)  # the polling interval; events arrive during it
