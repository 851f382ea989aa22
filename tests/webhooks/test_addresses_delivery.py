"""`webhooks.addresses`: the SSRF rules for receivers — hostile literals, encodings and names, without the network
(names resolve through a stand-in for getaddrinfo)."""

from __future__ import annotations

import socket

import pytest

from otp_service.webhooks.addresses import is_public, refused_reason, static_reason


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "169.254.0.1",
        "100.64.0.1",  # CGNAT
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "239.255.255.250",
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fec0::1",  # site-local
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2001:db8::1",  # documentation
        "not an address",
        "",
        "2130706433",
        "0177.0.0.1",
    ],
)
def test_not_public(ip):
    assert not is_public(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public(ip):
    assert is_public(ip)


def resolver(table: dict[str, list[str]]):
    def resolve(host, port, type=0, **_):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]
        ]

    return resolve


NAMES = resolver(
    {
        "hooks.example.com": ["93.184.216.34"],
        "localhost": ["127.0.0.1", "::1"],
        "rebind.example.com": ["93.184.216.34", "10.0.0.7"],  # one private address among public ones
        "metadata.example.com": ["169.254.169.254"],
        "2130706433": ["127.0.0.1"],  # what the C library makes of decimal and octal literals
        "0177.0.0.1": ["127.0.0.1"],
        "0x7f.1": ["127.0.0.1"],
    }
)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://2130706433/", "unusual spelling"),
        ("http://0177.0.0.1/", "unusual spelling"),
        ("http://0x7f.1/", "unusual spelling"),
        ("http://evil@127.0.0.1/", "user name or password"),
        ("https://user:pass@hooks.example.com/", "user name or password"),
        ("https://hooks.example.com@127.0.0.1/", "user name or password"),
        ("http://[::1]/", "not a public"),
        ("http://[::ffff:127.0.0.1]/", "not a public"),
        ("http://[::ffff:7f00:1]/", "not a public"),
        ("http://localhost:8080/hook", "not public (127.0.0.1)"),
        ("http://0.0.0.0/", "not a public"),
        ("http://169.254.169.254/latest/meta-data/", "not a public"),
        ("http://[fd00:ec2::254]/", "not a public"),
        ("https://metadata.example.com/", "not public (169.254.169.254)"),
        ("https://rebind.example.com/", "not public (10.0.0.7)"),
        ("https://nowhere.invalid/", "does not resolve"),
        ("ftp://hooks.example.com/", "https://"),
        ("file:///etc/passwd", "https://"),
        ("gopher://127.0.0.1/", "https://"),
        ("https:///path", "name a host"),
        ("https://hooks.example.com:0/", "port"),
        ("https://hooks.example.com:65536/", "port"),
        ("https://hooks.example.com:http/", "port"),
        ("https://hooks.example.com/a b", "spaces"),
        ("https://hooks.example.com/\r\nX-Evil: 1", "control"),
        ("", "empty"),
    ],
)
def test_refused(url, says):
    reason = refused_reason(url, allow_private=False, production=False, resolve=NAMES)
    assert reason is not None and says in reason, reason


def test_accepted():
    assert refused_reason("https://hooks.example.com/in", False, True, resolve=NAMES) is None
    assert refused_reason("https://hooks.example.com:8443/in?x=1", False, True, resolve=NAMES) is None
    assert refused_reason("https://93.184.216.34/in", False, True, resolve=NAMES) is None
    assert refused_reason("http://hooks.example.com/in", False, False, resolve=NAMES) is None  # http outside production


def test_production_wants_https():
    assert "https in production" in refused_reason("http://hooks.example.com/in", False, True, resolve=NAMES)
    assert "https in production" in static_reason("HTTP://hooks.example.com/in", True)


def test_allow_private_skips_the_address_checks_not_the_rest():
    never = resolver({})
    assert refused_reason("http://127.0.0.1:9000/hook", True, False, resolve=never) is None
    assert refused_reason("http://localhost/", True, False, resolve=never) is None
    assert "user name" in refused_reason("http://evil@127.0.0.1/", True, False, resolve=never)
    assert "https://" in refused_reason("ftp://127.0.0.1/", True, False, resolve=never)


def test_decimal_and_octal_literals_are_refused_before_any_lookup():
    """The C library reads them as 127.0.0.1 (inet_aton); they are refused by their spelling, whatever a resolver
    would make of them, and whatever WEBHOOK_ALLOW_PRIVATE says."""
    never = resolver({})
    for url in ("http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://127.1/"):
        assert "unusual spelling" in refused_reason(url, False, False, resolve=never)
        assert "unusual spelling" in refused_reason(url, True, False, resolve=never)
    assert "not a public" in refused_reason("http://[::1]/", False, False, resolve=never)
