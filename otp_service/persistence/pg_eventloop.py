"""PostgreSQL on the event loop, for the commands: psycopg2's asynchronous mode, with a small pool, and
the device store over it (`EventLoopStore`).

Queries and everything else go through Peewee on a thread pool. The commands' statements (`store.READ`,
`store.APPLY`, the health check) are single statements, so they need no transaction, and running them on
the event loop saves the thread hop: no hand-off to a worker, no contention for the GIL, no futex wake per
request. Measured on the benchmark machine (2 processes, 32 connections), a handler running
`SELECT 1` this way served ~6,100 requests/s with a p99 of 10 ms, against 4,600-5,600/s and a p99
of 0.25-1.4 s through a thread pool (aiopg, the library for this, served 5,000/s: its per-query
wrappers cost more than the hop they save).

A connection is opened on first use, prepares the same statements as the Peewee pool's connections
(`_PostgresPool.prepared`), and is dropped, with every idle one, on any connection-level error, so
the next request reconnects after a server restart. Every wait is bounded: a connection or a free slot by
the pool's timeout, a statement by the server's statement_timeout (the same value) and, should the server
stop answering altogether, by `statement_wait`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import psycopg2
import psycopg2.extensions

from .. import metrics
from ..audit.journal import Journal
from ..audit.rows import RequestContext
from ..core import errors
from ..core.transitions import UNKNOWN, DeviceState, Transition
from . import store
from .group_commit import GroupCommit

log = logging.getLogger("otp_service.pg_eventloop")

# What a lost, unreachable or too slow server raises (QueryCanceled, from statement_timeout, is an OperationalError).
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, TimeoutError, OSError)


class AsyncPool:
    def __init__(self, connect_params: dict[str, Any], size: int, timeout: float, prepared: dict[str, str]):
        self._params = {k: v for k, v in connect_params.items() if v is not None}
        self._prepared = prepared  # shared with the Peewee pool: name -> "PREPARE name AS …"
        self.size, self.timeout = size, timeout
        self._idle: list[psycopg2.extensions.connection] = []
        self._slots: asyncio.Semaphore | None = None
        self.in_use = 0

    @property
    def connect_params(self) -> dict[str, Any]:
        """What a connection of this pool connects with (a listener's own connection takes the same)."""
        return dict(self._params)

    @classmethod
    def for_database(cls, database, size: int, timeout: float) -> AsyncPool:
        """A pool with the same server, credentials, options and prepared statements as Peewee's `database`."""
        return cls({"dbname": database.database, **database.connect_params}, size, timeout, database.prepared)

    async def fetchone(self, sql: str, args: tuple = ()) -> tuple | None:
        """Run one statement (autocommit: it is its own transaction) and return its first row, if any."""
        rows = await self._run(sql, args, many=False)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, args: tuple = ()) -> list[tuple]:
        return await self._run(sql, args, many=True)

    async def _run(self, sql: str, args: tuple, many: bool) -> list[tuple]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        try:
            async with asyncio.timeout(self.timeout):  # cheaper than wait_for: no task, one timer
                await self._slots.acquire()
        except TimeoutError:
            raise self._unavailable(TimeoutError()) from None
        self.in_use += 1
        conn = None
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                await self._wait(conn, self.statement_wait)
                if cursor.description is None:
                    return []
                return cursor.fetchall() if many else cursor.fetchmany(1)
        except psycopg2.extensions.TransactionRollbackError:
            raise  # a deadlock or serialization failure: the statement is undone, the connection is fine
        except CONNECTION_ERRORS as exc:
            self._discard(conn)
            conn = None
            raise self._unavailable(exc) from None
        except BaseException:
            if conn is not None and (conn.closed or conn.isexecuting()):  # cancelled mid-statement
                self._discard(conn)
                conn = None
            raise
        finally:
            if conn is not None:
                self._idle.append(conn)
            self.in_use -= 1
            self._slots.release()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(async_=True, **self._params)
        try:
            await self._wait(conn)
            for statement in self._prepared.values():
                with conn.cursor() as cursor:
                    cursor.execute(statement)
                    await self._wait(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def statement_wait(self) -> float:
        """How long to wait for a statement's answer. Longer than the server's statement_timeout (the pool's
        timeout): a slow statement is cancelled by the server, which rolls it back and says so, and the
        answer is a true 503. A client that gave up first could not know whether its write had committed
        (and would answer 503 for a change that was made, audited and counted)."""
        return 2 * self.timeout + 1

    async def _wait(self, conn: psycopg2.extensions.connection, limit: float | None = None) -> None:
        """Poll the connection until its operation completes, sleeping on its socket in between."""
        async with asyncio.timeout(self.timeout if limit is None else limit):
            await _poll(conn)

    def _discard(self, conn: psycopg2.extensions.connection | None) -> None:
        if conn is not None:
            conn.close()
        self.close()  # after a server restart every idle connection is dead too

    def _unavailable(self, exc: BaseException) -> errors.ServiceError:
        log.warning("database unavailable: %s", type(exc).__name__)
        metrics.DB_UNAVAILABLE.inc()
        return errors.DatabaseUnavailable("The database is unavailable; try again shortly.")


async def _poll(conn: psycopg2.extensions.connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            watch, unwatch = loop.add_reader, loop.remove_reader
        elif state == psycopg2.extensions.POLL_WRITE:
            watch, unwatch = loop.add_writer, loop.remove_writer
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        ready = loop.create_future()
        fd = conn.fileno()
        watch(fd, _resolve, ready)
        try:
            await ready
        finally:
            unwatch(fd)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class EventLoopStore:
    """`store.PostgresStore` on the event loop: reads and transitions of concurrent requests go in shared
    statements (`group_commit`); the row-lock fallback, a transaction, runs on the thread pool."""

    def __init__(
        self,
        pool: AsyncPool,
        statements: store.Statements,
        journal: Journal,
        apply_locked: Callable[[store.Key, store.Decide, RequestContext], Transition],
        executor: Executor,
    ):
        """`statements`: the prepared READ and APPLY and the name this process writes under (the blocking
        store's, so both paths share the prepared statements); `apply_locked`: the blocking store's
        row-lock fallback inside a unit of work (a connection, errors as 503s)."""
        self._apply_locked, self.executor = apply_locked, executor
        self.reads = GroupCommit(pool, statements.read, store.read_args, store.read_results, metrics.READ_BATCH_SIZE)
        self.writes = GroupCommit(
            pool,
            statements.apply,
            lambda items: store.apply_args(items, statements.sender, journal),
            lambda rows, items: store.apply_results(rows, len(items)),
            metrics.APPLY_BATCH_SIZE,
            rolled_back=(False, UNKNOWN),  # undone whole (a deadlock): read again
        )

    async def read(self, key: store.Key) -> DeviceState | None:
        return await self.reads.submit(key, key)

    async def apply(self, transition: Transition, ctx: RequestContext) -> store.Applied:
        return await self.writes.submit((ctx.tenant_id, transition.device_id), (transition, ctx))

    async def apply_locked(self, key: store.Key, decide: store.Decide, ctx: RequestContext) -> Transition:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._apply_locked, key, decide, ctx)


class StateListener:
    """Keeps the device states this process remembers current: LISTENs for the states that other
    processes' writes notify (`store.APPLY`) and passes each on. Without it a state another process
    changed costs a lost race when next used here (a round trip); with it, usually nothing. Correctness
    never depends on it: a write still applies only on the state it was decided on."""

    def __init__(self, connect_params: dict[str, Any], sender: str, refresh: Callable[[DeviceState], None]):
        """`connect_params`: the server to listen on (`AsyncPool.connect_params`); `sender`: this process's name
        in the notifications (its own are skipped); `refresh`: what to do with another process's new state."""
        self._params, self.sender, self.refresh = connect_params, sender, refresh
        self.received = 0

    async def run(self) -> None:
        """Listen until cancelled, reconnecting (after a pause) when the connection is lost."""
        loop = asyncio.get_running_loop()
        while True:
            conn = None
            try:
                conn = psycopg2.connect(async_=True, **self._params)
                await _poll(conn)
                with conn.cursor() as cursor:
                    cursor.execute(f"LISTEN {store.STATES_CHANNEL}")
                    await _poll(conn)
                while True:
                    ready = loop.create_future()
                    loop.add_reader(conn.fileno(), _resolve, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(conn.fileno())
                    conn.poll()
                    while conn.notifies:
                        self._receive(conn.notifies.pop(0).payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server went away, or a payload we cannot read: start afresh
                log.warning("device state listener restarting: %s", type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                if conn is not None:
                    conn.close()

    def _receive(self, payload: str) -> None:
        if payload.startswith(f'["{self.sender}"'):  # our own writes: known already
            return
        for state in store.states_from_notification(payload)[1]:
            self.received += 1
            self.refresh(state)
