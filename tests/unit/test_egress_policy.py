"""The egress policy against a table of addresses, with ORCH_EGRESS_ALLOW off and on (hostname
and CIDR forms). No network: IP literals need no DNS, names go to an injected resolver (the
policy's seam for DNS), which also plays a rebinding resolver."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

import pytest

from orchestrator.egress import EgressPolicy, EgressRefused, parse_allow, parse_url
from orchestrator.errors import ConfigurationError
from orchestrator.settings import Settings, load_settings

PUBLIC = "93.184.216.34"


def table(names: dict[str, Sequence[str]]) -> Callable[[str, int], Sequence[str]]:
    """A resolver answering from ``names``; an unknown name does not resolve."""

    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in names:
            raise OSError(f"{host} does not resolve")
        return names[host]

    return resolve


NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "inside.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC, "192.168.1.10"],  # ANY inside address refuses the name
    "public.example": [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"],
}

# (url, why it is refused with no allow list: a word of the message; None = allowed)
INSIDE = [
    # IPv4
    ("https://127.0.0.1/h", "loopback"),
    ("https://127.8.9.10/h", "loopback"),
    ("https://10.0.0.1/h", "private"),
    ("https://172.16.5.4/h", "private"),
    ("https://192.168.0.1/h", "private"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://100.64.0.1/h", "shared (CGNAT)"),
    ("https://224.0.0.1/h", "multicast"),
    ("https://239.255.255.250/h", "multicast"),
    ("https://240.0.0.1/h", "reserved"),
    ("https://255.255.255.255/h", "reserved"),
    ("https://0.0.0.0/h", "unspecified"),
    ("https://198.18.0.1/h", "private"),
    # IETF protocol assignments: Python 3.11 calls only .0/29 and .170/31 of them private
    ("https://192.0.0.8/h", "reserved"),
    ("https://192.0.0.100/h", "reserved"),
    # IPv6
    ("https://[::1]/h", "loopback"),
    ("https://[::]/h", "unspecified"),
    ("https://[fd00::1]/h", "private"),
    ("https://[fc00::1]/h", "private"),
    ("https://[fe80::1]/h", "link-local"),
    ("https://[ff02::1]/h", "multicast"),
    ("https://[ff0e::1]/h", "multicast"),
    # deprecated site-local: routed like any unicast by Linux, never global; Python calls it
    # neither private nor reserved
    ("https://[fec0::1]/h", "site-local"),
    ("https://[fec0:0:0:ffff::1]/h", "site-local"),
    ("https://[feff::1]/h", "site-local"),
    ("https://[3fff::1]/h", "reserved"),  # documentation (RFC 9637), unknown to Python 3.11
    ("https://[::ffff:127.0.0.1]/h", "loopback (IPv4 inside IPv6)"),
    ("https://[::ffff:169.254.169.254]/h", "link-local (IPv4 inside IPv6)"),
    ("https://[::ffff:a00:1]/h", "private (IPv4 inside IPv6)"),
    ("https://[2002:7f00:1::1]/h", "loopback (IPv4 inside IPv6)"),  # 6to4 of 127.0.0.1
    ("https://[64:ff9b::a9fe:a9fe]/h", "link-local (IPv4 inside IPv6)"),  # NAT64
    ("https://[::7f00:1]/h", "reserved"),  # deprecated IPv4-compatible
    # what the resolver reads as 127.0.0.1: decimal, octal, hex and short forms
    ("https://2130706433/h", "loopback"),
    ("https://0177.1/h", "loopback"),
    ("https://0x7f.1/h", "loopback"),
    ("https://0x7f000001/h", "loopback"),
    ("https://127.1/h", "loopback"),
    ("https://0/h", "unspecified"),
    # names resolving inside
    ("https://localhost/h", "loopback"),
    ("https://inside.example/h", "private"),
    ("https://metadata.example/h", "link-local"),
    ("https://mixed.example/h", "private"),
]
OUTSIDE = [
    f"https://{PUBLIC}/h",
    "https://[2606:2800:220:1:248:1893:25c8:1946]/h",
    f"https://[::ffff:{PUBLIC}]/h",  # mapped public IPv4 reaches that public address
    "https://[64:ff9b::5db8:d822]/h",  # NAT64 of the public address (DNS64 networks)
    "https://public.example/h",
    "https://0x5d.0xb8.0xd8.0x22/h",  # 93.184.216.34 in hex: public, connected to as such
]


@pytest.fixture()
def strict() -> EgressPolicy:
    return EgressPolicy("", resolver=table(NAMES))


@pytest.mark.parametrize(("url", "why"), INSIDE)
def test_inside_addresses_are_refused_without_an_allow_list(
    strict: EgressPolicy, url: str, why: str
) -> None:
    with pytest.raises(EgressRefused) as err:
        strict.check(url, field="channels[0].url")
    assert err.value.field == "channels[0].url" and err.value.code == "invalid_request"
    assert err.value.message.startswith("channels[0].url: ")
    a = "an" if why[0] in "aeiou" else "a"
    assert f" {a} {why} address" in err.value.message
    assert err.value.reason == "egress_refused"
    assert "/h" not in err.value.message  # the path (maybe a token) is never repeated


@pytest.mark.parametrize("url", OUTSIDE)
def test_public_addresses_are_allowed(strict: EgressPolicy, url: str) -> None:
    checked = strict.check(url)
    assert checked.addresses
    assert all(str(ip) != "127.0.0.1" for ip in checked.addresses)


@pytest.mark.parametrize(("url", "why"), INSIDE)
def test_each_inside_address_is_admitted_by_its_cidr_or_its_name_only(url: str, why: str) -> None:
    target = parse_url(url)
    found = [target.ip] if target.ip is not None else NAMES[target.host]
    cidrs = ",".join(str(ipaddress.ip_network(ipaddress.ip_address(str(a)))) for a in found)
    EgressPolicy(cidrs, resolver=table(NAMES)).check(url)  # CIDR form
    if target.ip is None:  # hostname form: any address, and plain http too
        EgressPolicy(target.host, resolver=table(NAMES)).check(url.replace("https:", "http:"))
    with pytest.raises(EgressRefused, match=f"an? {re.escape(why)} address"):
        EgressPolicy("203.0.113.0/24,2001:db8::/32,other.example",
                     resolver=table(NAMES)).check(url)


@pytest.mark.parametrize("url", OUTSIDE)
def test_public_addresses_stay_allowed_with_an_allow_list(url: str) -> None:
    assert EgressPolicy("10.0.0.0/8,localhost", resolver=table(NAMES)).check(url).addresses


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        ("127.0.0.0/8", "http://127.0.0.1:8080/h"),
        ("127.0.0.1", "http://127.0.0.1:8080/h"),  # an address alone is a /32
        ("127.0.0.0/8", "http://2130706433/h"),
        ("127.0.0.0/8", "http://0x7f.1/h"),
        ("127.0.0.0/8", "https://[::ffff:127.0.0.1]/h"),
        ("::1/128", "http://[::1]:9/h"),
        ("169.254.169.254/32", "http://169.254.169.254/h"),
        ("10.0.0.0/8", "https://inside.example/h"),  # a name resolving into a listed CIDR
        ("localhost", "http://localhost:8080/h"),  # a listed name: any address, and http
        ("Inside.Example.", "http://inside.example/h"),  # listed names are case-insensitive
        (" 10.0.0.0/8 , metadata.example ", "http://metadata.example/h"),
    ],
)
def test_the_allow_list_admits_internal_receivers_on_purpose(allow: str, url: str) -> None:
    EgressPolicy(allow, resolver=table(NAMES)).check(url)


@pytest.mark.parametrize(
    ("allow", "url", "why"),
    [
        ("10.0.0.0/8", "https://127.0.0.1/h", "loopback"),  # another network stays refused
        ("inside.example", "https://localhost/h", "loopback"),  # another name too
        ("10.0.0.0/8", "https://mixed.example/h", "private"),  # 192.168.1.10 is not listed
        ("127.0.0.2", "https://127.0.0.1/h", "loopback"),
        ("127.0.0.0/8", "https://localhost/h", "loopback"),  # ::1 is not in 127/8
    ],
)
def test_the_allow_list_admits_nothing_else(allow: str, url: str, why: str) -> None:
    with pytest.raises(EgressRefused) as err:
        EgressPolicy(allow, resolver=table(NAMES)).check(url)
    assert f"a {why} address" in err.value.message


@pytest.mark.parametrize(
    ("allow", "url"),
    [
        ("", f"http://{PUBLIC}/h"),  # public, but not https and not listed
        ("", "http://public.example/h"),
        ("10.0.0.0/8", "http://inside.example/h"),  # its address is listed, its name is not
    ],
)
def test_https_is_required_unless_the_host_is_listed(allow: str, url: str) -> None:
    with pytest.raises(EgressRefused) as err:
        EgressPolicy(allow, resolver=table(NAMES)).check(url, field="webhook_url")
    assert err.value.message.startswith("webhook_url: must use https")


def test_dns_rebinding_is_refused_on_the_second_resolution() -> None:
    answers = iter([[PUBLIC], ["127.0.0.1"]])
    policy = EgressPolicy("", resolver=lambda host, port: next(answers))
    assert [str(ip) for ip in policy.check("https://rebind.example/h").addresses] == [PUBLIC]
    with pytest.raises(EgressRefused, match="resolves to a loopback address"):
        policy.check("https://rebind.example/h")


def test_a_name_that_does_not_resolve_is_refused_as_dns_failed(strict: EgressPolicy) -> None:
    with pytest.raises(EgressRefused) as err:
        strict.check("https://nowhere.example/h", field="channels[1].url")
    assert err.value.reason == "dns_failed"
    assert err.value.message == "channels[1].url: host nowhere.example could not be resolved"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example:99999/x", "port must be between 1 and 65535"),
        ("https://hooks.example:0/x", "port must be between 1 and 65535"),
        ("https://hooks.example:-1/x", "port must be between 1 and 65535"),
        ("https://hooks.example:8o/x", "port must be between 1 and 65535"),
        ("ftp://hooks.example/x", "must be an http(s) URL"),
        ("hooks.example/x", "must be an http(s) URL"),
        ("https:///x", "must be an http(s) URL"),
        ("https://user:pw@hooks.example/x", "must not contain a user name or password"),
        ("https://evil.example@127.0.0.1/x", "must not contain a user name or password"),
        ("https://hooks.example/x y", "no spaces or control characters"),
        ("https://hooks.example/\nx", "no spaces or control characters"),
        ("https://hooks.example\x00.evil/x", "no spaces or control characters"),
        ("https://a%2fb.example/x", "host is not a valid hostname or IP address"),
        ("https://[fe80::1%25eth0]/x", "host is not a valid hostname or IP address"),
        # httpx refuses these forms: said as what they are, not "not an http(s) URL"
        ("https://0177.0.0.1/x", "host is not an IP address in standard form (nor a hostname)"),
        ("https://999.1.1.1/x", "host is not an IP address in standard form (nor a hostname)"),
        ("https://[::zz]/x", "host is not an IP address in standard form (nor a hostname)"),
        ("https://" + "a" * 2050 + ".example/", "at most 2048 characters"),
    ],
)
def test_malformed_urls_are_refused_before_any_dns(url: str, problem: str) -> None:
    def no_dns(host: str, port: int) -> Sequence[str]:
        raise AssertionError("resolved a malformed URL")

    with pytest.raises(EgressRefused) as err:
        EgressPolicy("", resolver=no_dns).check(url, field="channels[0].url")
    assert problem in err.value.message and err.value.field == "channels[0].url"


def test_parse_url_keeps_what_will_be_sent() -> None:
    t = parse_url("https://Hooks.Slack.COM./services/T0/B0/tok3n")
    assert (t.host, t.port, t.ip, t.origin) == ("hooks.slack.com", 443, None,
                                                "https://hooks.slack.com.")
    t = parse_url("http://[::1]:8080/h")
    assert (t.host, t.port, str(t.ip), t.origin) == ("::1", 8080, "::1", "http://[::1]:8080")
    assert str(parse_url("http://2130706433/").ip) == "127.0.0.1"
    assert parse_url("https://bücher.example/x").host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [("10.0.0.0/33", "is not a CIDR"), ("10.0.0.1/8", "has host bits set"),
     ("bad host", "neither a hostname nor a CIDR"), ("http://x.example", "is not a CIDR"),
     # a URL's host in these forms is an address, never a listed name: as a name the entry
     # would admit nothing, silently
     ("127.1", "write the address as 127.0.0.1"), ("2130706433", "as 127.0.0.1"),
     ("0x7f.1", "as 127.0.0.1"), ("10.0.0.0/8, 0xa000001", "as 10.0.0.1")],
)
def test_a_bad_allow_list_entry_is_named(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_allow(spec)


def test_the_setting_refuses_a_bad_entry_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_EGRESS_ALLOW", "10.0.0.0/8,10.0.0.0/33")
    with pytest.raises(ConfigurationError) as err:
        load_settings()
    assert err.value.message.startswith("ORCH_EGRESS_ALLOW: '10.0.0.0/33' is not a CIDR")
    monkeypatch.setenv("ORCH_EGRESS_ALLOW", "127.0.0.1, receiver.test")
    policy = EgressPolicy.from_settings(Settings())
    assert policy.allowed_hosts == {"receiver.test"}
    assert [str(n) for n in policy.allowed_nets] == ["127.0.0.1/32"]
