"""The audit report's "webhooks" section: who is told what happens in the tenant, and whether they heard it.

A compliance reader asks of every receiver: where does it point, which events does it take, was it on at the
period's end, and were the period's events delivered to it — or are they still being retried, given up on, or
cancelled (the endpoint disabled or deleted)? The changes themselves (created, rotated, disabled by the service
after a 410, deleted, a delivery replayed) are audit rows, in the report's "who did what" table.

A receiver's URL is shown without its query string or user info: those may hold a token of the receiver's.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from peewee import Case, fn

from ..db.models import WebhookDelivery, WebhookEndpoint, WebhookMessage
from ..webhooks.addresses import without_secrets
from . import sql
from .audit_queries import _as_time, _time

STATUSES = ("delivered", "pending", "failed", "cancelled")
WEBHOOK_COLUMNS = [
    "endpoint",
    "receiver",
    "events",
    "at the period's end",
    "deliveries in the period",
    *STATUSES,
    "delivered after a retry",
    "last delivered",
]
DISABLED_WORDS = {"GONE": "the receiver answered 410 Gone", "DISABLED": "by the API"}


def webhook_endpoints(start: datetime, end: datetime) -> pd.DataFrame:
    """Every webhook endpoint of the tenant now (deleted ones are gone; their rows say when), its state at the
    period's end, and the deliveries of the events of [start, end) to it by status — `pending` as they stand
    now: still being retried. A replay adds a delivery, so a message may count twice."""
    counted = [fn.SUM(Case(None, [(WebhookDelivery.status == status, 1)], 0)) for status in STATUSES]
    retried = fn.SUM(Case(None, [((WebhookDelivery.status == "delivered") & (WebhookDelivery.attempts > 1), 1)], 0))
    figures = {
        endpoint: (total, *by_status, after_retry, last)
        for endpoint, total, *by_status, after_retry, last in WebhookDelivery.select(
            WebhookDelivery.endpoint_id,
            fn.COUNT(WebhookDelivery.id),
            *counted,
            retried,
            fn.MAX(WebhookDelivery.delivered_at),
        )
        .join(WebhookMessage, on=WebhookMessage.id == WebhookDelivery.message_id)
        .where(
            (WebhookMessage.occurred_at >= start)
            & (WebhookMessage.occurred_at < end)
            & (WebhookMessage.tenant_id == sql.TENANT.get())
        )
        .group_by(WebhookDelivery.endpoint_id)
        .tuples()
    }
    rows = []
    for endpoint in WebhookEndpoint.select().where(sql.of_tenant(WebhookEndpoint)).order_by(WebhookEndpoint.id):
        total, *by_status, after_retry, last = figures.get(endpoint.id, (0, 0, 0, 0, 0, 0, None))
        types = (endpoint.event_types or "").strip(",").split(",")
        rows.append(
            {
                "endpoint": endpoint.id,
                "receiver": without_secrets(endpoint.url),
                "events": ", ".join(types) if endpoint.event_types else "all",
                "at the period's end": _state(endpoint, end),
                "deliveries in the period": int(total or 0),
                **{status: int(n or 0) for status, n in zip(STATUSES, by_status, strict=True)},
                "delivered after a retry": int(after_retry or 0),
                "last delivered": _time(last) if last is not None else "never",
            }
        )
    return pd.DataFrame(rows, columns=WEBHOOK_COLUMNS)


def _state(endpoint: WebhookEndpoint, end: datetime) -> str:
    created, disabled = _as_time(endpoint.created_at), _as_time(endpoint.disabled_at)
    if created >= end:
        return f"not yet created (created {_time(created)})"
    if disabled is not None and disabled < end:
        return f"disabled {_time(disabled)}, {DISABLED_WORDS.get(endpoint.disabled_reason, endpoint.disabled_reason)}"
    later = f"; disabled {_time(disabled)}, after the period" if disabled is not None else ""
    return f"active{later}"
