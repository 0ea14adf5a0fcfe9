"""Budgets, keys and backends over real HTTP: admin vs tenant keys, 402 naming the budget."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from orchestrator.api.views import MIN_ELAPSED
from orchestrator.domain.budgets import period_window
from orchestrator.domain.outcomes import Outcome
from orchestrator.notify.settings import SmtpSettings

from .api_fixture import ADMIN_TENANT, Api, api_fixture, video  # noqa: F401

# a public address: the egress policy admits it without DNS (none in the test)
WEBHOOK = {"type": "webhook", "url": "https://93.184.216.34/t/SECRETPATH",
           "secret": "s" * 24}


def test_402_names_the_budget_and_the_remaining_amount(api: Api) -> None:
    api.budget("tenant:acme/project:p1", 250_000, period="day")  # $0.25
    c = api.tenant()
    # a draft job may fail over to vid-mid, so it holds that worst case: $0.07 x s x 1.5
    ok = c.post("/v1/jobs", json=video(duration=2, metadata={"project": "p1"}))  # $0.21
    assert ok.status_code == 202
    r = c.post("/v1/jobs", json=video(duration=4, metadata={"project": "p1"}))  # $0.42
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded"
    assert err["details"]["scope"] == "tenant:acme/project:p1"
    assert err["details"]["budget"]["period"] == "day"
    assert err["details"]["remaining_usd"] == 0.04 and err["details"]["requested_usd"] == 0.42
    assert "tenant:acme/project:p1" in err["message"] and "$0.040000" in err["message"]
    # another project of the same tenant is not bound by that budget
    assert c.post("/v1/jobs", json=video(duration=4, metadata={"project": "p2"})).status_code \
        == 202


def test_tenant_sees_its_budgets_admin_sees_all(api: Api) -> None:
    for scope in ("global", "tenant:acme", "tenant:acme/project:p1", "tenant:globex",
                  "tenant:acmex"):
        api.budget(scope, 5_000_000)
    api.tenant().post("/v1/jobs", json=video()).raise_for_status()
    mine = api.tenant().get("/v1/budgets").json()["budgets"]
    assert {b["scope"] for b in mine} == {"tenant:acme", "tenant:acme/project:p1"}
    acme = next(b for b in mine if b["scope"] == "tenant:acme")
    assert acme["limit_usd"] == 5.0 and acme["held_usd"] == 0.42
    assert acme["remaining_usd"] == 4.58 and acme["committed_usd"] == 0.0
    assert acme["forecast_usd"] == 0.0 and acme["alert_thresholds"] == [0.5, 0.8, 1.0]
    everything = api.admin().get("/v1/budgets").json()["budgets"]
    assert len(everything) == 5


def test_forecast_is_the_run_rate_of_committed_spend(api: Api) -> None:
    api.budget("tenant:acme", 100_000_000, period="month")
    api.budget("tenant:acme", 100_000_000, period="total")
    # periods are created lazily, by the first hold; then pretend $3 was spent this month
    api.tenant().post("/v1/jobs", json=video()).raise_for_status()
    with api.rig.engine.begin() as conn:
        n = conn.execute(text("UPDATE budget_periods SET committed_micros = 3000000")).rowcount
    assert n == 2
    now = datetime.now(UTC)
    budgets = {b["period"]: b for b in api.tenant().get("/v1/budgets").json()["budgets"]}
    assert budgets["total"]["forecast_usd"] is None
    w = period_window("month", now)
    elapsed = max((now - w.start).total_seconds(), MIN_ELAPSED.total_seconds())
    assert w.end is not None
    expected = 3.0 * (w.end - w.start).total_seconds() / elapsed
    assert abs(budgets["month"]["forecast_usd"] - expected) < 0.01 * expected
    assert budgets["month"]["forecast_usd"] >= 3.0


def test_put_budget_is_admin_only_and_validated(api: Api) -> None:
    body = {"scope": "tenant:acme", "period": "month", "limit_usd": 12.5,
            "alert_thresholds": [0.8, 0.5], "channels": [WEBHOOK]}
    denied = api.tenant().put("/v1/budgets", json=body)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    assert api.admin().get("/v1/budgets").json()["budgets"] == []

    r = api.admin().put("/v1/budgets", json=body)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["scope"] == "tenant:acme" and b["limit_usd"] == 12.5
    assert b["alert_thresholds"] == [0.5, 0.8]
    assert b["channels"] == [{"type": "webhook", "label": "webhook https://93.184.216.34"}]
    assert "SECRETPATH" not in r.text and "s" * 24 not in r.text
    listed = api.tenant().get("/v1/budgets").json()["budgets"]
    assert [x["limit_usd"] for x in listed] == [12.5]
    assert "SECRETPATH" not in api.tenant().get("/v1/budgets").text
    with api.rig.engine.connect() as conn:
        stored = conn.execute(text("SELECT channels FROM budgets")).scalar_one()
    # kept for delivery, encrypted, never shown
    assert set(stored[0]["secret"]) == {"fernet"} and "s" * 24 not in str(stored)
    assert "SECRETPATH" not in str(stored)

    r = api.admin().put("/v1/budgets", json={**body, "limit_usd": 20})
    assert r.status_code == 200 and r.json()["limit_usd"] == 20.0

    bad = [
        ({**body, "scope": "team:x"}, "scope"),
        ({**body, "period": "week"}, "period"),
        ({**body, "limit_usd": -1}, "limit_usd"),
        ({**body, "alert_thresholds": [0]}, "threshold"),
        ({**body, "channels": [{"type": "webhook", "url": "ftp://x", "secret": "s" * 20}]},
         "channels[0].url"),
        ({**body, "channels": [{"type": "pager"}]}, "channels[0].type"),
    ]
    for payload, field in bad:
        r = api.admin().put("/v1/budgets", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
        assert field in r.json()["error"]["message"], r.json()
        assert field.split("[")[0] in r.json()["error"]["details"]["field"], r.json()


def test_a_limit_finer_than_a_micro_dollar_is_refused_not_rounded(api: Api) -> None:
    admin = api.admin()
    body = '{"scope": "tenant:acme", "period": "month", "limit_usd": %s}'
    as_json = {"Content-Type": "application/json"}
    for value in ("1.0000005", "0.0000001", "1e-7"):
        r = admin.put("/v1/budgets", content=body % value, headers=as_json)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["details"]["field"] == "limit_usd", err
        assert err["message"] == ("limit_usd: must have at most 6 decimal places (amounts "
                                  "are kept in whole micro-dollars)")
    for value in ("NaN", "Infinity"):
        r = admin.put("/v1/budgets", content=body % value, headers=as_json)
        assert r.json()["error"]["message"] == "limit_usd: must be a finite number", r.text
    assert admin.get("/v1/budgets").json() == {"budgets": []}  # nothing stored
    r = admin.put("/v1/budgets", content=body % "1.000001", headers=as_json)
    assert r.status_code == 200 and r.json()["limit_usd"] == 1.000001, r.text
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT limit_micros FROM budgets")).scalar_one() == 1_000_001


def test_budget_amounts_and_thresholds_are_json_numbers_never_converted(api: Api) -> None:
    """`true` was a $1 limit and "1e3" a $1000 one; a threshold of 0.00001 was stored as 0
    (which no spend crosses) and 0.50004 as 0.5: each is a 422 naming the field, and
    nothing is stored."""
    admin = api.admin()
    as_json = {"Content-Type": "application/json"}
    limit = '{"scope": "tenant:acme", "period": "month", "limit_usd": %s}'
    for value in ("true", '"1e3"', '"100"', '" 7 "', '"NaN"', "null"):
        r = admin.put("/v1/budgets", content=limit % value, headers=as_json)
        assert r.status_code == 422, (value, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and err["details"]["field"] == "limit_usd", err
        assert "valid number" in err["message"], err
    thresholds = '{"scope": "tenant:acme", "period": "month", "limit_usd": 5, "%s": %s}'
    for field in ("alert_thresholds", "forecast_thresholds"):
        for value in ("[true]", '["0.5"]'):
            r = admin.put("/v1/budgets", content=thresholds % (field, value), headers=as_json)
            assert r.status_code == 422, (field, value, r.text)
            assert r.json()["error"]["details"]["field"].startswith(field), r.text
        for value in ("[0.00001]", "[0.50004, 0.5]"):
            r = admin.put("/v1/budgets", content=thresholds % (field, value), headers=as_json)
            assert r.status_code == 422, (field, value, r.text)
            err = r.json()["error"]
            assert err["details"]["field"] == f"{field}[0]", err  # the item refused
            assert "at most 4 decimal places" in err["message"], err
    assert admin.get("/v1/budgets").json() == {"budgets": []}  # nothing stored
    r = admin.put("/v1/budgets", content=thresholds % ("alert_thresholds", "[0.0001, 0.9999]"),
                  headers=as_json)
    assert r.status_code == 200 and r.json()["alert_thresholds"] == [0.0001, 0.9999], r.text


def test_a_put_that_leaves_out_thresholds_and_channels_keeps_the_budgets_own(
        api: Api) -> None:
    """Raising a limit with {scope, period, limit_usd} (the SDK's set_budget(scope, period,
    limit)) reset the thresholds to the defaults and dropped every alert channel: the
    budget's alerts stopped reaching anyone. Left out, they are kept; [] clears a list."""
    admin = api.admin()
    full = {"scope": "tenant:acme", "period": "month", "limit_usd": 100,
            "alert_thresholds": [0.9], "forecast_thresholds": [1.0], "channels": [WEBHOOK]}
    assert admin.put("/v1/budgets", json=full).status_code == 200
    with api.rig.engine.connect() as conn:
        sealed = conn.execute(text("SELECT channels FROM budgets")).scalar_one()

    r = admin.put("/v1/budgets", json={"scope": "tenant:acme", "period": "month",
                                       "limit_usd": 200})
    assert r.status_code == 200, r.text
    b = r.json()
    assert (b["limit_usd"], b["alert_thresholds"], b["forecast_thresholds"]) == (
        200.0, [0.9], [1.0])
    assert b["channels"] == [{"type": "webhook", "label": "webhook https://93.184.216.34"}]
    with api.rig.engine.connect() as conn:  # the very sealed secret, not a new one
        assert conn.execute(text("SELECT channels FROM budgets")).scalar_one() == sealed

    r = admin.put("/v1/budgets", json={"scope": "tenant:acme", "period": "month",
                                       "limit_usd": 200, "channels": [],
                                       "forecast_thresholds": []})
    b = r.json()
    assert (b["channels"], b["forecast_thresholds"], b["alert_thresholds"]) == ([], [], [0.9])
    # a new budget left without them gets the defaults
    r = admin.put("/v1/budgets", json={"scope": "tenant:globex", "period": "day",
                                       "limit_usd": 5})
    b = r.json()
    assert (b["alert_thresholds"], b["forecast_thresholds"], b["channels"]) == (
        [0.5, 0.8, 1.0], [], [])


