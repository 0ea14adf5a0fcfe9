"""What a tenant key sees of budgets and spend, over real HTTP: its own budgets only (never
``global``, never another tenant's), no alert channels, no remaining amount of a budget it may
not see in a 402, and cost reports of its own jobs."""

from __future__ import annotations

from .api_fixture import Api, api_fixture, video  # noqa: F401

WEBHOOK = {"type": "webhook", "url": "https://93.184.216.34/t/SECRETPATH",
           "secret": "s" * 24}


def test_a_tenant_sees_only_its_own_budgets_and_no_channels(api: Api) -> None:
    for scope in ("global", "tenant:acme/project:p1", "tenant:globex", "tenant:acmex"):
        api.budget(scope, 5_000_000)
    body = {"scope": "tenant:acme", "period": "month", "limit_usd": 5, "channels": [WEBHOOK]}
    assert api.admin().put("/v1/budgets", json=body).status_code == 200
    api.tenant().post("/v1/jobs", json=video()).raise_for_status()

    r = api.tenant("acme").get("/v1/budgets")
    mine = r.json()["budgets"]
    assert {b["scope"] for b in mine} == {"tenant:acme", "tenant:acme/project:p1"}
    assert all(b["channels"] is None for b in mine)
    assert "93.184.216.34" not in r.text and "global" not in r.text
    assert {b["scope"] for b in api.tenant("globex").get("/v1/budgets").json()["budgets"]} \
        == {"tenant:globex"}
    everything = api.admin().get("/v1/budgets").json()["budgets"]
    assert len(everything) == 5
    acme = next(b for b in everything if b["scope"] == "tenant:acme")
    assert acme["channels"] == [{"type": "webhook", "label": "webhook https://93.184.216.34"}]


def test_a_refusal_by_the_global_budget_does_not_show_its_remaining(api: Api) -> None:
    api.budget("global", 300_000)  # $0.30 for every tenant together
    r = api.tenant("acme").post("/v1/jobs", json=video())  # needs $0.42
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["details"]["scope"] == "global" and err["details"]["remaining_usd"] is None
    assert err["details"]["requested_usd"] == 0.42
    assert "$0.30" not in err["message"] and "remaining" not in err["message"]
    api.budget("global", 100_000_000)
    api.budget("tenant:acme", 100_000)  # its own budget: the remaining amount is its business
    own = api.tenant("acme").post("/v1/jobs", json=video()).json()["error"]
    assert own["details"]["scope"] == "tenant:acme" and own["details"]["remaining_usd"] == 0.1


def test_cost_reports_are_scoped_to_the_tenant(api: Api) -> None:
    r = api.tenant("acme").get("/v1/reports/costs", params={"tenant": "globex"})
    assert r.status_code == 403
    assert api.tenant("acme").get("/v1/reports/costs").json()["tenant"] == "acme"


def test_jobs_of_another_tenant_for_admin_keys_only(api: Api) -> None:
    globex_job = api.tenant("globex").post("/v1/jobs", json=video()).json()["id"]
    acme = api.tenant("acme")
    # a tenant key: naming another tenant is refused, and nothing of its jobs shows
    for method, path in (("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{globex_job}"),
                         ("POST", f"/v1/jobs/{globex_job}/cancel")):
        r = acme.request(method, path, params={"tenant": "globex"})
        assert r.status_code == 403 and globex_job not in r.text
    assert acme.get(f"/v1/jobs/{globex_job}").status_code == 404
    assert acme.get("/v1/jobs", params={"tenant": "acme"}).json()["items"] == []
    # an admin key: its own tenant by default, any tenant it names
    admin = api.admin()
    assert admin.get("/v1/jobs").json()["items"] == []
    listed = admin.get("/v1/jobs", params={"tenant": "globex"}).json()["items"]
    assert [j["id"] for j in listed] == [globex_job]
    assert admin.get(f"/v1/jobs/{globex_job}").status_code == 404
    assert admin.get(f"/v1/jobs/{globex_job}",
                     params={"tenant": "globex"}).json()["id"] == globex_job
    cancelled = admin.post(f"/v1/jobs/{globex_job}/cancel", params={"tenant": "globex"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    bad = admin.get("/v1/jobs", params={"tenant": "no spaces"})
    assert bad.status_code == 422 and "tenant" in bad.text
