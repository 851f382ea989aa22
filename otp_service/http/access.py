"""Who may call an /api route: the rate limits (by address, then by API client), the Bearer key's client and
the scope the route needs — checked in that order before any handler runs, refusals audited (a flood of
them at most once per party and window)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING

from .. import metrics
from ..core import errors
from ..core.actions import Action
from ..service import clients
from ..service.clients import Caller
from .base import AUDITED_LIMIT_CACHE, BaseHandler
from .ratelimit import Decision

if TYPE_CHECKING:
    from .route import Route

METRICS_SCRAPER = Caller("metrics-token", frozenset({"metrics"}))


def bearer_matches(header: str, keys: tuple[str, ...]) -> bool:
    """`Authorization: Bearer <token>` naming one of `keys`. The SHA-256 of the token is compared with that of
    every key, with no early exit: equal-length values, so timing reveals neither which key matched, nor how
    much of one, nor any key's length."""
    scheme, _, token = header.partition(" ")
    found = clients.matching(token.strip(), _digests(keys))  # compared whatever the scheme, as before
    return scheme.lower() == "bearer" and found is not None


@lru_cache(maxsize=8)
def _digests(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(clients.digest(key)) for key in keys)


class ApiHandler(BaseHandler):
    """Every /api route: rate limited per client IP, then authenticated with a Bearer API key whose client
    must hold the route's scope — both named by its row of the route table (`route.rate`, `route.scope`)."""

    route: Route
    unauthorized = "A valid API key is required: send Authorization: Bearer <key>."
    caller: Caller | None = None

    async def prepare(self) -> None:
        super().prepare()
        token = self._bearer()
        known, caller = self._known(token)
        checks = [(self.route.rate, self.limit_key)]
        client_scope = f"client:{self.route.scope}"
        if known and caller is not None and self.state.limiter.has(client_scope):
            checks.append((client_scope, caller.name))  # a key this process knows: both limits in one round trip
        decisions = await self.state.limiter.check(checks)
        self.keep_header("X-RateLimit-Limit", str(decisions[0].limit))
        self.keep_header("X-RateLimit-Remaining", str(decisions[0].remaining))
        await self._enforce(decisions[0], self.limit_key, self.route.rate, "Too many requests; slow down.")
        self.caller = caller if known else await self.service.caller(token)  # the database's answer
        if self.caller is None:
            metrics.AUTH_FAILURES.inc()
            await self.service.record(Action.AUTH_FAILED, self.context)
            raise errors.Unauthorized(self.unauthorized)
        metrics.CLIENT_REQUESTS.labels(self.caller.name).inc()
        if len(decisions) > 1 or self.state.limiter.has(client_scope):
            limiter = self.state.limiter
            decision = decisions[1] if len(decisions) > 1 else await limiter.hit(client_scope, self.caller.name)
            message = f"Too many requests from client {self.caller.name} for {self.route.scope!r}; slow down."
            await self._enforce(decision, self.caller.name, client_scope, message, client=self.caller.name)
        if not self.caller.may(self.route.scope):
            metrics.AUTH_FAILURES.inc()
            data = {"route": self.request.path[:200], "scope": self.route.scope}
            await self.service.record(Action.ACCESS_DENIED, self.context, reason="INSUFFICIENT_SCOPE", data=data)
            raise errors.InsufficientScope(
                f"This API key's client ({self.caller.name}) may not do this: it needs the {self.route.scope!r} scope.",
                details={"scope": self.route.scope},
            )

    def _known(self, token: str) -> tuple[bool, Caller | None]:
        """(True, caller or None) when this process knows who sent `token` without the database."""
        return self.service.known_caller(token) if token else (True, None)

    def _bearer(self) -> str:
        """The Bearer token sent, or "" (no header, another scheme, an empty token)."""
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    async def _limit(self, scope: str, key: str, message: str, reason: str, **data: str) -> None:
        """A limit of its own for one operation (`scope` in the limiter, counted by `key`)."""
        await self._enforce(await self.state.limiter.hit(scope, key), key, scope, message, reason, **data)

    async def _enforce(
        self, decision: Decision, key: str, scope: str, message: str, reason: str = "", **data: str
    ) -> None:
        """Nothing when `decision` allows; else 429 with Retry-After and the headers of the limit that refused,
        audited once per limited party and window."""
        if decision.allowed:
            return
        self.keep_header("X-RateLimit-Limit", str(decision.limit))
        self.keep_header("X-RateLimit-Remaining", "0")
        metrics.RATE_LIMITED.labels(scope).inc()
        await self._audit_rate_limit((key, scope), decision.retry_after, reason or scope.upper(), **data)
        raise errors.RateLimited(
            message, headers={"Retry-After": str(decision.retry_after)}, details={"retry_after": decision.retry_after}
        )

    async def _audit_rate_limit(self, key: tuple, retry_after: int, reason: str, **data: str) -> None:
        """One RATE_LIMITED row per limited party (an address, a client, a device) and window, so a flood
        cannot turn into a flood of writes."""
        seen, now = self.state.rate_limit_audited, time.monotonic()
        if seen.get(key, 0) > now:
            return
        seen[key] = now + retry_after
        seen.move_to_end(key)
        while len(seen) > AUDITED_LIMIT_CACHE:
            seen.popitem(last=False)
        data = {"route": self.request.path[:200], **data}
        await self.service.record(Action.RATE_LIMITED, self.context, reason=reason, data=data)
