"""The egress policy: may the orchestrator call this user-supplied URL?

``parse_url`` checks a URL's shape without DNS (scheme, host, port 1-65535, no user info),
with httpx's own parser, so what is checked is what will be sent. ``EgressPolicy.check``
also resolves the host and refuses it unless **every** address is public (see
``addresses.refusal``) and the scheme is https. ``ORCH_EGRESS_ALLOW`` (``egress_allow``) lists
hostnames and CIDRs that admit internal receivers on purpose:

- a listed **hostname** is trusted whatever it resolves to, and may use plain http;
- a listed **CIDR** admits the addresses inside it; an IP literal inside it may use http.

The same check runs when a URL is saved (a clear 422 naming the field) and again right before
each connection, whose checked address is then the one connected to (``egress.http``): a name
that resolves inside on the second look (DNS rebinding) is refused then.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from orchestrator.egress.addresses import IPAddress, Network, in_any, ip_literal, refusal
from orchestrator.errors import InvalidRequest

if TYPE_CHECKING:
    from orchestrator.settings import Settings

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses`` as text; raises ``OSError`` when the name does not resolve."""

MAX_URL_LENGTH = 2048
_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
ALLOW_SETTING = "ORCH_EGRESS_ALLOW"


class EgressRefused(InvalidRequest):
    """A URL the orchestrator will not call. ``details.field`` names where it came from.

    ``reason`` is ``egress_refused`` (the URL or its addresses are not allowed) or
    ``dns_failed`` (the name did not resolve: worth trying again later)."""

    def __init__(self, field: str, problem: str, *, reason: str = "egress_refused") -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.field = field
        self.problem = problem
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed URL: ``host`` lower-case ASCII (IDNA) without a trailing dot; ``ip`` when the
    host is an address, in whatever form it was written."""

    url: httpx.URL
    host: str
    port: int
    ip: IPAddress | None

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``: what may be shown of the URL (no path, query or token)."""
        return f"{self.url.scheme}://{self.url.netloc.decode('ascii')}"


@dataclass(frozen=True, slots=True)
class Checked:
    """A target that passed the policy, and the addresses it may be reached at."""

    target: Target
    addresses: tuple[IPAddress, ...]


def parse_url(url: str, field: str = "url") -> Target:
    """The URL's parts, or :class:`EgressRefused` saying what is wrong. No DNS."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise EgressRefused(field, f"must be an http(s) URL of at most {MAX_URL_LENGTH} "
                                   "characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise EgressRefused(field, "must be an http(s) URL (no spaces or control characters)")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        # httpx's reason may quote the URL: say it in our words (a path may hold a token)
        reason = str(exc).lower()
        if "port" in reason:
            problem = "port must be between 1 and 65535"
        elif "ipv4 address" in reason or "ipv6 address" in reason:
            # 0177.0.0.1, 999.1.1.1: dotted numbers httpx will not read as an address (nor
            # will it call one); 0177.1 and 0x7f.1 it reads, and are judged as addresses
            problem = "host is not an IP address in standard form (nor a hostname)"
        else:
            problem = "must be an http(s) URL"
        raise EgressRefused(field, problem) from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise EgressRefused(field, "must be an http(s) URL")
    if parsed.userinfo:
        raise EgressRefused(field, "must not contain a user name or password")
    port = parsed.port
    if port is not None and not 1 <= port <= 65535:
        raise EgressRefused(field, "port must be between 1 and 65535")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if "%" in host:  # an IPv6 zone id, or a percent-encoded name
        raise EgressRefused(field, "host is not a valid hostname or IP address")
    ip = ip_literal(host)
    if ip is None and not _HOSTNAME.match(host):
        raise EgressRefused(field, "host is not a valid hostname or IP address")
    default = 443 if parsed.scheme == "https" else 80
    return Target(url=parsed, host=host, port=port or default, ip=ip)


def parse_allow(spec: str | Iterable[str]) -> tuple[frozenset[str], tuple[Network, ...]]:
    """``ORCH_EGRESS_ALLOW``: comma-separated hostnames and CIDRs (an address alone is /32
    or /128). ``ValueError`` names a bad entry."""
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    hosts: set[str] = set()
    nets: list[Network] = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        if "/" in entry:
            try:
                nets.append(ipaddress.ip_network(entry, strict=True))
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not a CIDR: {exc}") from None
        elif (ip := _address(entry)) is not None:
            nets.append(ipaddress.ip_network(ip))
        elif (ip := ip_literal(entry)) is not None:
            # a URL's host written so is an address, never matched as a listed name
            raise ValueError(f"{entry!r} is an address in a short or numeric form: write the "
                             f"address as {ip}")
        elif _HOSTNAME.match(entry):
            hosts.add(entry)
        else:
            raise ValueError(f"{entry!r} is neither a hostname nor a CIDR")
    return frozenset(hosts), tuple(nets)


def system_resolver(host: str, port: int) -> list[str]:
    """The system's resolver (``getaddrinfo``), TCP addresses only."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class EgressPolicy:
    """``check(url, field)``: the URL's checked addresses, or :class:`EgressRefused`."""

    def __init__(self, allow: str | Iterable[str] = "",
                 resolver: Resolver = system_resolver) -> None:
        self.allowed_hosts, self.allowed_nets = parse_allow(allow)
        self._resolver = resolver

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        return cls(settings.egress_allow)

    def host_allowed(self, target: Target) -> bool:
        """Named in the allow list: a listed hostname, or an IP literal in a listed CIDR."""
        if target.ip is not None:
            return in_any(target.ip, self.allowed_nets)
        return target.host in self.allowed_hosts

    def check(self, url: str, field: str = "url") -> Checked:
        target = parse_url(url, field)
        explicit = self.host_allowed(target)
        addresses = self._addresses(target, field)
        if not explicit:
            for ip in addresses:
                why = None if in_any(ip, self.allowed_nets) else refusal(ip)
                if why is not None:
                    what = "is" if target.ip is not None else "resolves to"
                    a = "an" if why[0] in "aeiou" else "a"
                    raise EgressRefused(field, f"{target.host} {what} {a} {why} address; only "
                                               "public receivers are called unless "
                                               f"{ALLOW_SETTING} admits it")
        if target.url.scheme != "https" and not explicit:
            raise EgressRefused(field, f"must use https ({target.host} is not in "
                                       f"{ALLOW_SETTING})")
        return Checked(target, addresses)

    def _addresses(self, target: Target, field: str) -> tuple[IPAddress, ...]:
        if target.ip is not None:
            return (target.ip,)
        try:
            found = self._resolver(target.host, target.port)
        except (OSError, UnicodeError):
            raise EgressRefused(field, f"host {target.host} could not be resolved",
                                reason="dns_failed") from None
        out: list[IPAddress] = []
        for text in found:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:  # e.g. a zone id on a link-local address: inside anyway
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            if ip not in out:
                out.append(ip)
        if not out:
            raise EgressRefused(field, f"host {target.host} could not be resolved",
                                reason="dns_failed")
        return tuple(out)


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
