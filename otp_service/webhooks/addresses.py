"""Which receiver URLs a webhook may be sent to. A webhook is a request the service makes on a client's behalf to
a URL the client chose: without these checks, a client could make the service call its own database, Redis, a
cloud metadata service (169.254.169.254) or anything else on the private network (server-side request forgery).

`refused_reason` is asked when an endpoint is created and again by the delivery worker before each connection
(a name can resolve elsewhere later: DNS rebinding), and refuses: anything but https in production; a user name
or password in the URL (it would be sent to the receiver, and logged by proxies); and any host one of whose
addresses is not public — a literal one, or any address the name resolves to. Every address is checked, not only
the first: a name with one public and one private address could be connected to either.

Odd spellings of an address — `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` (all 127.0.0.1 to `inet_aton` and
to `getaddrinfo`) — are refused outright as hosts: a receiver has no reason to be written so, and refusing them
does not rely on the resolver reading them as we do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

MAX_URL = 2048
# a host made only of digits, dots and hex notation: an IPv4 address in some spelling (or nothing sensible)
_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]*))*\.?", re.IGNORECASE)
# shared address space (RFC 6598, carrier-grade NAT): not global, but not `is_private` in every Python version
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the last 32 bits are an IPv4 address
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(ip: str | Address) -> bool:
    """Whether a receiver at `ip` is on the public internet: globally routable and not loopback, private,
    link-local (cloud metadata), shared (CGNAT), multicast, reserved or unspecified (0.0.0.0, ::). An IPv6
    address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, 6to4, Teredo, NAT64) is judged by that
    IPv4 address too, since that is where a connection to it can end up."""
    try:
        address = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id or address.is_site_local:  # fe80::1%eth0: an interface's link; fec0::/10, deprecated
            return False
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            embedded.append(address.teredo[1])  # (server, client): the client's address is where it goes
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address in _NAT64_LOCAL:
            return False
        if any(v4 is not None and not is_public(v4) for v4 in embedded):
            return False
        if address.ipv4_mapped is not None:
            return True  # judged by its IPv4 address above (`::ffff:0:0/96` itself is not "global")
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


Resolve = Callable[..., list]  # socket.getaddrinfo's signature (a test passes its own: no DNS here)


RESOLVE_SECONDS = 5.0  # a receiver's name must resolve within this when its endpoint is made
LOOKUPS_AT_ONCE = 4  # create-time lookups in flight per process: a name whose DNS never answers holds one


async def resolved_ahead(url: Any, allow_private: bool, lookups: asyncio.Semaphore) -> Resolve | None:
    """The URL's host looked up on the event loop (asyncio's resolver threads, never the database pool), at most
    RESOLVE_SECONDS and LOOKUPS_AT_ONCE at a time, as a `resolve` for `refused_reason` that answers from what was
    found; None when there is nothing to look up (a literal address, a URL `static_reason` refuses, or the
    development switch, which skips the lookup). So a client naming a host whose DNS never answers waits for its
    own answer, and no one else does."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        host, port = (parts.hostname, parts.port) if parts else (None, None)
    except ValueError:
        return None
    if allow_private or not host or _literal(host) is not None or _NUMERIC_HOST.fullmatch(host):
        return None
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        async with lookups:
            loop = asyncio.get_running_loop()
            found = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS)
    except (TimeoutError, OSError, UnicodeError) as exc:
        failure = OSError(f"{host!r} did not resolve: {type(exc).__name__}")

        def refuse(*_: Any, **__: Any) -> list:
            raise failure

        return refuse
    return lambda *_, **__: found


def refused_reason(url: str, allow_private: bool, production: bool, resolve: Resolve | None = None) -> str | None:
    """Why a webhook may not be sent to `url`, in words for the client that asked; None when it may.
    `allow_private` (WEBHOOK_ALLOW_PRIVATE, development only) lets any host through, even one that does not
    resolve yet; `production` allows https only."""
    reason = static_reason(url, production)
    if reason is not None or allow_private:
        return reason
    hint = "" if production else " (a receiver on this machine, in development: set WEBHOOK_ALLOW_PRIVATE=true)"
    parts = urlsplit(url)
    host, scheme = parts.hostname, parts.scheme.lower()
    literal = _literal(host)
    if literal is not None:
        return None if is_public(literal) else f"the address {host} is not a public internet address{hint}"
    try:
        lookup = resolve or socket.getaddrinfo
        found = lookup(host, parts.port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"the host {host!r} does not resolve"
    addresses = sorted({info[4][0] for info in found})
    if not addresses:
        return f"the host {host!r} does not resolve"
    private = [a for a in addresses if not is_public(a)]
    if private:
        return f"the host {host!r} resolves to an address that is not public ({private[0]}){hint}"
    return None


def static_reason(url: str, production: bool) -> str | None:
    """What is wrong with the URL itself, without DNS: the worker asks it before each attempt (the addresses are
    checked as it connects, by `resolver.GuardedResolver`), the API first of all (`refused_reason`)."""
    if not isinstance(url, str) or not url:
        return "the URL must be a non-empty string"
    if len(url) > MAX_URL:
        return f"the URL must be at most {MAX_URL} characters"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "the URL must be ASCII with no spaces or control characters (percent-encode the rest; punycode hosts)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port above 65535
    except ValueError:
        return "the URL cannot be parsed (check the host and port)"
    if port == 0:
        return "the URL's port must be 1-65535"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return "the URL must start with https://" + ("" if production else " (or http://, outside production)")
    if scheme == "http" and production:
        return "the URL must use https in production"
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        return "the URL must not hold a user name or password: authenticate the webhook by its signature"
    if parts.fragment or url.endswith("#"):
        return "the URL must not have a #fragment (it is never sent to the receiver)"
    host = parts.hostname
    if not host:
        return "the URL must name a host"
    if _literal(host) is None and _NUMERIC_HOST.fullmatch(host):
        return f"the host {host!r} is an address in an unusual spelling; write it as a.b.c.d (or use a name)"
    return None


def without_secrets(url: str) -> str:
    """The URL as an audit row, a log line or a report may show it: scheme://host[:port]/path — no query string or
    fragment, where a receiver's URL may carry a token of theirs, and no user info."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


def _literal(host: str) -> Address | None:
    """`host` as an IP address when it is one written the usual way (IPv6 without its brackets), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
