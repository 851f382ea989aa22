"""Group commit for the hot writes of one process (PostgreSQL, on the event loop): verifications and
registrations; the same mechanism batches the reads of uncached devices' key material.

Each write is still decided on its own and still gets its own conditional change and audit row; what
is shared is the round trip and the commit. Writes that arrive while a batch is in flight wait for it
and go together in the next one, as one statement (`hotpath.VERIFY_BATCH`, `hotpath.REGISTER_BATCH`),
whose parameters are one array per column. With no load a write goes out at once, alone; under load
the batches grow by themselves and the database's cost per write falls (measured on the benchmark
machine: ~290 µs of PostgreSQL CPU per single-row statement, ~80 µs per row in batches of 8, ~50 µs in
batches of 16).

A request answers only after the statement holding its write has committed, so an answer is exactly
as durable as before. The statement is atomic: a failed batch applies none of its writes, and every
request in it gets the error. A key (device id) appears at most once per batch, and batches are sent
in key order; a second write for a key already waiting is refused with `AlreadyWaiting` (a double
submit or an attack), and its caller takes the full path, which waits on the row lock like any other
transaction.
"""

from __future__ import annotations

import asyncio

import psycopg2.extensions
from prometheus_client import Histogram

from .pgasync import AsyncPool

MAX_BATCH = 128


class AlreadyWaiting(Exception):
    """A write for this key is already waiting for the next batch."""


class GroupCommit:
    def __init__(self, pool: AsyncPool, statement: str, size_metric: Histogram, extra_args: tuple = ()):
        """`statement` takes one array per element of a row, then `extra_args`, and returns rows whose
        first column is the key of the write they report on."""
        self.pool, self.statement, self.size_metric, self.extra_args = pool, statement, size_metric, extra_args
        self.max_batch = MAX_BATCH
        self._waiting: dict[str, tuple[tuple, asyncio.Future]] = {}
        self._task: asyncio.Future | None = None  # kept: the event loop holds tasks only weakly
        self.batches = 0  # statements sent

    async def apply(self, key: str, row: tuple) -> tuple | None:
        """The statement's row for this write once its batch has committed, or None if it returned none
        (for a verification: the write no longer applied)."""
        if key in self._waiting:
            raise AlreadyWaiting(key)
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = (row, future)
        if self._task is None:
            self._task = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                keys = sorted(self._waiting)[: self.max_batch]  # one lock order for every batch
                await self._send({key: self._waiting.pop(key) for key in keys})
        finally:
            self._task = None

    async def _send(self, batch: dict[str, tuple[tuple, asyncio.Future]]) -> None:
        self.batches += 1
        self.size_metric.observe(len(batch))
        try:
            columns = tuple(list(column) for column in zip(*(row for row, _ in batch.values()), strict=True))
            rows = await self.pool.fetchall(self.statement, (*columns, *self.extra_args))
        except psycopg2.extensions.TransactionRollbackError:
            rows = []  # a deadlock or serialization failure: nothing applied, and every caller takes the full path
        except Exception as exc:  # the database is unavailable (503) or the statement failed: none applied
            for _, future in batch.values():
                _settle(future, exception=exc)
            return
        except BaseException:  # cancelled at shutdown
            for _, future in batch.values():
                future.cancel()
            raise
        by_key = {row[0]: row for row in rows}
        for key, (_, future) in batch.items():
            _settle(future, by_key.get(key))


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    if future.done():  # its request was cancelled while waiting
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
