"""Serving: one process or several, and a graceful stop on SIGTERM.

Several processes each bind their own SO_REUSEPORT socket after the fork, so the kernel
balances connections between them (a shared socket can leave one process with every
keep-alive connection). The parent only supervises: it forwards SIGTERM/SIGINT to its
children, restarts one that crashes, and exits when they all have, so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .. import metrics
from ..config import Settings
from .app import build_state, make_app

log = logging.getLogger("otp_service.server")

# The API refuses bodies over 16 KiB itself, with a 413 JSON answer, from the Content-Length before reading
# them (its handlers stream bodies and keep at most 16 KiB). This connection-level cap only bounds how long
# a chunked body without a length is read and discarded (with BODY_TIMEOUT_SECONDS).
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024  # hard cap (connection closed); the API answers 431 JSON above 16 KiB itself
IDLE_CONNECTION_SECONDS = 75  # longer than Render's proxy keep-alive, so the proxy closes first
BODY_TIMEOUT_SECONDS = 10  # a client that trickles its body is cut off
RESTART_BACKOFF_SECONDS = 1.0
EXPIRY_SWEEP_SECONDS = 60.0
CHECKPOINT_POLL_SECONDS = 5.0
REFUSALS_FLUSH_SECONDS = 10.0


def serve(settings: Settings, processes: int = 1, grace_seconds: float = 20.0) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    if processes <= 1:
        sockets = bind_sockets(settings.port, settings.host)
        return asyncio.run(_worker(settings, sockets, grace_seconds))
    return _supervise(settings, processes, grace_seconds)


async def _worker(settings: Settings, sockets, grace_seconds: float) -> int:
    state = build_state(settings)
    state.service.start()
    server = HTTPServer(
        make_app(state),
        xheaders=False,
        max_body_size=MAX_BODY_BYTES,
        max_header_size=MAX_HEADER_BYTES,
        idle_connection_timeout=IDLE_CONNECTION_SECONDS,
        body_timeout=BODY_TIMEOUT_SECONDS,
    )
    server.add_sockets(sockets)
    # Warm the device cache in the background: serving starts at once, and requests that arrive
    # first simply take the read-then-write path.
    warming = loop_executor_warm(state)
    sweeping = asyncio.ensure_future(expire_enrolments(state))
    sealing = asyncio.ensure_future(seal_audit_chains(state))
    counting = asyncio.ensure_future(write_refusals(state))
    stop = asyncio.Event()
    delivering = deliver_webhooks(state, stop, grace_seconds) if settings.webhook_delivery else None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving", extra={"host": settings.host, "port": settings.port, "pid": os.getpid()})
    await stop.wait()

    # Drain: fail health checks so the balancer moves on, stop accepting, let requests in flight finish.
    state.draining = True
    server.stop()
    deadline = time.monotonic() + grace_seconds
    while state.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.inflight:
        log.warning("grace period over; closing %d requests still in flight", state.inflight)
    await server.close_all_connections()
    if delivering is not None:  # it stopped claiming at SIGTERM; its sends in flight had the same grace
        with contextlib.suppress(Exception):
            await asyncio.wait_for(delivering, timeout=max(1.0, deadline - time.monotonic()) + 1)
    warming.cancel()
    sweeping.cancel()
    sealing.cancel()
    counting.cancel()
    with contextlib.suppress(Exception):  # the refusals counted but not yet written: the database may be gone
        await state.refusals.flush(state.service.record, everything=True)
    state.service.close()
    log.info("stopped", extra={"pid": os.getpid()})
    return 0


def deliver_webhooks(state, stop: asyncio.Event, grace_seconds: float) -> asyncio.Future:
    """The webhook delivery worker (`webhooks.delivery`) on this process's event loop, its database work on the
    service's thread pool; it stops claiming when `stop` is set and lets its sends finish within the grace."""
    from ..webhooks.delivery import Deliverer

    deliverer = Deliverer(state.service.service, state.service.executor)

    async def run() -> None:
        try:
            await deliverer.run(stop, grace_seconds)
        except Exception:  # never take serving down; the queue waits for the next process or restart
            log.exception("webhook delivery worker failed")

    return asyncio.ensure_future(run())


def loop_executor_warm(state) -> asyncio.Future:
    async def warm() -> None:
        try:
            loaded = await state.service.warm_cache()
            log.info("device cache warmed", extra={"devices": loaded, "pid": os.getpid()})
        except Exception as exc:  # a cold cache is only slower; never fail start-up for it
            log.warning("device cache not warmed: %s", type(exc).__name__)

    return asyncio.ensure_future(warm())


async def expire_enrolments(state, every: float = EXPIRY_SWEEP_SECONDS) -> None:
    """Record the expiry of enrolments not confirmed in time, so the trail says when each ended even if
    nobody asks about the device again. Every process sweeps; the version guard records each expiry once."""
    while True:
        await asyncio.sleep(every)
        try:
            expired = await state.service.expire_pending()
            if expired:
                log.info("enrolments expired", extra={"devices": expired, "pid": os.getpid()})
        except Exception as exc:  # the next sweep (or the next request for the device) records it
            log.warning("expiry sweep failed: %s", type(exc).__name__)


async def seal_audit_chains(state, every: float = CHECKPOINT_POLL_SECONDS) -> None:
    """Sign the audit chains' heads every AUDIT_CHECKPOINT_SECONDS or AUDIT_CHECKPOINT_ROWS rows: every process
    asks often; one takes it (an advisory lock on PostgreSQL; SQLite's write lock)."""
    while True:
        await asyncio.sleep(every)
        try:
            taken = await state.service.checkpoint_if_due()
            if taken is not None:  # its hash in the log: a copy outside the database to check it against
                checkpoint, digest = taken
                log.info(
                    "audit checkpoint signed", extra={"checkpoint": checkpoint, "sha256": digest, "pid": os.getpid()}
                )
        except Exception as exc:  # the next round tries again
            log.warning("audit checkpoint failed: %s", type(exc).__name__)


async def write_refusals(state, every: float = REFUSALS_FLUSH_SECONDS) -> None:
    """Write out the repeated refusals of the windows that have ended (`refusals.RefusalLog`)."""
    while True:
        await asyncio.sleep(every)
        try:
            await state.refusals.flush(state.service.record)
        except Exception as exc:  # the next round writes them
            log.warning("repeated refusals not written: %s", type(exc).__name__)


def _supervise(settings: Settings, processes: int, grace_seconds: float) -> int:
    children: dict[int, int] = {}  # pid -> slot
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child: fresh event loop, its own socket and database pool
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            try:
                code = asyncio.run(
                    _worker(settings, bind_sockets(settings.port, settings.host, reuse_port=True), grace_seconds)
                )
            except Exception:
                log.exception("worker failed")
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        children[pid] = slot

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(processes):
        spawn(slot)
    log.info("supervising", extra={"processes": processes, "pid": os.getpid()})
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        metrics.process_exited(pid)
        if stopping or slot is None:
            exit_code = exit_code or (code if code > 0 else 0)
            continue
        log.error("worker exited unexpectedly; restarting", extra={"pid": pid, "exit_code": code})
        time.sleep(RESTART_BACKOFF_SECONDS)
        spawn(slot)
    return exit_code
