"""Group commit on the event loop (PostgreSQL): the writes and reads of many requests share one statement.

Each request is still decided on its own and gets its own guarded transition and audit rows; what is
shared is the round trip and the commit. Requests that arrive while a statement is in flight wait for
it and go together in the next one (`store.APPLY`, `store.READ`: one element per request). With
no load a request goes out at once, alone; under load the batches grow by themselves and the database's
cost per request falls (measured on the benchmark machine: ~290 µs of PostgreSQL CPU per single-row
statement, ~80 µs per row in batches of 8, ~50 µs in batches of 16).

A request is answered only after the statement holding it has committed, so an answer is exactly as
durable as a statement of its own. One device appears at most once in a batch (the engine lets one
request per device at a time through), and batches are sent in device order.

One request never fails another's: when the database refuses a batch for one of its rows, each request
in it is sent again alone and gets its own answer. A deadlock or serialization failure undoes the whole
statement; every request in it is then answered `rolled_back` (not applied), and decides again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import psycopg2
import psycopg2.extensions
from prometheus_client import Histogram

from ..core.errors import ServiceError


class Pool(Protocol):
    """What a batch is sent through (`pg_eventloop.AsyncPool`): one statement, its rows."""

    async def fetchall(self, sql: str, args: tuple = ()) -> list[tuple]: ...


MAX_BATCH = 128


class GroupCommit:
    def __init__(
        self,
        pool: Pool,
        statement: str,
        to_args: Callable[[list[Any]], tuple],
        from_rows: Callable[[Sequence[tuple], list[Any]], list[Any]],
        size_metric: Histogram,
        rolled_back: Any = None,
    ):
        """`to_args(items)`: the statement's parameters for a batch; `from_rows(rows, items)`: the result
        of each item, in order; `rolled_back`: the result of an item whose statement was undone."""
        self.pool, self.statement, self.size_metric = pool, statement, size_metric
        self.to_args, self.from_rows, self.rolled_back = to_args, from_rows, rolled_back
        self.max_batch = MAX_BATCH
        self._waiting: dict[Hashable, tuple[Any, asyncio.Future]] = {}
        self._task: asyncio.Future | None = None  # kept: the event loop holds tasks only weakly
        self.batches = 0  # statements sent

    async def submit(self, key: Hashable, item: Any) -> Any:
        """The result for `item` once the statement holding it has committed."""
        if key in self._waiting:
            raise RuntimeError(f"{key!r} is already waiting for this batch")  # the engine's turns prevent it
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = (item, future)
        if self._task is None:
            self._task = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                keys = sorted(self._waiting)[: self.max_batch]  # one lock order for every batch
                await self._send([self._waiting.pop(key) for key in keys])
        finally:
            self._task = None

    async def _send(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.batches += 1
        self.size_metric.observe(len(batch))
        items = [item for item, _ in batch]
        try:
            results = self.from_rows(await self.pool.fetchall(self.statement, self.to_args(items)), items)
        except psycopg2.extensions.TransactionRollbackError:
            results = [self.rolled_back] * len(batch)
        except (ServiceError, psycopg2.Error) as exc:
            if len(batch) > 1 and not isinstance(exc, ServiceError):  # one row refused: each on its own
                for entry in batch:
                    await self._send([entry])
                return
            for _, future in batch:  # the database is unavailable (503), or this one request's row was refused
                _settle(future, exception=exc)
            return
        except BaseException:  # cancelled at shutdown
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future, result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():  # its request was cancelled while waiting
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
