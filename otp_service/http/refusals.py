"""Refused requests in the audit trail, a flood of them in a few rows: a wrong or missing API key is recorded
in full the first FULL_ROWS times an address (an IPv6 /64) sends one in a window — enough to see what a
mistyped key or a probe looks like — and the rest of that window's as one row saying how many
(`AUTH_FAILED`, reason `REPEATED`, data `repeated`, `first`, `last`). Each row is chained and signed
like any other, so an unauthenticated flood — which the rate limit already slows — cannot become
a flood of writes, yet every refusal is counted (reports add `repeated` to the rows' count).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from ..audit.rows import RequestContext
from ..core.actions import Action
from ..core.transitions import isoformat, to_datetime

WINDOW_SECONDS = 60.0
FULL_ROWS = 5  # per address and window, recorded each in full before the rest are counted
REMEMBERED = 10_000  # addresses; beyond that, the oldest window is written out early


@dataclass
class _Window:
    ends: float
    full: int = 1  # recorded in full so far: the one that opened the window
    repeated: int = 0
    first: datetime | None = None  # of the repeated ones
    last: datetime | None = None
    ctx: RequestContext | None = None  # the last repeated one's: its address and User-Agent


Record = Callable[..., Awaitable[None]]


class RefusalLog:
    """Per process: how many refusals each address has had recorded in full in the current window, and how
    many more it has sent since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.clock, self.wall = clock, wall
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    async def refused(self, key: str, ctx: RequestContext, record: Record) -> None:
        """A request from `key` (its address or network) refused for its key: recorded, or counted."""
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and window.ends > now and window.full < FULL_ROWS:
            window.full += 1
            await record(Action.AUTH_FAILED, ctx)
            return
        if window is not None and window.ends > now:
            at = to_datetime(self.wall())
            window.repeated += 1
            window.first, window.last, window.ctx = window.first or at, at, ctx
            return
        if window is not None:
            await self._write(self._windows.pop(key), record)
        self._windows[key] = _Window(now + WINDOW_SECONDS)
        while len(self._windows) > REMEMBERED:
            await self._write(self._windows.popitem(last=False)[1], record)
        await record(Action.AUTH_FAILED, ctx)

    async def flush(self, record: Record, everything: bool = False) -> int:
        """Write out the windows that have ended (all of them at shutdown); returns how many rows."""
        now, written = self.clock(), 0
        for key in [k for k, w in self._windows.items() if everything or w.ends <= now]:
            written += await self._write(self._windows.pop(key), record)
        return written

    async def _write(self, window: _Window, record: Record) -> int:
        if not window.repeated:
            return 0
        data = {"repeated": window.repeated, "first": isoformat(window.first), "last": isoformat(window.last)}
        await record(Action.AUTH_FAILED, window.ctx, reason="REPEATED", data=data)
        return 1
