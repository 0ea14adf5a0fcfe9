"""API keys over real HTTP and the CLI: listed, revoked by id (never by prefix), the last
admin key kept, revocation within the key cache's TTL."""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import httpx
import pytest
import typer
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.api.errors import Unauthorized
from orchestrator.api.security import Authenticator
from orchestrator.store import keys as key_repo
from orchestrator.store.keys import hash_key

from .api_fixture import ADMIN_TENANT, Api, api_fixture, cli, start_api  # noqa: F401
from .e2e_support import Rig

ITEM_FIELDS = {"id", "tenant", "admin", "prefix", "created_at", "last_used_at", "revoked_at"}


def key_id(api: Api, key: str) -> int:
    with api.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM api_keys WHERE key_hash = :h"),
                                {"h": hash_key(key)}).scalar_one())


def twin_of(api: Api, key: str, tenant: str) -> tuple[int, str]:
    """A key of ``tenant`` sharing ``key``'s prefix, inserted straight into the table."""
    prefix = key.split("_")[1]
    twin = f"orch_{prefix}_{secrets.token_urlsafe(32)}"
    with api.rig.engine.begin() as conn:
        new_id = conn.execute(
            text("INSERT INTO api_keys (tenant, key_hash, prefix) VALUES (:t, :h, :p) "
                 "RETURNING id"), {"t": tenant, "h": hash_key(twin), "p": prefix}).scalar_one()
    return int(new_id), twin


def items(r: httpx.Response) -> dict[int, dict[str, Any]]:
    assert r.status_code == 200, r.text
    return {k["id"]: k for k in r.json()["items"]}


