"""Authentication at the door: an ASGI middleware that admits a request under ``/v1`` only
with a valid key, before anything of its body is read or parsed.

Every route under ``/v1`` is authenticated and nothing outside it is (``/healthz``,
``/readyz``, ``/metrics``, ``/docs``, ``/openapi.json``, the ``/console`` files). For a ``/v1``
request the gate, from the headers alone:

1. takes the bearer key; none, a malformed one or two ``Authorization`` headers is a failure
   (no hash, no query);
2. trusts a key verified within ``ORCH_API_KEY_CACHE_S`` (no database);
3. else, unless this process found the key valid within the last hour, refuses the client
   address while it is over its failed-authentication limit (429, ``Retry-After``), so an
   unknown-key storm costs one Redis ``GET`` per request, not a hash and a query;
4. verifies the key in the database; an unknown or revoked key is a failure;
5. counts the request against the tenant's rate limit (429).

A failure is counted against the client address (429 once ``ORCH_API_AUTH_FAIL_LIMIT``
failed in ``ORCH_API_AUTH_FAIL_WINDOW_S``). Every refusal closes the connection, so a body
that was never read cannot be taken for the next request. The principal goes into the ASGI
scope (:func:`orchestrator.api.principal.principal_of`), where the routes' dependency finds it.

The **client address** is the TCP peer's, unless ``ORCH_API_FORWARDED_ALLOW_IPS`` names the
proxies in front of the API: uvicorn then takes it from their ``X-Forwarded-For``. Behind a
proxy that is not named, every client shares the proxy's address (and its failure count);
naming a proxy that does not set ``X-Forwarded-For`` itself lets clients choose their address.
An IPv6 client counts by its /64, which one host usually holds whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.errors import RateLimited, Unauthorized
from orchestrator.api.limits import AuthFailures, RateLimiter
from orchestrator.api.middleware import send_error
from orchestrator.api.principal import SCOPE_KEY, Principal
from orchestrator.api.security import Authenticator

PROTECTED_PREFIX = "/v1"


def protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def client_address(scope: MutableMapping[str, Any]) -> str:
    """What failed authentications are counted by: the client's IP (IPv6: its /64)."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def bearer_token(scope: MutableMapping[str, Any]) -> str | None:
    """The credentials of the ``Authorization: Bearer …`` header (None: none, or another
    scheme). Unauthorized for more than one ``Authorization`` header: which key a request
    acts with must not depend on their order (a proxy adding its own, or checking the last
    one, would see another key than the API)."""
    values = [v for name, v in scope.get("headers", ()) if name == b"authorization"]
    if len(values) > 1:
        raise Unauthorized("send exactly one Authorization header")
    if not values:
        return None
    scheme, _, credentials = values[0].decode("latin-1").strip().partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


class Gate:
    def __init__(self, app: ASGIApp, auth: Authenticator, limiter: RateLimiter,
                 failures: AuthFailures) -> None:
        self.app = app
        self.auth = auth
        self.limiter = limiter
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            scope[SCOPE_KEY] = await self.admit(scope)
        except Unauthorized as exc:
            await send_error(send, 401, exc.code, exc.message,
                             headers=[(b"www-authenticate", b"Bearer")])
            return
        except RateLimited as exc:
            await send_error(send, 429, exc.code, exc.message, exc.details,
                             headers=[(b"retry-after", str(exc.retry_after_s).encode())])
            return
        await self.app(scope, receive, send)

    async def admit(self, scope: MutableMapping[str, Any]) -> Principal:
        address = client_address(scope)
        try:
            token = bearer_token(scope)
            digest = self.auth.digest(token)
        except Unauthorized:
            await self.failures.failed(address)
            raise
        p = self.auth.cached(digest)
        if p is None:
            assert token is not None  # digest() refused a missing one
            if not self.auth.recently_valid(digest):
                await self.failures.check(address)
            try:
                p = await run_in_threadpool(self.auth.verify, token)
            except Unauthorized:
                await self.failures.failed(address)
                raise
        await self.limiter.check(p.tenant)
        return p
