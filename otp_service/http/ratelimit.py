"""Per-client request limits with the `limits` library: in process, or shared through Redis.

A request is counted against several limits (its address's, then its API client's) by **one** script
call: the library's own sliding-window scripts, composed into one script that takes the limits in order,
counts a limit only while every earlier one allowed the request (a refused address never spends its
client's budget), and returns each window so the `X-RateLimit-*` headers need no second call. And the
calls of all requests in flight share a round trip: while one pipeline is out, the next gathers (as the
group commit does for PostgreSQL) — redis-py's cost per call, not Redis's, was what a request paid most.

When Redis is configured but unreachable the limiter either falls back to in-process
counters (fail open: availability first, the default) or refuses requests (fail closed),
as RATE_LIMIT_ON_REDIS_ERROR says. Either way the outage is logged, at most once a minute. A Redis that
stalls (accepts, never answers) would make every request wait its timeout first: after a few failed round
trips in a row a circuit breaker (`breaker.py`) stops sending any for a cool-down, so the policy applies at
once, then lets one probe through and closes when it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from .. import metrics
from ..core.errors import RateLimiterUnavailable
from .breaker import CircuitBreaker

log = logging.getLogger("otp_service.ratelimit")

REDIS_TIMEOUT_SECONDS = 0.5
# Connections to Redis per process. A burst queues for one (each holds it for one short script) instead of
# opening one connection per request in flight: a cold burst of hundreds of connects starved the event loop
# past the timeout, and a healthy Redis looked down (fail open counted in process, fail closed answered 503).
REDIS_CONNECTIONS = 16
REDIS_WAIT_SECONDS = 2.0  # for a free connection, before Redis counts as unreachable
WARN_EVERY_SECONDS = 60
# The breaker: three round trips failed in a row — 1.5 s of a stalled Redis, a few milliseconds of a refused
# one — are an outage, not a blip; then 5 s without Redis (fail open: counted in process, fail closed: 503)
# before one request probes it, so a Redis back again is used within 5 s and a dead one costs one request
# a timeout every 5 s instead of every request one.
BREAKER_FAILURES = 3
BREAKER_COOL_DOWN_SECONDS = 5.0


class BreakerOpen(Exception):
    """A request admitted before the breaker opened, not sent: the policy applies to it as to a failure."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # seconds until a request would be allowed again (0 when allowed)
    degraded: bool = False  # counted in process because the shared store failed


@dataclass(frozen=True)
class Window:
    """One limit's sliding window after a hit, as the library's `get_sliding_window` reads it."""

    acquired: bool
    previous_count: int
    previous_expires_in: float
    current_count: int
    current_expires_in: float


def window_stats(item: RateLimitItem, window: Window, now: float) -> tuple[int, float]:
    """(remaining, reset time): `SlidingWindowCounterRateLimiter.get_window_stats` of limits 5.x on a window
    already read (tests/test_ratelimit.py holds the two equal), except for a window opened this instant."""
    expiry = item.get_expiry()
    weighted = window.previous_count * window.previous_expires_in / expiry + window.current_count
    remaining = max(0, item.amount - math.floor(weighted))
    if not (window.previous_count or window.current_count):
        return remaining, now
    previous_reset_in = (
        window.previous_expires_in % (expiry / window.previous_count) if window.previous_count else math.inf
    )
    # A current window just opened has 2 × expiry to live: `% expiry` would say 0 where a whole window is left.
    current_reset_in = (window.current_expires_in % expiry or expiry) if window.current_count else math.inf
    return remaining, now + min(previous_reset_in, current_reset_in)


def decide(items: Sequence[RateLimitItem], windows: Sequence[Window], degraded: bool, now: float) -> Decision:
    """The tightest of one scope's limits speaks for the headers; a refusal waits for the last to reset."""
    allowed, tightest, remaining, retry = True, items[0], None, 0
    for item, window in zip(items, windows, strict=True):
        left, reset = window_stats(item, window, now)
        if not window.acquired:
            allowed = False
        if remaining is None or left < remaining:
            tightest, remaining = item, left
        if not allowed:
            retry = max(retry, math.ceil(reset - now))
    return Decision(allowed, tightest.amount, max(0, remaining or 0), max(1, retry) if not allowed else 0, degraded)


def _as_function(name: str, script: bytes | str) -> str:
    """A library script as a Lua function: its KEYS and ARGV become parameters, its `return` the result."""
    text = script.decode() if isinstance(script, bytes) else script
    return f"local function {name}(KEYS, ARGV)\n{text}\nend\n"


