"""The delivery worker: claims due deliveries, sends them signed (Standard Webhooks v1), records each outcome.

It runs on the event loop of every `serve` process (WEBHOOK_DELIVERY) and in `webhooks deliver`. Its database
work — one short transaction to claim a batch, one per result — runs on the service's thread pool, as the rest
of the service's blocking work does, so the loop that answers verifications never waits on it; the sends are
non-blocking (tornado's HTTP client), at most `concurrency` at once, each bounded by WEBHOOK_TIMEOUT_SECONDS, so
a slow or hostile receiver costs a slot, not the verifications' latency.

At least once, never the same attempt twice: a claim moves a delivery's `next_attempt_at` past a lease (the
timeout plus a margin) and counts the attempt, in one statement (SKIP LOCKED on PostgreSQL; SQLite's write lock
serialises claims). A process that dies mid-attempt leaves the delivery to be claimed again after the lease. A
result is written only if the delivery is still the attempt that was claimed (same `attempts`, still pending),
so a late answer cannot overwrite a newer attempt or a cancellation.

SSRF: every connection's address is checked after resolution (`GuardedResolver`, `addresses.is_public`), which
also holds against DNS rebinding; redirects are not followed. Secrets: the signing keys are derived when needed
and kept in this process only; neither they nor the URL (which may carry a token) is logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from peewee import fn
from standardwebhooks import Webhook
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from .. import __version__, metrics
from ..audit.rows import SYSTEM, audit_row
from ..core.actions import Action
from ..core.keys import KeyUnavailable
from ..core.transitions import AuditEvent, to_datetime
from ..db.database import UNAVAILABLE_ERRORS, is_postgres
from ..db.models import WebhookDelivery, WebhookEndpoint, WebhookMessage
from . import catalogue, schedule
from .addresses import is_public, static_reason
from .outbox import PENDING
from .secrets import signing_key

log = logging.getLogger("otp_service.webhooks")

DELIVERED, FAILED, CANCELLED = "delivered", "failed", "cancelled"
GONE = "GONE"  # an endpoint's disabled_reason when its receiver answered 410
CONCURRENCY = 16  # sends in flight per process
LEASE_MARGIN_SECONDS = 30.0  # a claim holds a delivery for the timeout plus this
KEEP_BODY_BYTES = 64 * 1024  # of a receiver's answer; the rest is read and dropped
ERROR_CHARS = 256  # last_error's column
USER_AGENT = f"otp-service-webhooks/{__version__}"
_MESSAGE_FIELDS = (
    "event_type",
    "occurred_at",
    "tenant_id",
    "device_id",
    "user_id",
    "subject",
    "actor",
    "request_id",
    "reason",
    "data",
)


class Refused(Exception):
    """The receiver's address is not public (and WEBHOOK_ALLOW_PRIVATE is off): nothing was sent."""


