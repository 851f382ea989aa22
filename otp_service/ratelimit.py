"""Per-client request limits with the `limits` library: in process, or shared through Redis.

When Redis is configured but unreachable the limiter either falls back to in-process
counters (fail open: availability first, the default) or refuses requests (fail closed),
as RATE_LIMIT_ON_REDIS_ERROR says. Either way the outage is logged, at most once a minute.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from . import metrics
from .errors import RateLimiterUnavailable

log = logging.getLogger("otp_service.ratelimit")

REDIS_TIMEOUT_SECONDS = 0.5
WARN_EVERY_SECONDS = 60


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # seconds until a request would be allowed again (0 when allowed)
    degraded: bool = False  # counted in process because the shared store failed


class RateLimiter:
    def __init__(self, limits_by_scope: dict[str, str], redis_url: str = "", fail_open: bool = True):
        self._limits = {scope: parse_many(text) for scope, text in limits_by_scope.items()}
        self._local = SlidingWindowCounterRateLimiter(storage_from_string("async+memory://"))
        self._shared = None
        if redis_url:
            storage = storage_from_string(
                "async+" + redis_url,
                implementation="redispy",
                wrap_exceptions=True,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._shared = SlidingWindowCounterRateLimiter(storage)
        self.fail_open = fail_open
        self._warned_at = -math.inf
        self.fallbacks = 0  # requests counted in process because Redis failed (exported as a metric)

    async def hit(self, scope: str, client: str, headers: bool = True) -> Decision:
        """Count one request of `client` against every limit of `scope`; the tightest limit decides."""
        items = self._limits[scope]
        limiter, degraded = self._shared or self._local, False
        try:
            return await self._hit(limiter, items, scope, client, degraded, headers)
        except Exception as exc:  # any storage failure: connection refused, timeout, protocol
            if limiter is self._local:
                raise
            self._warn(exc)
            metrics.RATE_LIMIT_FALLBACKS.inc()
            if not self.fail_open:
                raise RateLimiterUnavailable("Rate limiting is unavailable; try again shortly.") from None
            self.fallbacks += 1
            return await self._hit(self._local, items, scope, client, True, headers)

    def has(self, scope: str) -> bool:
        return scope in self._limits

    async def allow(self, scope: str, client: str) -> int:
        """Count one request, without the window statistics `hit` reads for its headers (one round trip per
        limit, not two): 0 when allowed, else the seconds until it would be."""
        decision = await self.hit(scope, client, headers=False)
        return decision.retry_after

    async def _hit(
        self, limiter, items: list[RateLimitItem], scope: str, client: str, degraded: bool, headers: bool = True
    ) -> Decision:
        if not headers:
            refused = [item for item in items if not await limiter.hit(item, scope, client)]
            if not refused:
                return Decision(True, items[0].amount, 0, 0, degraded)
            resets = [(await limiter.get_window_stats(item, scope, client)).reset_time for item in refused]
            return Decision(False, refused[0].amount, 0, max(1, math.ceil(max(resets) - time.time())), degraded)
        allowed, tightest, remaining, retry = True, items[0], None, 0
        for item in items:
            if not await limiter.hit(item, scope, client):
                allowed = False
            stats = await limiter.get_window_stats(item, scope, client)
            if remaining is None or stats.remaining < remaining:
                tightest, remaining = item, stats.remaining
            if not allowed:
                retry = max(retry, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, tightest.amount, max(0, remaining or 0), max(1, retry) if not allowed else 0, degraded)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            mode = "counting in process (fail open)" if self.fail_open else "refusing requests (fail closed)"
            log.warning("rate-limit store unreachable (%s); %s", type(exc).__name__, mode)
