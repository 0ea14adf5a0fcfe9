"""Calling a user-supplied URL: check it, then connect to the checked address only.

``post_pinned`` resolves and checks the URL right before the request (``EgressPolicy.check``)
and connects to one of the addresses it checked, never to the name again, so a DNS answer that
changes in between (rebinding) cannot steer the connection inside. The request still carries
the original ``Host`` header, and TLS sends the original name as SNI and verifies the
certificate against it (httpx's ``sni_hostname`` request extension: httpcore passes it to
``ssl`` as ``server_hostname``, which is what hostname checking uses).

Redirects are never followed (a 3xx is the caller's failure to handle) and the reply body is
never read: only the status and headers come back.

The client's read timeout is also the whole POST's limit: httpx's timeouts bound each read
and write, so a receiver trickling its answer a byte at a time would otherwise hold the caller
for as long as it likes. At the limit a watchdog shuts the socket down, and the caller gets
``httpx.ReadTimeout`` as for any other timeout.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from orchestrator.egress.policy import EgressPolicy
from orchestrator.egress.watchdog import Watchdog


def egress_client(timeout: httpx.Timeout, verify: ssl.SSLContext | None = None) -> httpx.Client:
    """An httpx client fit for :func:`post_pinned`; ``verify``: the TLS trust (default: the
    system's, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set).

    No keep-alive: the pool is keyed by the address connected to, and one address may serve
    several names, so a connection verified for one name must not carry another's request.
    ``trust_env=False``: a proxy from the environment would resolve the name itself (the CA
    variables are read into ``verify`` instead).
    """
    context = verify if verify is not None else httpx.create_ssl_context(trust_env=True)
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                        verify=context, limits=httpx.Limits(max_keepalive_connections=0))


def post_pinned(
    client: httpx.Client, policy: EgressPolicy, url: str, content: bytes,
    headers: Mapping[str, str], field: str = "url",
) -> httpx.Response:
    """POST ``content`` to ``url`` at an address the policy checked just now.

    Returns the response closed, its body unread (status and headers only). Raises
    ``EgressRefused`` (nothing was sent) or httpx's transport errors. The addresses are tried
    in order while the connection itself fails (nothing sent yet), as a resolver-aware client
    would.
    """
    limit_s = client.timeout.read
    deadline = None if limit_s is None else time.monotonic() + limit_s
    checked = policy.check(url, field)
    target = checked.target
    send_headers = {**headers, "Host": target.url.netloc.decode("ascii")}
    extensions = {}
    if target.ip is None and target.url.scheme == "https":
        extensions["sni_hostname"] = target.host
    failure: httpx.ConnectError | None = None
    with Watchdog(None if deadline is None else deadline - time.monotonic()) as watchdog:
        trace = _tracer(watchdog)
        for ip in checked.addresses:
            if watchdog.fired:
                break
            request = client.build_request(
                "POST", target.url.copy_with(host=str(ip)), content=content,
                headers=send_headers, extensions={**extensions, "trace": trace},
            )
            try:
                response = client.send(request, stream=True, follow_redirects=False)
            except httpx.ConnectError as exc:
                failure = exc
                continue
            except httpx.TransportError:
                if watchdog.fired:  # our own shutdown, not the receiver's doing
                    raise httpx.ReadTimeout("the whole time limit passed") from None
                raise
            response.close()  # the body is the remote side's business: never read, never kept
            return response
    if watchdog.fired:
        raise httpx.ConnectTimeout("the whole time limit passed")
    assert failure is not None  # check() returns at least one address
    raise failure


def _tracer(watchdog: Watchdog) -> Callable[[str, dict[str, Any]], None]:
    """httpcore's trace hook, giving ``watchdog`` the connection's socket."""

    def trace(name: str, info: dict[str, Any]) -> None:
        # TLS takes over the TCP socket's descriptor (the plain socket is left closed), so
        # an https connection is cut through the TLS socket that replaces it
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            watchdog.watch(info["return_value"].get_extra_info("socket"))
    return trace