def test_keys_are_listed_and_revoked_by_id_not_prefix(api: Api) -> None:
    acme = api.keys["acme"]
    twin_id, twin = twin_of(api, acme, "globex")
    assert api.client(twin).get("/v1/jobs").status_code == 200
    made = api.admin().post("/v1/keys", json={"tenant": "initech"})
    assert made.status_code == 201 and set(made.json()) == {"id", "key", "tenant", "admin",
                                                            "prefix"}

    listing = api.admin().get("/v1/keys")
    everything = items(listing)
    assert all(set(k) == ITEM_FIELDS for k in everything.values())
    assert {k["tenant"] for k in everything.values()} == {ADMIN_TENANT, "acme", "globex",
                                                          "initech"}
    for secret in (acme, twin, api.admin_key, made.json()["key"]):
        assert secret.split("_", 2)[2] not in listing.text and hash_key(secret) not in listing.text
    assert everything[twin_id]["last_used_at"] is not None  # it was used just now
    assert everything[made.json()["id"]]["last_used_at"] is None
    assert set(items(api.admin().get("/v1/keys", params={"tenant": "globex"}))) == {
        twin_id, key_id(api, api.keys["globex"])}

    assert api.admin().delete(f"/v1/keys/{twin_id}").status_code == 204
    assert api.client(twin).get("/v1/jobs").status_code == 401
    assert api.client(acme).get("/v1/jobs").status_code == 200  # same prefix, other key
    revoked_at = items(api.admin().get("/v1/keys"))[twin_id]["revoked_at"]
    assert revoked_at is not None
    assert api.admin().delete(f"/v1/keys/{twin_id}").status_code == 204  # idempotent
    assert items(api.admin().get("/v1/keys"))[twin_id]["revoked_at"] == revoked_at

    missing = api.admin().delete("/v1/keys/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = api.admin().delete("/v1/keys/nope")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_a_tenant_key_sees_its_own_keys_and_revokes_none(api: Api) -> None:
    mine = items(api.tenant("acme").get("/v1/keys"))
    assert {k["tenant"] for k in mine.values()} == {"acme"}
    other = api.tenant("acme").get("/v1/keys", params={"tenant": "globex"})
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    globex_id = key_id(api, api.keys["globex"])
    denied = api.tenant("acme").delete(f"/v1/keys/{globex_id}")
    assert denied.status_code == 403
    assert api.tenant("globex").get("/v1/jobs").status_code == 200


def test_last_used_at_is_written_at_most_once_a_minute(api: Api) -> None:
    c = api.tenant("acme")
    assert c.get("/v1/jobs").status_code == 200
    me = key_id(api, api.keys["acme"])
    first = items(api.admin().get("/v1/keys"))[me]["last_used_at"]
    for _ in range(3):
        assert c.get("/v1/jobs").status_code == 200
    assert items(api.admin().get("/v1/keys"))[me]["last_used_at"] == first
    with api.rig.engine.begin() as conn:  # a minute later, the next use moves it
        conn.execute(text("UPDATE api_keys SET last_used_at = now() - interval '61 seconds' "
                          "WHERE id = :i"), {"i": me})
    assert c.get("/v1/jobs").status_code == 200
    assert items(api.admin().get("/v1/keys"))[me]["last_used_at"] > first


def test_the_last_admin_key_cannot_be_revoked(api: Api) -> None:
    first = key_id(api, api.admin_key)
    r = api.admin().delete(f"/v1/keys/{first}")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "conflict" and "last admin key" in err["message"]
    assert api.admin().get("/v1/keys").status_code == 200

    second = api.admin().post("/v1/keys", json={"tenant": ADMIN_TENANT, "admin": True}).json()
    admin2 = api.client(second["key"])
    assert admin2.delete(f"/v1/keys/{first}").status_code == 204
    assert api.admin().get("/v1/keys").status_code == 401
    assert admin2.delete(f"/v1/keys/{second['id']}").status_code == 409  # now the last


def test_two_admins_revoking_each_other_leave_one(api: Api) -> None:
    second = api.admin().post("/v1/keys", json={"tenant": ADMIN_TENANT, "admin": True}).json()
    pairs = [(api.admin_key, second["id"]), (second["key"], key_id(api, api.admin_key))]
    barrier = threading.Barrier(len(pairs))
    statuses: list[int] = []

    def revoke(key: str, victim: int) -> None:
        with httpx.Client(base_url=api.url, timeout=15,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            barrier.wait()
            statuses.append(c.delete(f"/v1/keys/{victim}").status_code)

    threads = [threading.Thread(target=revoke, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses)[0] == 204 and statuses.count(204) == 1, statuses
    with api.rig.engine.connect() as conn:
        live = conn.execute(text("SELECT count(*) FROM api_keys WHERE admin AND "
                                 "revoked_at IS NULL")).scalar_one()
    assert live == 1


def test_revocation_takes_effect_within_the_key_cache_ttl(rig: Rig) -> None:
    api = start_api(rig, ApiConfig(key_cache_s=300))  # replica A
    replica_b = start_in_thread(rig.container, config=ApiConfig(key_cache_s=0.5))
    try:
        key = api.new_key("acme")
        on_a, on_b = api.client(key), httpx.Client(
            base_url=replica_b.url, headers={"Authorization": f"Bearer {key}"}, timeout=15)
        assert on_a.get("/v1/jobs").status_code == 200  # both replicas now trust it
        assert on_b.get("/v1/jobs").status_code == 200
        assert api.admin().delete(f"/v1/keys/{key_id(api, key)}").status_code == 204
        assert on_a.get("/v1/jobs").status_code == 401  # the revoking replica: at once
        deadline = time.monotonic() + 10
        while (status := on_b.get("/v1/jobs").status_code) == 200:  # the other: within TTL
            assert time.monotonic() < deadline, "replica B still trusts a revoked key"
            time.sleep(0.05)  # polling interval of a condition wait
        assert status == 401
        on_b.close()
    finally:
        replica_b.stop()
        api.close()


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_lists_and_revokes_keys_by_id(
    cli: typer.Typer, api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", database_url)
    runner = CliRunner()
    twin_id, twin = twin_of(api, api.keys["acme"], "globex")

    human = runner.invoke(cli, ["keys", "list"])
    assert human.exit_code == 0, human.output
    header, *rows = human.stdout.strip().splitlines()
    assert header.split()[:4] == ["id", "tenant", "admin", "prefix"]
    assert len(rows) == 4 and api.keys["acme"].split("_", 2)[2] not in human.stdout
    listed = json.loads(runner.invoke(cli, ["keys", "list", "--tenant", "globex", "--json"]
                                      ).stdout)
    assert {k["id"] for k in listed["items"]} == {twin_id, key_id(api, api.keys["globex"])}

    done = runner.invoke(cli, ["keys", "revoke", str(twin_id)])
    assert done.exit_code == 0 and f"key {twin_id} (globex" in done.stdout
    assert api.client(twin).get("/v1/jobs").status_code == 401
    assert api.tenant("acme").get("/v1/jobs").status_code == 200

    for args, expected in (
        (["keys", "revoke", "424242"], "error: no API key 424242"),
        (["keys", "revoke", str(key_id(api, api.admin_key))],
         "error: the last admin key cannot be revoked: create another admin key first"),
    ):
        r = runner.invoke(cli, args)
        assert r.exit_code == 1 and r.stderr.strip().splitlines()[0].startswith(expected), \
            (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1
    # a bad tenant name is a usage error, found before the database (test_cli_errors.py)
    bad = runner.invoke(cli, ["keys", "list", "--tenant", "no spaces"])
    assert bad.exit_code == 2 and "invalid tenant 'no spaces'" in bad.output


def waiting_on_a_lock(db: Engine, query_like: str) -> bool:
    """Whether a statement like ``query_like`` waits on a lock now (a transaction of its own
    each time: pg_stat_activity is one snapshot within a transaction)."""
    with db.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' "
            "AND query LIKE :q"), {"q": query_like}).scalar_one())


def test_a_key_revoked_here_while_being_verified_is_not_trusted_from_the_cache(
        db: Engine) -> None:
    """The API process that revokes a key forgets it at once (ORCH_API_KEY_CACHE_S does not
    apply there), even when a verification of that key read it before the revocation and
    returns after the process forgot it: it must not put the key back in the cache."""
    with db.begin() as conn:
        key, rec = key_repo.create_key_record(conn, "acme")  # never used: verify writes it
    auth = Authenticator(db, cache_s=60)
    outcome: list[object] = []

    def verify() -> None:
        try:
            outcome.append(auth.verify(key))
        except Unauthorized as exc:
            outcome.append(exc)

    with db.connect() as revoking:
        tx = revoking.begin()
        key_repo.revoke_key(revoking, rec.id)  # the row locked and revoked, not committed yet
        verifying = threading.Thread(target=verify)
        verifying.start()
        deadline = time.monotonic() + 10
        while not waiting_on_a_lock(db, "%last_used_at = now()%"):
            # the verification read the live key and now waits on the row's lock
            assert time.monotonic() < deadline, "the verification never waited on the row"
            time.sleep(0.01)
        auth.forget(rec.id)  # what DELETE /v1/keys/{id} does beside its commit
        tx.commit()
    verifying.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], Unauthorized), outcome
    assert auth.cached(auth.digest(key)) is None
