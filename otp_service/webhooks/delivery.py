"""The delivery worker: claims due deliveries, sends them signed (Standard Webhooks v1), records each outcome.

It runs on the event loop of every `serve` process (WEBHOOK_DELIVERY) and in `webhooks deliver`. Its database
work — one short transaction to claim a batch, one per result — runs on the service's thread pool, as the rest
of the service's blocking work does, so the loop that answers verifications never waits on it; the sends are
non-blocking (tornado's HTTP client), at most `concurrency` at once, each bounded by WEBHOOK_TIMEOUT_SECONDS, so
a slow or hostile receiver costs a slot, not the verifications' latency.

At least once, never the same attempt twice: claims are leased (`queue.claim`, the lease the timeout plus a
margin), and a result is recorded only for the attempt that was claimed (`queue.record`).

SSRF: every connection's address is checked after resolution (`resolver.GuardedResolver`), which
also holds against DNS rebinding; redirects are not followed. Secrets: the signing keys are derived when needed
and kept in this process only; neither they nor the URL (which may carry a token) is logged or stored.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .. import __version__, metrics
from ..core.keys import KeyUnavailable, key_fingerprint
from ..core.transitions import to_datetime
from ..db.database import UNAVAILABLE_ERRORS
from . import catalogue, queue, schedule
from .addresses import static_reason
from .queue import Job, Result
from .resolver import GuardedResolver, Refused
from .secrets import signing_key

log = logging.getLogger("otp_service.webhooks")

CONCURRENCY = 16  # sends in flight per process
LEASE_MARGIN_SECONDS = 30.0  # a claim holds a delivery for the timeout plus this
KEEP_BODY_BYTES = 64 * 1024  # of a receiver's answer; the rest is read and dropped
ERROR_CHARS = 256  # last_error's column
USER_AGENT = f"otp-service-webhooks/{__version__}"
PRUNE_EVERY_SECONDS = 3600.0  # each running worker deletes the history older than WEBHOOK_RETENTION_DAYS this often


class Deliverer:
    """Claims, sends and records deliveries; `run` until stopped (serve), or `once` (the CLI's --once)."""

    def __init__(
        self,
        service: Any,  # OtpService: database, keyring, journal, settings
        executor: Executor,
        clock: Callable[[], float] = time.time,
        concurrency: int = CONCURRENCY,
        rng: random.Random | None = None,
    ):
        self.service, self.executor, self.clock, self.concurrency = service, executor, clock, concurrency
        settings = service.settings
        self.database = service.database
        self.timeout = float(settings.webhook_timeout_seconds)
        self.lease = self.timeout + LEASE_MARGIN_SECONDS
        self.retries = tuple(settings.webhook_retry_schedule)
        self.poll = max(float(settings.webhook_poll_seconds), 0.05)
        self.retention_days = settings.webhook_retention_days
        self.production = settings.production
        self.rng = rng or random.Random()
        self.client = SimpleAsyncHTTPClient(
            force_instance=True,
            max_clients=concurrency,
            resolver=GuardedResolver(allow_private=settings.webhook_allow_private),
        )
        self._signers: dict[tuple[str, int], Webhook] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- the loops ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, grace: float = 10.0) -> None:
        """Deliver until `stop` is set; then let sends in flight finish for up to `grace` seconds (those cut off
        are claimed again after their lease)."""
        stopping = asyncio.ensure_future(stop.wait())
        pruned_at = time.monotonic() - PRUNE_EVERY_SECONDS * self.rng.random()  # processes prune at other times
        try:
            while not stop.is_set():
                if time.monotonic() - pruned_at >= PRUNE_EVERY_SECONDS:
                    pruned_at = time.monotonic()
                    await self.prune()
                free = self.concurrency - len(self._tasks)
                full = free > 0 and await self._claim_and_start(free, None) == free
                if full or free <= 0:  # every slot busy: go on as soon as one is free
                    waiting = {stopping, *self._tasks}
                    await asyncio.wait(waiting, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.wait({stopping}, timeout=self.poll)
        finally:
            stopping.cancel()
            await self._finish(grace)

    async def once(self, grace: float | None = None) -> int:
        """Deliver what is due now (retries that fall due meanwhile wait for the next run); returns how many
        attempts were made."""
        due_by = self.clock()
        made = 0
        while True:
            free = self.concurrency - len(self._tasks)
            started = await self._claim_and_start(free, due_by) if free > 0 else 0
            made += started
            if not self._tasks:
                if started == 0:
                    break
                continue
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        await self._finish(grace if grace is not None else self.lease)
        return made

    async def prune(self) -> tuple[int, int]:
        """Deliveries that ended more than WEBHOOK_RETENTION_DAYS ago, and their messages, deleted (`queue.prune`)."""
        before = to_datetime(self.clock() - self.retention_days * 86_400)
        try:
            deleted = await self._thread(queue.prune, self.database, before)
        except UNAVAILABLE_ERRORS as exc:  # the next round tries again
            log.warning("webhook deliveries not pruned: %s", type(exc).__name__)
            return 0, 0
        if any(deleted):
            log.info("webhook history pruned", extra={"deliveries": deleted[0], "messages": deleted[1]})
        return deleted

    async def _claim_and_start(self, limit: int, due_by: float | None) -> int:
        now = self.clock()
        try:
            jobs = await self._thread(queue.claim, self.database, limit, now, due_by or now, self.lease)
        except UNAVAILABLE_ERRORS as exc:  # the next poll tries again
            log.warning("webhook deliveries not claimed: %s", type(exc).__name__)
            self.database.close_idle()
            return 0
        for job in jobs:
            task = asyncio.ensure_future(self.attempt(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(jobs)

    async def _finish(self, grace: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in list(self._tasks):
            task.cancel()
        self.client.close()

    async def _thread(self, function: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # -- one attempt ------------------------------------------------------------------------------------------

    async def attempt(self, job: Job) -> None:
        """Send one claimed delivery and record what came of it."""
        started = time.monotonic()
        result = await self.send(job)
        metrics.WEBHOOK_DELIVERY_SECONDS.observe(time.monotonic() - started)
        now = self.clock()
        try:
            decision = schedule.outcome(
                result.status, result.error, job.attempts, self.retries, result.retry_after, now, self.rng
            )
        except Exception:  # the rule is pure and total; should it fail on some answer, retry as scheduled
            log.exception("webhook delivery %s: no decision on its answer", job.delivery_id)
            decision = schedule.outcome(result.status, result.error, job.attempts, self.retries, None, now, self.rng)
        metrics.WEBHOOK_DELIVERIES.labels("refused" if result.refused else decision.kind).inc()
        try:
            await self._thread(queue.record, self.database, self.service.journal, job, decision, result, now)
        except UNAVAILABLE_ERRORS as exc:  # the delivery is claimed again after its lease
            log.warning("webhook delivery %s outcome not recorded: %s", job.delivery_id, type(exc).__name__)
            self.database.close_idle()
        except Exception:  # never lose the worker to one delivery; it is claimed again after its lease
            log.exception("webhook delivery %s outcome not recorded", job.delivery_id)
        if decision.kind != "delivered":
            log.info(
                "webhook delivery not delivered",
                extra={
                    "delivery": job.delivery_id,
                    "endpoint": job.endpoint_id,
                    "attempt": job.attempts,
                    "outcome": decision.kind,
                    "status": result.status,
                    "error": result.error,  # never the URL or a key (`_short`, `send`)
                },
            )

    async def send(self, job: Job) -> Result:
        """POST the message to the endpoint, signed; the receiver's status, or what kept it from answering."""
        reason = static_reason(job.url, self.production)
        if reason:
            return Result(None, f"refused: {reason}", refused=True)
        kept: list[bytes] = []
        size = 0

        def keep(chunk: bytes) -> None:
            nonlocal size
            if size < KEEP_BODY_BYTES:
                kept.append(chunk[: KEEP_BODY_BYTES - size])
            size += len(chunk)

        try:
            body = catalogue.body(job.message_id, **job.message)
            headers = self.headers(job, body, int(self.clock()))
            request = HTTPRequest(
                job.url,
                method="POST",
                body=body,
                headers=headers,
                connect_timeout=self.timeout,
                request_timeout=self.timeout,
                follow_redirects=False,
                decompress_response=False,  # a compressed answer is not inflated: only its first bytes are kept
                streaming_callback=keep,
                user_agent=USER_AGENT,
            )
            response = await self.client.fetch(request, raise_error=False)
        except Refused as exc:
            return Result(None, f"refused: {exc}", refused=True)
        except KeyUnavailable:
            return Result(None, "the endpoint's signing key is unavailable (its master secret version is gone)")
        except KeyMismatch:
            log.error(
                "webhook endpoint %s: the signing key this process derives is not the endpoint's; its MASTER_SECRET"
                " or MASTER_SECRETS_PREVIOUS differ from those the endpoint was made under: nothing sent",
                job.endpoint_id,
            )
            return Result(None, "not sent: this worker's master secret is not the one the endpoint's key derives from")
        except HTTPClientError as exc:  # 599: a timeout, or the connection closed
            return Result(None, _short(f"no answer: {exc.message or exc}"))
        except (OSError, StreamClosedError) as exc:
            return Result(None, _short(f"no answer: {type(exc).__name__}: {exc}"))
        except Exception as exc:  # e.g. a malformed answer (HTTPInputError): its text might quote the URL
            return Result(None, f"no answer: {type(exc).__name__}")
        status = response.code
        if 200 <= status < 300:
            return Result(status, None)
        text = b"".join(kept).decode("utf-8", "replace")
        note = "redirect not followed" if 300 <= status < 400 else "answer"
        return Result(status, _short(f"HTTP {status} ({note}): {text}"), response.headers.get("Retry-After"))

    def headers(self, job: Job, body: bytes, timestamp: int) -> dict[str, str]:
        """Standard Webhooks' headers: the stable id, the time, and a `v1,` signature per key in use."""
        ref = catalogue.message_ref(job.message_id)
        at = datetime.fromtimestamp(timestamp, UTC)
        signatures = " ".join(self._signer(*key).sign(ref, at, body) for key in job.keys)
        return {
            "webhook-id": ref,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
            "content-type": "application/json",
        }

    def _signer(self, salt: str, version: int, expected: str | None) -> Webhook:
        """The signer of one key, derived once; refused (`KeyMismatch`) when it is not the key the endpoint was
        made with — this process's master secret differs — rather than sign what no receiver can verify."""
        signer = self._signers.get((salt, version))
        if signer is None:
            if len(self._signers) > 4096:
                self._signers.clear()
            key = signing_key(self.service.keyring, salt, version)
            if expected is not None and not hmac.compare_digest(key_fingerprint(key), expected):
                raise KeyMismatch
            signer = Webhook(key)
            self._signers[(salt, version)] = signer
        return signer


class KeyMismatch(Exception):
    """A derived signing key whose SHA-256 is not the endpoint's `key_hash`."""


def _short(text: str) -> str:
    """What a receiver sent, fit for `last_error`: printable characters only — a NUL, which PostgreSQL refuses in
    text, would otherwise keep the outcome from ever being recorded — on one line, at most ERROR_CHARS."""
    printable = "".join(c if c.isprintable() else " " for c in text[: ERROR_CHARS * 4])
    return " ".join(printable.split())[:ERROR_CHARS]
