"""The demo's webhook endpoints and what became of their deliveries — what the audit report's "Webhooks" section
lists for the demo history (`demo.demo_database`).

The endpoints exist before the history begins, so its events are queued for them as the service queues any
(`webhooks.outbox`); no receiver runs, so `settle` then gives each delivery the fate a worker would have
recorded, by a fixed rule: most arrive at once, some after a retry, a few are given up on after the retry schedule
(the receiver down), a few are still being retried at the end;
the chat endpoint answered 410 Gone some days before the end, and its later deliveries were cancelled.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from peewee import Database

from ..core.transitions import DEFAULT_TENANT
from ..db.models import WebhookDelivery, WebhookEndpoint
from ..webhooks.secrets import new_salt

# (url, event types or None for all, description, created, disabled — 410 Gone —: days before the history's end)
DEMO_ENDPOINT_ROWS = (
    ("https://siem.example.com/hooks/otp", None, "SIEM: every event", 60, None),
    (
        "https://chat.example.com/services/T0/B0?token=demo-not-a-token",
        ",device.hard_locked,device.locked,recovery_code.used,",
        "security channel",
        60,
        6,
    ),
)


def demo_endpoints(database: Database, end: datetime) -> list[int]:
    """The endpoints of `DEMO_ENDPOINT_ROWS`, enabled: the history's events will be queued for them; their ids."""
    with database.connection_context():
        return [
            WebhookEndpoint.insert(
                tenant_id=DEFAULT_TENANT,
                url=url,
                event_types=types,
                description=description,
                salt=new_salt(),
                key_version=1,
                created_at=(end - timedelta(days=created)).replace(tzinfo=None),
            ).execute()
            for url, types, description, created, _ in DEMO_ENDPOINT_ROWS
        ]


def settle(database: Database, end: datetime, endpoint_ids: list[int]) -> None:
    """Each queued delivery's outcome, as a worker would have recorded it (see the module's docstring)."""
    end = end.replace(tzinfo=None)
    with database.atomic():
        endpoints = [WebhookEndpoint.get_by_id(e) for e in endpoint_ids]
        for endpoint, (_, _, _, _, gone) in zip(endpoints, DEMO_ENDPOINT_ROWS, strict=True):
            gone_at = None if gone is None else end - timedelta(days=gone)
            if gone_at is not None:
                endpoint.disabled_at, endpoint.disabled_reason = gone_at, "GONE"
                endpoint.save()
            deliveries = WebhookDelivery.select().where(WebhookDelivery.endpoint_id == endpoint.id)
            for delivery in deliveries.order_by(WebhookDelivery.id):
                _settle_one(delivery, gone_at, end)


def _settle_one(delivery: WebhookDelivery, gone_at: datetime | None, end: datetime) -> None:
    queued = (
        delivery.created_at
        if isinstance(delivery.created_at, datetime)
        else datetime.fromisoformat(str(delivery.created_at))
    )
    if gone_at is not None and queued >= gone_at:
        delivery.status, delivery.last_error = "cancelled", "endpoint disabled: the receiver answered 410 Gone"
    elif end - queued < timedelta(days=3) and delivery.id % 3 == 0:
        delivery.status, delivery.attempts, delivery.last_status = "pending", 2, 503  # retried still
        delivery.last_attempt_at, delivery.next_attempt_at = queued, end + timedelta(minutes=5)
    elif delivery.id % 29 == 0 and end - queued > timedelta(days=4):  # the receiver was down for days
        delivery.status, delivery.attempts, delivery.last_status = "failed", 13, 500
        delivery.last_attempt_at = queued + timedelta(days=3, hours=4)
        delivery.last_error = "HTTP 500 Internal Server Error"
    else:
        retried = delivery.id % 23 == 0
        delivery.attempts, delivery.last_status = (2 if retried else 1), 200
        delivery.status = "delivered"
        delivery.last_attempt_at = delivery.delivered_at = queued + timedelta(seconds=35 if retried else 1)
    delivery.save()
