"""Which HTTP proxy, if any, the adapters' wire reaches an origin through: the environment's,
read as httpx reads it by default (``trust_env``).

``HTTP_PROXY``, ``HTTPS_PROXY`` and ``ALL_PROXY`` (lower case too, which wins; ``HTTP_PROXY``
is ignored under CGI) name the proxy for ``http://``, ``https://`` and any origin; ``NO_PROXY``
lists hosts reached directly: ``*`` (everything), a domain (``example.com`` covers it and its
subdomains, ``.example.com`` only subdomains), ``localhost``, an IPv4 or IPv6 address, or a
URL form (``http://internal:8080``). This is httpx's own reading (``get_environment_proxies``
and ``URLPattern``, most specific pattern first), so the adapters and every httpx client of
the process route alike. A proxy URL may carry ``user:password@``: it is sent as
``Proxy-Authorization: Basic …`` and never shown in an error.

:class:`ProxyRules` is read once, when the transport is made; the transport asks it once per
origin and keeps the answer. With no proxy in the environment there are no rules at all, and
the direct path asks nothing.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from httpx._utils import URLPattern, get_environment_proxies  # httpx's own trust_env reading

from orchestrator.errors import ConfigurationError

_Origin = tuple[str, str, int]
_MAX_CONNECT_HEAD = 65536


@dataclass(frozen=True, slots=True)
class Proxy:
    """A plain-HTTP proxy: where it is and what it wants to see."""

    host: str
    port: int
    authorization: bytes | None  # the Proxy-Authorization header's value

    @property
    def label(self) -> str:
        """``host:port``, for error messages (never the credentials)."""
        return f"{self.host}:{self.port}"


def proxy_from_url(url: str) -> Proxy:
    parsed = httpx.Proxy(url)  # takes userinfo out of the URL into .auth
    if parsed.url.scheme != "http":
        raise ConfigurationError(
            f"proxy {parsed.url.scheme}://{parsed.url.host}:{parsed.url.port} (HTTP_PROXY / "
            "HTTPS_PROXY / ALL_PROXY): the backends' transport reaches proxies over plain "
            "http:// only", setting="HTTPS_PROXY")
    authorization = None
    if parsed.raw_auth is not None:
        user, password = parsed.raw_auth
        authorization = b"Basic " + base64.b64encode(user + b":" + password)
    return Proxy(parsed.url.host, parsed.url.port or 80, authorization)


class ProxyRules:
    """httpx's proxy mounts (``{"https://": "http://proxy:3128", "all://*corp": None}``) as an
    ordered list of (pattern, proxy or None for direct)."""

    def __init__(self, mounts: Mapping[str, str | None]) -> None:
        rules = [(URLPattern(key), None if url is None else proxy_from_url(url))
                 for key, url in mounts.items()]
        self._rules = sorted(rules, key=lambda rule: rule[0])  # most specific first

    @classmethod
    def from_environment(cls) -> ProxyRules | None:
        """The environment's rules; None when it names no proxy (every origin is direct)."""
        mounts = get_environment_proxies()
        if not any(url is not None for url in mounts.values()):
            return None
        return cls(mounts)

    def proxy_for(self, origin: _Origin) -> Proxy | None:
        """The proxy for ``origin`` (scheme, host, port), or None to go direct."""
        scheme, host, port = origin
        url = httpx.URL(scheme=scheme, host=host, port=port)
        for pattern, proxy in self._rules:
            if pattern.matches(url):
                return proxy
        return None


def open_connection(host: str, port: int, connect_timeout: float | None,
                    what: str = "") -> socket.socket:
    """A TCP connection to ``host:port`` (``what``: "proxy " or "", for the message);
    ConnectTimeout / ConnectError if it cannot be made."""
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except TimeoutError:
        raise httpx.ConnectTimeout(f"could not connect to {what}{host}:{port} in time"
                                   ) from None
    except OSError as exc:
        raise httpx.ConnectError(f"could not connect to {what}{host}:{port} "
                                 f"({type(exc).__name__})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_tunnel(proxy: Proxy, host: str, port: int, connect_timeout: float | None
                ) -> socket.socket:
    """A connection through ``proxy`` to ``host:port`` (``CONNECT``), ready for TLS.
    Not reaching the proxy, no answer in time, or a refusal are ConnectTimeout / ConnectError:
    nothing has been sent to the origin yet."""
    sock = open_connection(proxy.host, proxy.port, connect_timeout, "proxy ")
    authority = b"%s:%d" % ((f"[{host}]" if ":" in host else host).encode("idna"), port)
    lines = [b"CONNECT %s HTTP/1.1" % authority, b"Host: %s" % authority]
    if proxy.authorization is not None:
        lines.append(b"Proxy-Authorization: %s" % proxy.authorization)
    try:
        sock.settimeout(connect_timeout)
        sock.sendall(b"\r\n".join([*lines, b"", b""]))
        status = _connect_status(sock)
    except TimeoutError:
        sock.close()
        raise httpx.ConnectTimeout(f"no CONNECT answer from proxy {proxy.label} in time"
                                   ) from None
    except (OSError, ValueError) as exc:
        sock.close()
        raise httpx.ConnectError(f"CONNECT through proxy {proxy.label} failed "
                                 f"({type(exc).__name__}: {exc})") from None
    if not 200 <= status < 300:
        sock.close()
        raise httpx.ConnectError(f"proxy {proxy.label} refused CONNECT to {host}:{port} "
                                 f"with {status}")
    return sock


def _connect_status(sock: socket.socket) -> int:
    """The status of a proxy's answer to CONNECT, read to the end of its head and no further
    (what follows is the tunnel's). ValueError if it is not an HTTP answer."""
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > _MAX_CONNECT_HEAD:
            raise ValueError("the answer's head is too long")
        data = sock.recv(1)  # byte by byte, once per tunnel: none of the tunnel's bytes
        if not data:
            raise ValueError("the proxy closed the connection")
        head += data
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {parts[0][:20]!r}")
    return int(parts[1])