class GuardedResolver(Resolver):
    """The default resolver, refusing any host with an address `is_public` rejects: checked on the addresses the
    client then connects to, so a name that changes what it resolves to (DNS rebinding) gains nothing."""

    def initialize(self, allow_private: bool = False, resolver: Resolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = resolver or DefaultLoopResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list:
        found = await self.inner.resolve(host, port, family)
        if not self.allow_private:
            private = sorted({addr[0] for _, addr in found if not is_public(addr[0])})
            if private or not found:
                raise Refused(f"the receiver's address {private[0] if private else '(none)'} is not public")
        return found

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Job:
    """A claimed attempt, with all it needs to be sent (copied out of the transaction: nothing is read lazily
    on the event loop)."""

    delivery_id: int
    attempts: int
    endpoint_id: int
    tenant_id: int
    url: str
    keys: tuple[tuple[str, int], ...]  # (salt, key version): the current key, and the previous one in its grace
    message_id: int
    message: dict[str, Any]


@dataclass(frozen=True)
class Result:
    status: int | None  # the receiver's HTTP status; None: no answer
    error: str | None  # what went wrong, short, never a secret or the URL
    retry_after: str | None = None
    refused: bool = False


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
        try:
            while not stop.is_set():
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

    async def _claim_and_start(self, limit: int, due_by: float | None) -> int:
        now = self.clock()
        try:
            jobs = await self._thread(self.claim, limit, now, now if due_by is None else due_by)
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
        decision = schedule.outcome(
            result.status, result.error, job.attempts, self.retries, result.retry_after, now, self.rng
        )
        metrics.WEBHOOK_DELIVERIES.labels("refused" if result.refused else decision.kind).inc()
        try:
            await self._thread(self.record, job, decision, result, now)
        except UNAVAILABLE_ERRORS as exc:  # the delivery is claimed again after its lease
            log.warning("webhook delivery %s outcome not recorded: %s", job.delivery_id, type(exc).__name__)
            self.database.close_idle()
        if decision.kind != "delivered":
            log.info(
                "webhook delivery not delivered",
                extra={
                    "delivery": job.delivery_id,
                    "endpoint": job.endpoint_id,
                    "attempt": job.attempts,
                    "outcome": decision.kind,
                    "status": result.status,
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
        except HTTPClientError as exc:  # 599: a timeout, or the connection closed
            return Result(None, _short(f"no answer: {exc.message or exc}"))
        except (OSError, StreamClosedError, ValueError) as exc:
            return Result(None, _short(f"no answer: {type(exc).__name__}: {exc}"))
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
        signatures = " ".join(self._signer(salt, version).sign(ref, at, body) for salt, version in job.keys)
        return {
            "webhook-id": ref,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures,
            "content-type": "application/json",
        }

    def _signer(self, salt: str, version: int) -> Webhook:
        signer = self._signers.get((salt, version))
        if signer is None:
            if len(self._signers) > 4096:
                self._signers.clear()
            signer = Webhook(signing_key(self.service.keyring, salt, version))
            self._signers[(salt, version)] = signer
        return signer

    # -- the database (on the thread pool) ----------------------------------------------------------------------

    def claim(self, limit: int, now: float, due_by: float) -> list[Job]:
        """In one transaction: take up to `limit` due deliveries (counting the attempt and leasing them), cancel
        those whose endpoint is disabled or gone, and update the queue gauges."""
        at = to_datetime(now)
        with self.database.connection_context(), self.database.atomic():
            due = (
                WebhookDelivery.select(WebhookDelivery.id)
                .where((WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt_at <= to_datetime(due_by)))
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
            if is_postgres(self.database):
                due = due.for_update("FOR UPDATE SKIP LOCKED")
            claimed = list(
                WebhookDelivery.update(
                    attempts=WebhookDelivery.attempts + 1,
                    next_attempt_at=to_datetime(now + self.lease),
                    last_attempt_at=at,
                )
                .where(WebhookDelivery.id.in_(due))
                .returning(
                    WebhookDelivery.id,
                    WebhookDelivery.attempts,
                    WebhookDelivery.endpoint_id,
                    WebhookDelivery.message_id,
                )
                .tuples()
                .execute()
            )
            self._gauges(at)
            if not claimed:
                return []
            endpoints = {
                e.id: e for e in WebhookEndpoint.select().where(WebhookEndpoint.id.in_({c[2] for c in claimed}))
            }
            fields = [getattr(WebhookMessage, f) for f in ("id", *_MESSAGE_FIELDS)]
            messages = {
                row[0]: dict(zip(_MESSAGE_FIELDS, row[1:], strict=True))
                for row in WebhookMessage.select(*fields).where(WebhookMessage.id.in_({c[3] for c in claimed})).tuples()
            }
            jobs, dropped = [], []
            for delivery_id, attempts, endpoint_id, message_id in claimed:
                endpoint, message = endpoints.get(endpoint_id), messages.get(message_id)
                if endpoint is None or endpoint.disabled_at is not None or message is None:
                    dropped.append(delivery_id)
                    continue
                jobs.append(
                    Job(
                        delivery_id,
                        attempts,
                        endpoint_id,
                        endpoint.tenant_id,
                        endpoint.url,
                        _keys(endpoint, at),
                        message_id,
                        message,
                    )
                )
            if dropped:
                WebhookDelivery.update(status=CANCELLED, next_attempt_at=None).where(
                    WebhookDelivery.id.in_(dropped)
                ).execute()
            return jobs

    def _gauges(self, at: datetime) -> None:
        oldest = (
            WebhookDelivery.select(fn.MIN(WebhookDelivery.next_attempt_at))
            .where((WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt_at <= at))
            .scalar()
        )
        if isinstance(oldest, str):  # SQLite hands back an aggregate's text
            oldest = datetime.fromisoformat(oldest)
        metrics.WEBHOOK_QUEUE_OLDEST.set(0 if oldest is None else max(0.0, (at - oldest).total_seconds()))
        metrics.WEBHOOK_ENDPOINTS_DISABLED.set(
            WebhookEndpoint.select().where(WebhookEndpoint.disabled_at.is_null(False)).count()
        )

    def record(self, job: Job, decision: schedule.Decision, result: Result, now: float) -> None:
        """One transaction per result; a 410 also disables the endpoint, cancels its queue and audits that."""
        at = to_datetime(now)
        fields: dict[str, Any] = {"last_status": result.status, "last_error": result.error}
        if decision.kind == "delivered":
            fields.update(status=DELIVERED, delivered_at=at, next_attempt_at=None)
        elif decision.kind == "retry":
            fields.update(next_attempt_at=to_datetime(decision.at))
        else:  # failed, gone
            fields.update(status=FAILED, next_attempt_at=None)
        mine = (
            (WebhookDelivery.id == job.delivery_id)
            & (WebhookDelivery.attempts == job.attempts)
            & (WebhookDelivery.status == PENDING)
        )
        with self.database.connection_context(), self.database.atomic():
            if not WebhookDelivery.update(**fields).where(mine).execute():
                return  # cancelled, or its lease ran out and another attempt has it
            if decision.kind == "gone":
                self.disable(job, at)

    def disable(self, job: Job, at: datetime) -> None:
        """The receiver said 410 Gone: stop sending to it, cancel what is queued for it, and audit that."""
        disabled = (
            WebhookEndpoint.update(disabled_at=at, disabled_reason=GONE)
            .where((WebhookEndpoint.id == job.endpoint_id) & WebhookEndpoint.disabled_at.is_null())
            .execute()
        )
        WebhookDelivery.update(status=CANCELLED, next_attempt_at=None).where(
            (WebhookDelivery.endpoint_id == job.endpoint_id) & (WebhookDelivery.status == PENDING)
        ).execute()
        if disabled:
            event = AuditEvent(
                Action.WEBHOOK_ENDPOINT_DISABLED, True, GONE, {"endpoint_id": job.endpoint_id, "status": 410}
            )
            ctx = replace(SYSTEM, tenant_id=job.tenant_id)
            self.service.journal.append([audit_row(event, at, None, None, ctx)])
            log.warning(
                "webhook endpoint disabled: its receiver answered 410 Gone", extra={"endpoint": job.endpoint_id}
            )


def _keys(endpoint: WebhookEndpoint, at: datetime) -> tuple[tuple[str, int], ...]:
    """The keys that sign: the current one, and during a rotation's grace period the previous one too."""
    keys = [(endpoint.salt, endpoint.key_version)]
    until = endpoint.previous_valid_until
    if endpoint.previous_salt and endpoint.previous_key_version is not None and until is not None and at < until:
        keys.append((endpoint.previous_salt, endpoint.previous_key_version))
    return tuple(keys)


def _short(text: str) -> str:
    return " ".join(text.split())[:ERROR_CHARS]
