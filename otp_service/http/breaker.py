"""A circuit breaker for the rate limiter's round trips to Redis.

A Redis that accepts connections but never answers (overloaded, SIGSTOPped, a half-dead network path)
costs every request the whole socket timeout before the failure policy applies — and requests queue behind
the round trip out, so they wait longer still. After `failures` round trips in a row have failed the breaker
*opens*: for `cool_down` seconds no request is sent, and each gets the failure policy at once. Then one
request is let through (*half-open*), the probe; its answer closes the breaker, its failure opens it again.

Round trips, not requests, are counted: the limiter sends the calls of all requests in flight in one
pipeline, so one stall fails many requests at once, and is one failure. Consecutive failures rather than a
rate in a window: round trips are sent one at a time, so "the last N all failed" is already a window, and
one success in between means Redis answers. Pure: the clock is injected, nothing here touches the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(self, failures: int, cool_down: float, clock: Callable[[], float] = time.monotonic):
        if failures < 1 or cool_down <= 0:
            raise ValueError("a breaker needs at least one failure and a positive cool-down")
        self.failures, self.cool_down, self.clock = failures, cool_down, clock
        self.state = CLOSED
        self._failed = 0  # round trips failed in a row
        self._since = 0.0  # when it last opened, or when its probe went out

    def allow(self) -> bool:
        """May this request be sent? Closed: yes. Open: no, until the cool-down has passed; then this request
        is the probe. Half-open: no while the probe is out — unless it has been out a whole cool-down (its
        request was cancelled, its answer lost): a lost probe must not keep the breaker from closing."""
        if self.state == CLOSED:
            return True
        now = self.clock()
        if now - self._since < self.cool_down:
            return False
        self.state, self._since = HALF_OPEN, now
        return True

    @property
    def sending(self) -> bool:
        """Whether round trips go out now (closed, or a probe's): `allow` without taking the probe's place."""
        return self.state != OPEN

    def succeeded(self) -> bool:
        """A round trip was answered. True when that closed the breaker."""
        closed, self.state, self._failed = self.state != CLOSED, CLOSED, 0
        return closed

    def failed(self) -> bool:
        """A round trip failed. True when that opened a closed breaker (a failed probe opens it again, quietly:
        the outage goes on, and has been reported)."""
        self._failed += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self._failed >= self.failures):
            opened, self.state, self._since = self.state == CLOSED, OPEN, self.clock()
            return opened
        return False
