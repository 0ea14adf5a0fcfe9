"""/v1/whoami: who the calling key is (its tenant, whether admin, its id and prefix).

/v1/keys: create (admin), list (admin: every tenant's or ``?tenant=``; tenant key: its
own tenant's) and revoke (admin) API keys. A key is named by its ``id``; no answer ever holds
a key except the one that created it, and none holds a hash.

Revocation is immediate on the replica that revoked the key and takes effect on every other
replica within ``ORCH_API_KEY_CACHE_S`` (its cache of verified keys). The last live admin key
cannot be revoked (409): create another admin key first.
"""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from orchestrator.api.bodies import UniqueKeysRoute
from orchestrator.api.context import ADMIN_ERRORS, AUTH_ERRORS, ApiContext, _err
from orchestrator.api.errors import Forbidden
from orchestrator.api.principal import Principal
from orchestrator.api.schemas import KeyIn, KeyOut, KeysOut, WhoAmIOut
from orchestrator.store import keys as key_repo

KeyId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the key's id")]


def router(ctx: ApiContext) -> APIRouter:
    r = APIRouter(prefix="/v1", route_class=UniqueKeysRoute, tags=["keys"])
    Caller = Annotated[Principal, Depends(ctx.principal_dep())]
    Admin = Annotated[Principal, Depends(ctx.admin_dep())]
    c = ctx.container

    @r.get("/whoami", response_model=WhoAmIOut, responses=AUTH_ERRORS,
           summary="The calling key: its tenant, admin or not, id and prefix")
    def whoami(p: Caller) -> dict[str, Any]:
        # what a client (the console) shows and offers: never the key itself
        return {"tenant": p.tenant, "admin": p.admin, "key_id": p.key_id,
                "prefix": p.key_prefix}

    @r.post("/keys", response_model=KeyOut, status_code=201, responses=ADMIN_ERRORS,
            summary="Create an API key (admin); the key is shown once")
    def create_key(body: KeyIn, p: Admin) -> dict[str, Any]:
        with c.engine.begin() as tx:
            key, rec = key_repo.create_key_record(tx, body.tenant, admin=body.admin)
        return {"id": rec.id, "key": key, "tenant": rec.tenant, "admin": rec.admin,
                "prefix": rec.prefix}

    @r.get("/keys", response_model=KeysOut,
           summary="API keys, newest first (admin: all; a tenant key: its tenant's)",
           responses={**AUTH_ERRORS, 403: _err("tenant= names another tenant (admin only)")})
    def list_keys(
        p: Caller,
        tenant: Annotated[str | None, Query(
            pattern=key_repo.TENANT_RE.pattern,
            description="admin: one tenant (default: all); others: their own")] = None,
    ) -> dict[str, Any]:
        if not p.admin:
            if tenant is not None and tenant != p.tenant:
                raise Forbidden("a tenant key lists its own tenant's keys only")
            tenant = p.tenant
        with c.engine.connect() as conn:
            records = key_repo.list_keys(conn, tenant)
        return {"items": [rec.resource() for rec in records]}

    @r.delete("/keys/{key_id}", status_code=204, response_class=Response,
              summary="Revoke one API key (admin); revoking a revoked key changes nothing",
              responses={**ADMIN_ERRORS, 404: _err("no such key"),
                         409: _err("the last admin key cannot be revoked")})
    def revoke_key(key_id: KeyId, p: Admin) -> Response:
        with c.engine.begin() as tx:
            key_repo.revoke_key(tx, key_id)
        ctx.auth.forget(key_id)
        return Response(status_code=204)

    return r
