"""The outbox: a webhook message per event of the catalogue, written in the transaction of its audit row, and a
delivery per endpoint of the tenant that takes the event — only then (no endpoint: nothing is written). A change
that rolls back takes its messages with it; one that commits has them queued, whatever happens to the process
after the commit.

Two paths write audit rows, and both come here for the same rule (`catalogue.event_type`): the hot path's one
statement (`store.APPLY`, whose `hooked` and `fanned` steps are `APPLY_STEPS`) and every other row (`enqueue`,
from `journal.append`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ..audit.rows import AUDIT_COLUMNS
from ..db.models import WebhookDelivery, WebhookEndpoint, WebhookMessage
from .catalogue import event_type

PENDING = "pending"
_AT, _DEVICE, _USER, _REQUEST, _DATA, _ACTOR, _TENANT, _REASON = (
    AUDIT_COLUMNS.index(c)
    for c in ("timestamp", "device_id", "user_id", "request_id", "additional_data", "actor", "tenant_id", "reason")
)
# An endpoint takes an event when it is enabled and its filter is empty or names the type (`catalogue.normal_types`)
TAKES = (
    "w.tenant_id = {tenant} AND w.disabled_at IS NULL"
    " AND (w.event_types IS NULL OR position(',' || {type} || ',' IN w.event_types) > 0)"
)

# For `store.APPLY`: `evs` holds the batch's audit rows with `hook`, their event type (or NULL), and `timed` their times
APPLY_STEPS = f"""
), hooked AS (  -- the webhook messages of these rows (`webhooks.outbox`), where an endpoint of the tenant takes them
    INSERT INTO webhook_messages (tenant_id, event_type, occurred_at, device_id, user_id, subject, actor, request_id,
        reason, data)
    SELECT e.tenant_id, e.hook, x.at, e.device_id, e.user_id, e.subject, e.actor, e.request_id, e.reason,
        e.additional_data
    FROM evs e JOIN timed x ON x.k = e.k
    WHERE e.hook IS NOT NULL AND EXISTS (
        SELECT FROM webhook_endpoints w WHERE {TAKES.format(tenant="e.tenant_id", type="e.hook")}
    ) ORDER BY e.k
    RETURNING id, tenant_id, event_type, occurred_at
), fanned AS (  -- one delivery per endpoint that takes it, due at once
    INSERT INTO webhook_deliveries (message_id, endpoint_id, status, attempts, next_attempt_at, created_at)
    SELECT h.id, w.id, '{PENDING}', 0, h.occurred_at, h.occurred_at
    FROM hooked h JOIN webhook_endpoints w ON {TAKES.format(tenant="h.tenant_id", type="h.event_type")}
"""


def enqueue(rows: Sequence[Sequence], subjects: Sequence[str | None]) -> int:
    """Queue the messages of audit rows (AUDIT_COLUMNS order, as written, with their subjects), in the caller's
    transaction. Returns how many deliveries were queued."""
    hooks = [(row, subject, kind) for row, subject in zip(rows, subjects, strict=True) if (kind := event_type(row))]
    if not hooks:
        return 0
    tenants = {row[_TENANT] for row, _, _ in hooks}
    endpoints = list(
        WebhookEndpoint.select(WebhookEndpoint.id, WebhookEndpoint.tenant_id, WebhookEndpoint.event_types)
        .where(WebhookEndpoint.tenant_id.in_(tenants) & WebhookEndpoint.disabled_at.is_null())
        .tuples()
    )
    queued = 0
    for row, subject, kind in hooks:
        takers = [e for e, tenant, types in endpoints if tenant == row[_TENANT] and takes(types, kind)]
        if not takers:
            continue
        message = WebhookMessage.insert(
            tenant_id=row[_TENANT],
            event_type=kind,
            occurred_at=row[_AT],
            device_id=row[_DEVICE],
            user_id=row[_USER],
            subject=subject,
            actor=row[_ACTOR],
            request_id=row[_REQUEST],
            reason=row[_REASON],
            data=row[_DATA],
        ).execute()
        queued += deliver_to(message, takers, row[_AT])
    return queued


def deliver_to(message_id: int, endpoint_ids: Sequence[int], at: datetime) -> int:
    """Deliveries of a message to endpoints, due at `at` (a replay queues one more)."""
    rows = [
        {
            "message_id": message_id,
            "endpoint_id": e,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": at,
            "created_at": at,
        }
        for e in endpoint_ids
    ]
    WebhookDelivery.insert_many(rows).execute()
    return len(rows)


def takes(stored_types: str | None, kind: str) -> bool:
    """Whether an endpoint's filter (`catalogue.normal_types`) takes events of this type."""
    return stored_types is None or f",{kind}," in stored_types
