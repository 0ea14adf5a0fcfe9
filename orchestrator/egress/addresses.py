"""Which IP addresses a user-supplied URL may reach: the pure part of the egress policy.

A receiver named by a user (an alert webhook, a Slack URL, a job's ``webhook_url``) must be on
the public internet. ``refusal`` says what is wrong with an address that is not, and looks
through the IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
``2002::/16``, NAT64 ``64:ff9b::/96``), which reach that IPv4 address. ``ip_literal`` reads a
host the way the system resolver would, including the decimal, octal and hex forms
``inet_aton`` accepts (``2130706433``, ``0177.1``, ``0x7f.1`` are all 127.0.0.1), without DNS.
"""

from __future__ import annotations

import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# ::/96 is ::, ::1 and the deprecated "IPv4-compatible" addresses; none is a public receiver
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# not globally reachable (IANA) although Python 3.11's tables call them global: IETF protocol
# assignments (only .0/29 and .170/31 are private there; .9 and .10, anycast, are refused
# too: no receiver lives there), the deprecated site-local fec0::/10 (which Linux routes like
# any unicast, so an internal network may still use it) and the documentation 3fff::/20
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
_NOT_GLOBAL: tuple[Network, ...] = (ipaddress.IPv4Network("192.0.0.0/24"),
                                    ipaddress.IPv6Network("3fff::/20"))
# what inet_aton may read as an IPv4 address: digits, dots, hex digits after 0x
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through mapping, 6to4 or NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress) -> str | None:
    """None for a public address; else the kind of address it is (``loopback``, …)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            why = refusal(inner)
            return None if why is None else f"{why} (IPv4 inside IPv6)"
    checks: tuple[tuple[str, bool], ...] = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared (CGNAT)", isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip in _SITE_LOCAL),
        ("reserved", isinstance(ip, ipaddress.IPv6Address) and ip in _IPV4_COMPATIBLE),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("reserved", any(ip in net for net in _NOT_GLOBAL if net.version == ip.version)),
        # what is left that IANA does not call globally reachable (Python's is_global does
        # not cover multicast, hence the checks above)
        ("non-global", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes without DNS: an IPv4/IPv6 literal, or a numeric form the
    resolver reads as IPv4 (``2130706433``, ``0177.1``, ``0x7f.1``); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def in_any(ip: IPAddress, networks: tuple[Network, ...]) -> bool:
    """``ip`` (or the IPv4 address it carries) lies in one of ``networks``."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            candidates.append(inner)
    return any(c in net for c in candidates for net in networks if c.version == net.version)
