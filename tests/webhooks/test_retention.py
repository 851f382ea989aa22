"""Retention (`queue.prune`, WEBHOOK_RETENTION_DAYS): deliveries that ended before the cut-off go, then the messages
no delivery refers to; a pending delivery — a retry in progress — keeps itself and its message, whatever its age."""

from __future__ import annotations

from datetime import datetime

from otp_service.db.models import WebhookDelivery, WebhookEndpoint, WebhookMessage
from otp_service.webhooks import queue
from tests.webhooks.test_outbox import endpoint

OLD, RECENT, CUT = datetime(2025, 1, 10), datetime(2025, 3, 1), datetime(2025, 2, 1)


def message(at: datetime) -> int:
    return WebhookMessage.insert(
        tenant_id=1, event_type="device.locked", occurred_at=at, user_id="u@example.com"
    ).execute()


def delivery(message_id: int, endpoint_id: int, status: str, at: datetime) -> int:
    return WebhookDelivery.insert(
        message_id=message_id, endpoint_id=endpoint_id, status=status, attempts=1, created_at=at
    ).execute()


def test_ended_deliveries_before_the_cut_go_with_their_messages_and_pending_ones_stay(database, monkeypatch):
    first, second = endpoint(database), endpoint(database)
    monkeypatch.setattr(queue, "PRUNE_BATCH", 2)  # several batches, as a long backlog would take
    with database.connection_context():
        gone = [message(OLD) for _ in range(3)]  # delivered / failed / cancelled long ago
        for m, status in zip(gone, ("delivered", "failed", "cancelled"), strict=True):
            delivery(m, first, status, OLD)
        retried = message(OLD)  # still pending: kept, with its message
        kept_pending = delivery(retried, first, "pending", OLD)
        shared = message(OLD)  # one endpoint's delivery ended, the other's is pending: the message stays
        delivery(shared, first, "delivered", OLD)
        kept_shared = delivery(shared, second, "pending", OLD)
        recent = message(RECENT)
        kept_recent = delivery(recent, first, "delivered", RECENT)
        assert queue.prune(database, CUT) == (4, 3)
        assert {d.id for d in WebhookDelivery.select()} == {kept_pending, kept_shared, kept_recent}
        assert {m.id for m in WebhookMessage.select()} == {retried, shared, recent}
        assert queue.prune(database, CUT) == (0, 0)  # nothing more to do


def test_an_id_is_never_given_twice(database):
    """The newcomer's review, on SQLite: a deleted endpoint's or pruned message's id came back for the next one, so
    a receiver deduplicating by webhook-id (`msg_<id>`) dropped a new event, and the trail showed two endpoints
    under one number. AUTOINCREMENT there, sequences on PostgreSQL."""
    first = endpoint(database)
    with database.connection_context():
        old = message(OLD)
        WebhookMessage.delete().execute()
        WebhookEndpoint.delete().execute()
        assert message(OLD) > old
    assert endpoint(database) > first
