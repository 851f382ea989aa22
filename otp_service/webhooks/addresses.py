"""Which addresses a webhook may be sent to (SSRF): pure rules, used twice — when an endpoint is created or
changed (`refused_reason`, with a DNS lookup) and at every delivery, on the address actually connected to
(`delivery.GuardedResolver`), which also defeats DNS rebinding (a name that resolved to a public address at
creation and to 127.0.0.1 now).

Refused: loopback, private (RFC 1918), link-local (so 169.254.169.254, the cloud metadata service), CGNAT
100.64/10, multicast, reserved, unspecified (0.0.0.0, ::), IPv6 unique-local (fc00::/7, so fd00:ec2::254) and
site-local, and every IPv6 form that embeds an IPv4 address (mapped ::ffff:a.b.c.d, 6to4, NAT64, Teredo),
judged by the address inside. Decimal and octal literals (http://2130706433/, http://0177.0.0.1/) are not
`ipaddress` literals, so they go through getaddrinfo — which reads them as the C library does, 127.0.0.1 —
and are refused by the address they resolve to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}

Resolve = Callable[..., list]


def is_public(ip: str) -> bool:
    """Whether a webhook may be sent to this address (text form, an IPv6 zone allowed); False for anything
    that is not an address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return _public(embedded) and not addr.teredo  # Teredo relays: never a webhook receiver
        if addr.is_site_local:
            return False
    return _public(addr)


def _public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if addr in _METADATA or (isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT):
        return False
    return addr.is_global and not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


def static_reason(url: str, production: bool) -> str | None:
    """What is wrong with the URL itself (no DNS): scheme (https only in production), userinfo, host, port."""
    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "the URL is empty or holds spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL's host or port cannot be read"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return "the URL must start with https://"
    if scheme == "http" and production:
        return "the URL must use https in production"
    if "@" in parts.netloc:
        return "the URL may not hold a user name or password"
    if not parts.hostname:
        return "the URL has no host"
    if port is not None and not 1 <= port <= 65535:
        return "the URL's port must be 1-65535"
    return None


def refused_reason(
    url: str, allow_private: bool, production: bool, resolve: Resolve = socket.getaddrinfo
) -> str | None:
    """Why a webhook endpoint may not have this URL, or None. Literal addresses are checked with `is_public`;
    a host name is resolved and every address it has must be public (one private address among public ones
    is a rebinding trick). WEBHOOK_ALLOW_PRIVATE (development) skips the address checks and the lookup."""
    reason = static_reason(url, production)
    if reason or allow_private:
        return reason
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        literal = True
    except ValueError:
        literal = False
    if literal:
        return None if is_public(host) else f"{host} is not a public address"
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"the host {host} does not resolve"
    addresses = sorted({info[4][0] for info in found})
    if not addresses:
        return f"the host {host} does not resolve"
    private = [a for a in addresses if not is_public(a)]
    if private:
        return f"the host {host} resolves to a non-public address ({private[0]})"
    return None
