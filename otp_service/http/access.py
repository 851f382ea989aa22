"""Who may call an /api route: the rate limits (by address, then by API client), the Bearer key's client and
the scope the route needs — checked in that order before any handler runs, refusals audited (a flood of
them at most once per party and window)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, NoReturn

from .. import metrics
from ..core import errors, validation
from ..core.actions import Action
from ..core.tenants import Tenant
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
    tenant: Tenant
    unauthorized = "A valid API key is required: send Authorization: Bearer <key>."
    caller: Caller | None = None
    by: str | None = None  # X-Actor, once the request has got through (administrative routes only)

    async def prepare(self) -> None:
        super().prepare()
        token = self._bearer()
        known, caller = self._known(token)
        # a key this process knows: its client's and tenant's limits go in the address's round trip
        later = self._caller_limits(caller) if known and caller is not None else []
        decisions = await self.state.limiter.check([(self.route.rate, self.limit_key), *later])
        self.keep_header("X-RateLimit-Limit", str(decisions[0].limit))
        self.keep_header("X-RateLimit-Remaining", str(decisions[0].remaining))
        await self._enforce(decisions[0], self.limit_key, self.route.rate, "Too many requests; slow down.")
        self.caller = caller if known else await self.service.caller(token)  # the database's answer
        if self.caller is None:
            metrics.AUTH_FAILURES.inc()
            await self.state.refusals.refused(self.limit_key, self.context, self.service.record)
            raise errors.Unauthorized(self.unauthorized)
        metrics.CLIENT_REQUESTS.labels(self.caller.name).inc()
        if later:
            counted = decisions[1:]
        else:
            later = self._caller_limits(self.caller)
            counted = await self.state.limiter.check(later) if later else []
        for (scope, who), decision in zip(later, counted, strict=False):
            await self._enforce(decision, who, scope, self._limited(scope), _reason(scope), client=self.caller.name)
        if not self.caller.may(self.route.scope):
            await self._deny(
                f"This API key's client ({self.caller.name}) may not do this: it needs the {self.route.scope!r} scope.",
                self.route.scope,
            )
        if self.route.tenanted:
            self.tenant = await self._acting_tenant()
        if not any(scope.startswith("tenant:") for scope, _ in later):  # its tenant was not known then: now it is
            for scope, who in self._tenant_limits(self.caller):
                await self._limit(scope, who, self._limited(scope), _reason(scope))
        if self.route.takes_actor:
            self.by = self._actor()

    def _actor(self) -> str | None:
        """X-Actor: the person or ticket an administrative request is made for (`validation.actor`), or None.
        Read last, once the request is authenticated, allowed and counted: the refusals before it (and their
        audit rows) name no one an unchecked request claimed to be; an invalid one is answered 400
        INVALID_ACTOR and writes nothing. Sent as UTF-8 (HTTP hands headers over as Latin-1)."""
        sent = self.request.headers.get_list("X-Actor")
        if not sent:
            return None
        if len(sent) > 1:
            raise errors.InvalidActor(
                "Send one X-Actor header, naming one person or ticket.", details={"field": "X-Actor"}
            )
        try:
            value = sent[0].encode("latin-1").decode("utf-8")
        except UnicodeError:
            value = None  # refused below, as any other unreadable value
        return validation.actor(value)

    async def _acting_tenant(self) -> Tenant:
        """The tenant the request acts in: its client's, or — for a client with the `operator` scope — the one
        its X-Tenant header names. Any other client naming another tenant is refused whether or not that tenant
        exists (no answer tells a tenant's client of another tenant)."""
        own = await self.service.tenant(self.caller.tenant_id)
        asked = self.request.headers.get("X-Tenant")
        if asked is None or asked == own.name:
            return own
        if not self.caller.operator:
            await self._deny(
                f"This API key's client ({self.caller.name}) acts in its own tenant only: naming another in X-Tenant "
                "needs the 'operator' scope.",
                "operator",
            )
        tenant = await self.service.tenant_named(asked)
        if tenant is None:
            raise errors.NotFound(f"There is no tenant named {asked[:64]!r}.")
        return tenant

    async def _deny(self, message: str, scope: str) -> NoReturn:
        """403, audited (the route as its template: a path holds ids, and the row is no place for them)."""
        metrics.AUTH_FAILURES.inc()
        data = {"route": self.route.path, "scope": scope}
        await self.service.record(Action.ACCESS_DENIED, self.context, reason="INSUFFICIENT_SCOPE", data=data)
        raise errors.InsufficientScope(message, details={"scope": scope})

    def _caller_limits(self, caller: Caller) -> list[tuple[str, str]]:
        """The limits a request of `caller` counts against after its address's: its client's, then its tenant's
        (shared by all the tenant's clients; a tenant may have its own rates)."""
        found = (
            [(f"client:{self.route.scope}", caller.name)]
            if self.state.limiter.has(f"client:{self.route.scope}")
            else []
        )
        return found + self._tenant_limits(caller)

    def _tenant_limits(self, caller: Caller) -> list[tuple[str, str]]:
        """Its tenant's limit for the route's scope (the tenant's own rate, or RATE_LIMIT_PER_TENANT's); none
        while this process does not know the tenant yet (`prepare` counts it once it does)."""
        limiter, scope, found = self.state.limiter, self.route.scope, []
        tenant = self.service.known_tenant(caller.tenant_id)
        if tenant is None:
            return found
        own = dict(tenant.rate_limits)
        who = str(caller.tenant_id)
        if scope in own:  # named by its rate too: a tenant given a new rate starts counting afresh
            found.append((limiter.ensure(f"tenant:{who}:{scope}:{own[scope]}", own[scope]), who))
        elif limiter.has(f"tenant:{scope}"):
            found.append((f"tenant:{scope}", who))
        return found

    def _limited(self, scope: str) -> str:
        if scope.startswith("client:"):
            return f"Too many requests from client {self.caller.name} for {self.route.scope!r}; slow down."
        return f"Too many requests from this tenant's clients for {self.route.scope!r}; slow down."

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
        data = {"route": self.route.path, **data}  # the template: a path holds ids, and the row is no place for them
        await self.service.record(Action.RATE_LIMITED, self.context, reason=reason, data=data)


def _reason(scope: str) -> str:
    """A limit's name in the audit trail: CLIENT:VERIFY for a client's, TENANT:VERIFY for a tenant's (its own
    rate, if any, is in the scope's name, not in the reason column)."""
    kind, _, rest = scope.partition(":")
    return f"{kind}:{rest.split(':')[-2] if kind == 'tenant' and rest.count(':') >= 2 else rest}".upper()
