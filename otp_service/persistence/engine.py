"""Carrying a decision to the database: decide on the device's state, write only if that state is still
current, and decide again on the newer state when it is not.

`settle` is that loop, written once and free of I/O: it yields what it needs done (read a state, apply a
transition, or — after a few lost races — read, decide and apply under the row lock) and is driven by
`Engine.run` (blocking: CLI, demo data, thread pool) or `AsyncEngine.run` (the event loop, where reads
and writes of many requests share statements). Either way the answer a caller gets is the verdict of the
transition that was applied, made on the state the row had when it applied.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..audit.rows import RequestContext
from ..core.transitions import UNKNOWN, DeviceState, Transition
from ..metrics import OVERTAKEN
from .store import Applied, Decide, Key, Store

_OVERTAKEN_OPTIMISTIC, _OVERTAKEN_LOCKED = OVERTAKEN.labels("optimistic"), OVERTAKEN.labels("locked")

OPTIMISTIC_ATTEMPTS = 4  # then the row lock: a device under a storm of requests from several processes
DEVICE_CACHE_SIZE = 32768  # states of about 0.75 KiB each: at most ~25 MiB per process


class Read(NamedTuple):
    key: Key


class Apply(NamedTuple):
    transition: Transition
    ctx: RequestContext


class ApplyLocked(NamedTuple):
    key: Key
    decide: Decide
    ctx: RequestContext


@dataclass(frozen=True)
class Plan:
    """One command, ready to run: its decision as a function of the device's state, and how to answer."""

    device_id: str
    decide: Decide
    ctx: RequestContext
    answer: Callable[[Transition], dict[str, Any]]
    assume: Any = UNKNOWN  # the state to decide on first when none is cached (registration: None, absent)

    @property
    def key(self) -> Key:
        """The device it is about: its id within the tenant the request acts in."""
        return self.ctx.tenant_id, self.device_id


def settle(plan: Plan, known: Any, optimistic: bool) -> Generator[Read | Apply | ApplyLocked, Any, Transition]:
    """Decide and apply until a transition applies; returns it. `known`: the state to try first."""
    if optimistic:
        state = known
        for _ in range(OPTIMISTIC_ATTEMPTS):
            if state is UNKNOWN:
                state = yield Read(plan.key)
            transition = plan.decide(state)  # even one that writes nothing: `state` may be stale
            applied, state = yield Apply(transition, plan.ctx)
            if applied:
                return transition
    return (yield ApplyLocked(plan.key, plan.decide, plan.ctx))


class _Runner:
    """What both drivers of `settle` share: the last state seen of each device (a hint: a stale one costs a
    lost race, never a wrong answer), kept from every read, lost race and applied transition."""

    def __init__(self, cache: DeviceCache):
        self.cache = cache

    def _known(self, plan: Plan) -> Any:
        return self.cache.get(plan.key, plan.assume)

    def _seen(self, key: Key, state: Any) -> Any:
        """Remember what a read or a lost race showed of the device (None: absent; UNKNOWN: read it again)."""
        if state is None or state is UNKNOWN:
            self.cache.discard(key)
        else:
            self.cache.put(state)
        return state

    def _outcome(self, op: Apply, outcome: Applied) -> Applied:
        applied, current = outcome
        if not applied:
            _OVERTAKEN_OPTIMISTIC.inc()
            self._seen((op.ctx.tenant_id, op.transition.device_id), current)
        return outcome

    def _applied(self, plan: Plan, transition: Transition) -> Transition:
        self._seen(plan.key, transition.current)
        return transition


class Engine(_Runner):
    """Runs plans against a blocking store (CLI, demo data, the thread pool, SQLite)."""

    def __init__(self, store: Store, cache: DeviceCache | None = None):
        super().__init__(cache or DeviceCache())
        self.store = store

    def run(self, plan: Plan) -> dict[str, Any]:
        steps = settle(plan, self._known(plan), self.store.optimistic)
        reply = None
        while True:
            try:
                op = steps.send(reply)
            except StopIteration as done:
                return plan.answer(self._applied(plan, done.value))
            if isinstance(op, Read):
                reply = self._seen(op.key, self.store.read(op.key))
            elif isinstance(op, Apply):
                reply = self._outcome(op, self.store.apply(*op))
            else:
                if self.store.optimistic:  # else every command takes the row lock: nothing overtook it
                    _OVERTAKEN_LOCKED.inc()
                reply = self.store.apply_locked(*op)

    def warm(self, limit: int | None = None) -> int:
        """Cache the states of the most recently used active devices; returns how many."""
        states = self.store.recent(min(limit or self.cache.size, self.cache.size))
        for state in reversed(states):
            self.cache.put(state)
        return len(states)


class AsyncEngine(_Runner):
    """Runs plans on the event loop (PostgreSQL), where reads and writes of many requests share statements.
    Requests for one device take turns within the process, so only other processes can overtake a decision.
    It shares the blocking engine's cache: both paths of one process see what either learnt."""

    def __init__(self, store: AsyncStore, cache: DeviceCache):
        super().__init__(cache)
        self.store = store
        self._turns: dict[Key, list] = {}  # device -> [lock, requests holding or waiting for it]

    async def run(self, plan: Plan) -> dict[str, Any]:
        key = plan.key
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = [asyncio.Lock(), 0]
        turn[1] += 1
        try:
            async with turn[0]:
                return await self._settle(plan)
        finally:
            turn[1] -= 1
            if not turn[1]:
                del self._turns[key]

    async def _settle(self, plan: Plan) -> dict[str, Any]:
        steps = settle(plan, self._known(plan), optimistic=True)
        reply = None
        while True:
            try:
                op = steps.send(reply)
            except StopIteration as done:
                return plan.answer(self._applied(plan, done.value))
            if isinstance(op, Read):
                reply = self._seen(op.key, await self.store.read(op.key))
            elif isinstance(op, Apply):
                reply = self._outcome(op, await self.store.apply(*op))
            else:
                _OVERTAKEN_LOCKED.inc()
                reply = await self.store.apply_locked(*op)


class AsyncStore(Protocol):
    """The device table as the event loop sees it (`pg_eventloop.EventLoopStore`)."""

    async def read(self, key: Key) -> DeviceState | None: ...

    async def apply(self, transition: Transition, ctx: RequestContext) -> Applied: ...

    async def apply_locked(self, key: Key, decide: Decide, ctx: RequestContext) -> Transition: ...


class DeviceCache:
    """A bounded, thread-safe LRU of device states by key (tenant id, device id)."""

    def __init__(self, size: int = DEVICE_CACHE_SIZE):
        self._items: OrderedDict[Key, DeviceState] = OrderedDict()
        self.size = size
        self._lock = threading.Lock()

    def get(self, key: Key, default: Any = None) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item

    def put(self, state: DeviceState) -> None:
        with self._lock:
            self._items[state.key] = state
            self._items.move_to_end(state.key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def forget(self, key: Key) -> None:
        """A device that is gone (erased): its remembered state would only cost a lost race, but it is
        personal data the process should not keep."""
        with self._lock:
            self._items.pop(key, None)

    def refresh(self, state: DeviceState) -> None:
        """A newer state of a device this process remembers (another process wrote it); others are ignored,
        so a process remembers only what it has used."""
        with self._lock:
            current = self._items.get(state.key)
            if current is not None and state.version > current.version:
                self._items[state.key] = state

    def discard(self, key: Key) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
