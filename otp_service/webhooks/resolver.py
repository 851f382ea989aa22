"""The resolver the delivery worker's HTTP client connects through: SSRF is checked on the addresses actually
connected to (`addresses.is_public`), so a host name that resolved to a public address when its endpoint was
made and to 127.0.0.1 now (DNS rebinding) gains nothing."""

from __future__ import annotations

import socket

from tornado.netutil import DefaultLoopResolver, Resolver

from .addresses import is_public


class Refused(Exception):
    """The receiver's address is not public (and WEBHOOK_ALLOW_PRIVATE is off): nothing was sent."""


class GuardedResolver(Resolver):
    """The default resolver, refusing any host with an address `is_public` rejects: checked on the addresses the
    client then connects to, so a name that changes what it resolves to (DNS rebinding) gains nothing."""

    def initialize(self, allow_private: bool = False, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = resolver or DefaultLoopResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list:
        found = await self.inner.resolve(host, port, family)
        if not self.allow_private:
            private = sorted({addr[0] for _, addr in found if not is_public(addr[0])})
            if private or not found:
                raise Refused(f"the receiver's address {private[0] if private else '(none)'} is not public")
        return found

    def close(self) -> None:
        self.inner.close()