# ARGV: the number of scopes, then per scope its number of limits and per limit (amount, expiry seconds);
# KEYS: per limit the library's (previous, current) window keys. Per limit evaluated: acquired (1/0), then
# the window as the library's sliding_window script returns it. Stops at the first limit that refuses: a
# refused request spends no later limit (of its scope, e.g. a day's, or of a later scope, its client's).
COMPOSE = """
local out, k, a = {}, 1, 2
for _ = 1, tonumber(ARGV[1]) do
  local items = tonumber(ARGV[a])
  for _ = 1, items do
    local keys, amount, expiry = {KEYS[k], KEYS[k + 1]}, ARGV[a + 1], ARGV[a + 2]
    local ok = acquire(keys, {amount, expiry, 1})
    local w = window(keys, {expiry})
    out[#out + 1] = ok and 1 or 0
    for i = 1, 4 do out[#out + 1] = tonumber(w[i]) or 0 end
    if not ok then return out end
    k, a = k + 2, a + 2
  end
  a = a + 1
end
return out
"""


class RateLimiter:
    def __init__(self, limits_by_scope: dict[str, str], redis_url: str = "", fail_open: bool = True):
        self._limits = {scope: parse_many(text) for scope, text in limits_by_scope.items()}
        self._local = SlidingWindowCounterRateLimiter(storage_from_string("async+memory://"))
        self._storage = self._script = None
        if redis_url:  # a single Redis (config allows redis:// and rediss://): one script touches several keys
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=REDIS_CONNECTIONS,
                timeout=REDIS_WAIT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._storage = storage_from_string(
                "async+" + redis_url, implementation="redispy", wrap_exceptions=True, connection_pool=pool
            )
            bridge = self._storage.bridge
            self._script = bridge.get_connection().register_script(
                _as_function("acquire", bridge.SCRIPT_ACQUIRE_SLIDING_WINDOW)
                + _as_function("window", bridge.SCRIPT_SLIDING_WINDOW)
                + COMPOSE
            )
        self._waiting: list[tuple[list, list, asyncio.Future]] = []  # script calls for the next pipeline
        self._sender: asyncio.Task | None = None  # sending them (kept: asyncio holds tasks only weakly)
        self.pipelines = 0  # round trips to Redis (a test reads it: fewer than the requests in a burst)
        self.fail_open = fail_open
        self._warned_at = -math.inf
        self.fallbacks = 0  # requests counted in process because Redis failed (exported as a metric)
        self.breaker = CircuitBreaker(BREAKER_FAILURES, BREAKER_COOL_DOWN_SECONDS)  # its clock: a test's to set

    def has(self, scope: str) -> bool:
        return scope in self._limits

    def ensure(self, scope: str, rate: str) -> str:
        """A scope of its own for `rate` (a tenant's own rate limit), made on first use; returns its name."""
        if scope not in self._limits:
            self._limits[scope] = parse_many(rate)
        return scope

    async def hit(self, scope: str, client: str) -> Decision:
        """Count one request of `client` against every limit of `scope`; the tightest limit decides."""
        return (await self.check([(scope, client)]))[0]

    async def check(self, requests: Sequence[tuple[str, str]]) -> list[Decision]:
        """Count one request against each (scope, who) in order, one round trip in all; a scope is counted
        only while every earlier one allowed, so the answer may be shorter than `requests` (it ends with the
        first refusal). Only the first decision's `remaining` is meant for headers: in process, later scopes
        that allow do not read their windows."""
        if self._script is None:
            return await self._check_local(requests, False)
        if self.breaker.allow():  # else Redis is failing: the policy at once, not after a timeout
            try:
                return await self._check_shared(requests)
            except BreakerOpen:
                pass
            except Exception as exc:  # any storage failure: connection refused, timeout, protocol
                self._warn(exc)
        metrics.RATE_LIMIT_FALLBACKS.inc()  # also while the breaker is open: alerts on it go on firing
        if not self.fail_open:
            raise RateLimiterUnavailable("Rate limiting is unavailable; try again shortly.")
        self.fallbacks += 1
        return await self._check_local(requests, True)

    async def _check_shared(self, requests: Sequence[tuple[str, str]]) -> list[Decision]:
        storage, bridge = self._storage, self._storage.bridge
        keys, args = [], [len(requests)]
        for scope, who in requests:
            items = self._limits[scope]
            args.append(len(items))
            for item in items:
                key = item.key_for(scope, who)
                keys += [
                    bridge.prefixed_key(storage._previous_window_key(key)),
                    bridge.prefixed_key(storage._current_window_key(key)),
                ]
                args += [item.amount, item.get_expiry()]
        flat = await self._call(keys, args)
        now, decisions, at = time.time(), [], 0
        for scope, _ in requests:
            items, windows = self._limits[scope], []
            while at < len(flat) and len(windows) < len(items):
                ok, prev_count, prev_ttl, cur_count, cur_ttl = flat[at : at + 5]
                at += 5
                windows.append(
                    Window(bool(ok), int(prev_count), max(0, prev_ttl) / 1000, int(cur_count), max(0, cur_ttl) / 1000)
                )
                if not ok:
                    break
            if not windows:
                break
            decisions.append(decide(items[: len(windows)], windows, False, now))
        return decisions

    async def _call(self, keys: list, args: list) -> list:
        """The composed script's answer for one request, sent with every other call waiting meanwhile."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, args, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return await future

    async def _send(self) -> None:
        """One pipeline at a time: what arrives while it is out goes in the next. Each call is answered (or
        failed: the request then falls back as `check` says) on its own; none is left waiting. Each round
        trip's outcome goes to the breaker; once it is open, what was still waiting is not sent."""
        batch: list = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                if not self.breaker.sending:  # it opened while these waited: not sent
                    answers = [BreakerOpen()] * len(batch)
                else:
                    try:
                        answers = await self._pipeline([(keys, args) for keys, args, _ in batch])
                    except Exception as exc:  # the store failed for all of them
                        answers = [exc] * len(batch)
                        self._breaker_failed(exc)
                    else:
                        self._breaker_succeeded()
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if future.done():  # its request was cancelled (the client went away)
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                batch = []
        finally:  # normally nothing is left; if this task itself failed or was cancelled, nobody waits forever
            stranded, self._waiting = batch + self._waiting, []
            for _, _, future in stranded:
                if not future.done():
                    future.set_exception(RuntimeError("the rate-limit pipeline stopped"))

    async def _pipeline(self, calls: list[tuple[list, list]]) -> list:
        """EVALSHA for each call in one round trip. Calls Redis answers NOSCRIPT (it lost the script: a restart,
        a flush — perhaps between two calls of this very pipeline) are sent again with the script itself (EVAL,
        which no flush can refuse, and which caches it for the next EVALSHA), and only those: the others have
        run, and must not be counted twice. At most two round trips, however often the cache is flushed."""
        script, client = self._script, self._storage.bridge.get_connection()
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        self.pipelines += 1
        answers = await pipe.execute(raise_on_error=False)
        lost = [n for n, answer in enumerate(answers) if isinstance(answer, redis.exceptions.NoScriptError)]
        if lost:
            pipe = client.pipeline(transaction=False)
            for n in lost:
                keys, args = calls[n]
                pipe.eval(script.script, len(keys), *keys, *args)
            self.pipelines += 1
            for n, answer in zip(lost, await pipe.execute(raise_on_error=False), strict=True):
                answers[n] = answer
        return list(answers)

    async def _check_local(self, requests: Sequence[tuple[str, str]], degraded: bool) -> list[Decision]:
        decisions = []
        for n, (scope, who) in enumerate(requests):
            items, acquired = self._limits[scope], []
            for item in items:  # as the script does: the first limit that refuses ends the count
                acquired.append(await self._local.hit(item, scope, who))
                if not acquired[-1]:
                    break
            if n and all(acquired):  # only the first scope's figures reach the headers: no window to read
                decisions.append(Decision(True, items[0].amount, 0, 0, degraded))
                continue
            windows = [
                Window(ok, *await self._local.storage.get_sliding_window(item.key_for(scope, who), item.get_expiry()))
                for ok, item in zip(acquired, items, strict=False)
            ]
            decisions.append(decision := decide(items[: len(windows)], windows, degraded, time.time()))
            if not decision.allowed:
                break
        return decisions

    def _breaker_failed(self, exc: Exception) -> None:
        if self.breaker.failed():
            metrics.RATE_LIMIT_BREAKER_OPEN.set(1)
            metrics.RATE_LIMIT_BREAKER_OPENS.inc()
            mode = "counting in process (fail open)" if self.fail_open else "refusing requests (fail closed)"
            log.warning(
                "rate-limit store failed %d round trips in a row (%s): circuit open, not calling it for %g s; %s",
                self.breaker.failures,
                type(exc).__name__,
                self.breaker.cool_down,
                mode,
            )

    def _breaker_succeeded(self) -> None:
        if self.breaker.succeeded():
            metrics.RATE_LIMIT_BREAKER_OPEN.set(0)
            log.info("rate-limit store answers again: circuit closed, counting there")

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            mode = "counting in process (fail open)" if self.fail_open else "refusing requests (fail closed)"
            log.warning("rate-limit store unreachable (%s); %s", type(exc).__name__, mode)