def test_an_email_channel_is_refused_while_orch_smtp_host_is_unset(api: Api) -> None:
    """Every alert to it would fail for good (smtp_not_configured): refused at save, naming
    the channel and the setting, and nothing is stored."""
    api.rig.container.smtp = SmtpSettings(smtp_host=None)
    email = {"type": "email", "to": ["ops@example.com"]}
    body = {"scope": "tenant:acme", "period": "month", "limit_usd": 5,
            "channels": [{"type": "webhook", "url": "https://93.184.216.34/h",
                          "secret": "s" * 20}, email]}
    r = api.admin().put("/v1/budgets", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["details"]["field"] == "channels[1].type"
    assert err["message"] == ("channels[1]: an email channel needs ORCH_SMTP_HOST, which is "
                              "not set (no alert could be sent)")
    assert api.admin().get("/v1/budgets").json() == {"budgets": []}
    api.rig.container.smtp = SmtpSettings(smtp_host="mail.example.com")
    r = api.admin().put("/v1/budgets", json=body)
    assert r.status_code == 200, r.text
    assert [c["type"] for c in r.json()["channels"]] == ["webhook", "email"]


def test_keys_are_created_by_admins_only_and_work(api: Api) -> None:
    denied = api.tenant().post("/v1/keys", json={"tenant": "newco"})
    assert denied.status_code == 403
    r = api.admin().post("/v1/keys", json={"tenant": "newco", "admin": False})
    assert r.status_code == 201
    out = r.json()
    assert out["tenant"] == "newco" and out["admin"] is False
    assert out["key"].startswith(f"orch_{out['prefix']}_")
    with api.rig.engine.connect() as conn:
        hashes = conn.execute(text("SELECT key_hash FROM api_keys")).scalars().all()
    assert out["key"] not in hashes and all(out["key"] not in h for h in hashes)

    newco = api.client(out["key"])
    job = newco.post("/v1/jobs", json=video()).json()
    assert api.tenant("acme").get(f"/v1/jobs/{job['id']}").status_code == 404
    assert newco.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert newco.post("/v1/keys", json={"tenant": "x"}).status_code == 403

    admin2 = api.admin().post("/v1/keys", json={"tenant": ADMIN_TENANT, "admin": True}).json()
    assert api.client(admin2["key"]).post("/v1/keys", json={"tenant": "y"}).status_code == 201
    bad = api.admin().post("/v1/keys", json={"tenant": "no spaces"})
    assert bad.status_code == 422 and "tenant" in bad.json()["error"]["message"]
    for not_a_bool in ("yes", 1, "true"):  # only JSON true makes an admin key
        bad = api.admin().post("/v1/keys", json={"tenant": "z", "admin": not_a_bool})
        assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "admin"
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_keys WHERE tenant = 'z'")
                            ).scalar_one() == 0


def test_backends_show_catalogue_and_breaker_state(api: Api) -> None:
    health = api.rig.container.health
    for _ in range(3):
        health.record("vid-mid", Outcome.BACKEND_FAULT)
    health.wait_for_slot(["vid-cheap"], f"{uuid.uuid4()} {uuid.uuid4()} normal", since=1.0)
    r = api.tenant().get("/v1/backends")
    assert r.status_code == 200
    by_name = {b["name"]: b for b in r.json()["backends"]}
    assert set(by_name) == {"vid-cheap", "vid-mid", "txt-one"}
    cheap = by_name["vid-cheap"]
    assert cheap["protocol"] == "predictions" and cheap["kinds"] == ["video"]
    assert cheap["tier"] == "draft" and cheap["breaker"]["state"] == "closed"
    assert cheap["in_flight"] == 0 and cheap["waiting"] == 1
    assert by_name["txt-one"]["waiting"] == 0
    mid = by_name["vid-mid"]
    assert mid["breaker"]["state"] == "open" and mid["breaker"]["strikes"] >= 3
    assert mid["breaker"]["retry_at"] is not None and mid["success_rate"] is not None
