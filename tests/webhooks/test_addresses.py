"""Which receiver URLs a webhook may go to (`webhooks.addresses`): https in production, no user info, and every
address of the host public — literal, or each one a name resolves to; odd spellings of an address refused."""

from __future__ import annotations

import socket

import pytest

from otp_service.webhooks import addresses
from otp_service.webhooks.addresses import is_public, refused_reason

PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",  # AWS's IPv6 metadata (unique local)
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "not an address",
    ],
)
def test_addresses_that_are_not_public(ip):
    assert not is_public(ip)


@pytest.mark.parametrize("ip", [PUBLIC, "1.1.1.1", "2606:4700::1111", f"::ffff:{PUBLIC}"])
def test_public_addresses(ip):
    assert is_public(ip)


@pytest.mark.parametrize(
    "url, says",
    [
        ("ftp://example.com/", "https"),
        ("https://127.0.0.1/in", "not a public"),
        ("https://[::1]/in", "not a public"),
        ("https://[::ffff:127.0.0.1]/in", "not a public"),
        ("https://169.254.169.254/latest/meta-data", "not a public"),
        ("https://100.64.0.1/", "not a public"),
        ("https://0.0.0.0/", "not a public"),
        ("https://2130706433/", "unusual spelling"),  # 127.0.0.1 as one number
        ("https://0177.0.0.1/", "unusual spelling"),  # octal
        ("https://0x7f.0.0.1/", "unusual spelling"),  # hex
        ("https://127.1/", "unusual spelling"),
        ("https://localhost/", "not public"),
        ("https://user:pw@hooks.example.com/", "user name or password"),
        (f"https://token@{PUBLIC}/", "user name or password"),
        (f"https://{PUBLIC}:99999/", "cannot be parsed"),
        (f"https://{PUBLIC}/in#frag", "fragment"),
        (f"https://{PUBLIC}/a b", "spaces"),
        (f"https://{PUBLIC}/" + "a" * 2048, "at most 2048"),
        ("https:///path", "host"),
        ("", "non-empty"),
        (None, "non-empty"),
        ("https://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_refused_urls_say_why(url, says):
    reason = refused_reason(url, allow_private=False, production=False)
    assert reason is not None and says in reason


def test_https_only_in_production_and_a_public_literal_is_taken():
    assert refused_reason(f"https://{PUBLIC}:8443/in?token=x", False, True) is None
    assert "https in production" in refused_reason(f"http://{PUBLIC}/in", False, True)
    assert refused_reason(f"http://{PUBLIC}/in", False, False) is None  # http outside production


def test_allow_private_lets_any_host_through_but_not_user_info():
    assert refused_reason("http://localhost:8080/in", True, False) is None
    assert refused_reason("http://10.0.0.5/in", True, False) is None
    assert refused_reason("http://u:p@localhost/", True, False) is not None
    assert refused_reason("http://2130706433/", True, False) is not None  # still an odd spelling


def test_every_resolved_address_must_be_public(monkeypatch):
    answers = {"mixed.example": [PUBLIC, "10.0.0.7"], "public.example": [PUBLIC, "2606:4700::1111"]}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(addresses.socket, "getaddrinfo", getaddrinfo)
    assert "10.0.0.7" in refused_reason("https://mixed.example/in", False, True)
    assert refused_reason("https://public.example/in", False, True) is None
    assert "does not resolve" in refused_reason("https://other.example/in", False, True)
