"""The delivery queue's transactions, run on a thread pool by the worker (`delivery`): claim a batch, record an
attempt's result, disable an endpoint that is gone. Each is one short transaction.

A claim counts the attempt and moves `next_attempt_at` past a lease in one statement (FOR UPDATE SKIP LOCKED
on PostgreSQL, so concurrent workers take different rows; SQLite's write lock serialises claims): a worker that
dies mid-attempt leaves the delivery to be claimed again when the lease ends — at least once, and never the
same attempt twice. A result is written only while the delivery is still the attempt that was claimed (same
`attempts`, still pending), so a late answer cannot overwrite a newer attempt or a cancellation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from peewee import Database, fn

from .. import metrics
from ..audit.journal import Journal
from ..audit.rows import SYSTEM, audit_row
from ..core.actions import Action
from ..core.transitions import AuditEvent, to_datetime
from ..db.database import is_postgres
from ..db.models import WebhookDelivery, WebhookEndpoint, WebhookMessage
from .addresses import without_secrets
from .outbox import PENDING
from .schedule import Decision

log = logging.getLogger("otp_service.webhooks")

DELIVERED, FAILED, CANCELLED = "delivered", "failed", "cancelled"
GONE = "GONE"  # an endpoint's disabled_reason when its receiver answered 410
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


@dataclass(frozen=True)
class Job:
    """A claimed attempt, with all it needs to be sent (copied out of the transaction: nothing is read lazily
    on the event loop)."""

    delivery_id: int
    attempts: int
    endpoint_id: int
    tenant_id: int
    url: str
    keys: tuple[tuple[str, int, str | None], ...]  # (salt, version, SHA-256): the current key, the previous in grace
    message_id: int
    message: dict[str, Any]


@dataclass(frozen=True)
class Result:
    status: int | None  # the receiver's HTTP status; None: no answer
    error: str | None  # what went wrong, short, never a secret or the URL
    retry_after: str | None = None
    refused: bool = False


def claim(database: Database, limit: int, now: float, due_by: float, lease: float) -> list[Job]:
    """In one transaction: take up to `limit` due deliveries (counting the attempt and leasing them), cancel
    those whose endpoint is disabled or gone, and update the queue gauges."""
    at = to_datetime(now)
    with database.connection_context(), database.atomic():
        due = (
            WebhookDelivery.select(WebhookDelivery.id)
            .where((WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt_at <= to_datetime(due_by)))
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
        if is_postgres(database):
            due = due.for_update("FOR UPDATE SKIP LOCKED")
        claimed = list(
            WebhookDelivery.update(
                attempts=WebhookDelivery.attempts + 1,
                next_attempt_at=to_datetime(now + lease),
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
        metrics.webhook_status(*status(at))
        if not claimed:
            return []
        endpoints = {e.id: e for e in WebhookEndpoint.select().where(WebhookEndpoint.id.in_({c[2] for c in claimed}))}
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


def status(at: datetime) -> tuple[float, int]:
    """(seconds the oldest due delivery has waited — 0 when none waits —, endpoints disabled), for the metrics.
    Call inside a connection."""
    oldest = (
        WebhookDelivery.select(fn.MIN(WebhookDelivery.next_attempt_at))
        .where((WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt_at <= at))
        .scalar()
    )
    if isinstance(oldest, str):  # SQLite hands back an aggregate's text
        oldest = datetime.fromisoformat(oldest)
    waited = 0.0 if oldest is None else max(0.0, (at - oldest).total_seconds())
    return waited, WebhookEndpoint.select().where(WebhookEndpoint.disabled_at.is_null(False)).count()


def record(database: Database, journal: Journal, job: Job, decision: Decision, result: Result, now: float) -> None:
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
    with database.connection_context(), database.atomic():
        if not WebhookDelivery.update(**fields).where(mine).execute():
            return  # cancelled, or its lease ran out and another attempt has it
        if decision.kind == "gone":
            disable(journal, job, at)


def disable(journal: Journal, job: Job, at: datetime) -> None:
    """The receiver said 410 Gone: stop sending to it, cancel what is queued for it, and audit that."""
    disabled = (
        WebhookEndpoint.update(disabled_at=at, disabled_reason=GONE)
        .where((WebhookEndpoint.id == job.endpoint_id) & WebhookEndpoint.disabled_at.is_null())
        .execute()
    )
    cancelled = (
        WebhookDelivery.update(status=CANCELLED, next_attempt_at=None)
        .where((WebhookDelivery.endpoint_id == job.endpoint_id) & (WebhookDelivery.status == PENDING))
        .execute()
    )
    if disabled:
        data = {"endpoint": job.endpoint_id, "url": without_secrets(job.url), "status": 410, "cancelled": cancelled}
        event = AuditEvent(Action.WEBHOOK_ENDPOINT_DISABLED, True, GONE, data)
        ctx = replace(SYSTEM, tenant_id=job.tenant_id)
        journal.append([audit_row(event, at, None, None, ctx)])
        log.warning("webhook endpoint disabled: its receiver answered 410 Gone", extra={"endpoint": job.endpoint_id})


PRUNE_BATCH = 5000  # rows a statement deletes: each is a short transaction, however much has piled up


def prune(database: Database, before: datetime) -> tuple[int, int]:
    """Delete the deliveries that ended — delivered, failed or cancelled — and were queued before `before`
    (WEBHOOK_RETENTION_DAYS), then the messages no delivery refers to any more; (deliveries, messages) deleted.
    Pending deliveries are never touched: a retry in progress keeps its message. In batches, each its own
    transaction, so a worker that prunes a long backlog never holds locks for long."""
    ended = (WebhookDelivery.status != PENDING) & (WebhookDelivery.created_at < before)
    orphan = (WebhookMessage.occurred_at < before) & ~fn.EXISTS(
        WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.message_id == WebhookMessage.id)
    )
    counts = []
    for model, condition in ((WebhookDelivery, ended), (WebhookMessage, orphan)):
        total = 0
        while True:
            with database.connection_context(), database.atomic():
                batch = model.select(model.id).where(condition).limit(PRUNE_BATCH)
                deleted = model.delete().where(model.id.in_(batch)).execute()
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        counts.append(total)
    return counts[0], counts[1]


def _keys(endpoint: WebhookEndpoint, at: datetime) -> tuple[tuple[str, int, str | None], ...]:
    """The keys that sign: the current one, and during a rotation's grace period the previous one too."""
    keys = [(endpoint.salt, endpoint.key_version, endpoint.key_hash)]
    until = endpoint.previous_valid_until
    if endpoint.previous_salt and endpoint.previous_key_version is not None and until is not None and at < until:
        keys.append((endpoint.previous_salt, endpoint.previous_key_version, endpoint.previous_key_hash))
    return tuple(keys)
