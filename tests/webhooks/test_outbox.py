"""The outbox (`webhooks.outbox`): a message per catalogue event, in the transaction of its audit row, only
for endpoints that take it; nothing for a change that rolled back; an erasure reaches queued messages."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from otp_service.audit.rows import SYSTEM, audit_row
from otp_service.core.actions import Action
from otp_service.core.transitions import AuditEvent
from otp_service.db.models import AuditLog, WebhookDelivery, WebhookEndpoint, WebhookMessage
from otp_service.webhooks import catalogue, secrets
from tests.conftest import T0
from tests.helpers import code_at, wrong_code


def endpoint(database, types=None, tenant_id=1, url="https://hooks.example.com/in") -> int:
    with database.connection_context():
        return WebhookEndpoint.insert(
            tenant_id=tenant_id,
            url=url,
            event_types=catalogue.normal_types(types),
            salt=secrets.new_salt(),
            key_version=1,
            created_at=datetime(2025, 1, 1),
        ).execute()


def queued(database) -> list[tuple]:
    with database.connection_context():
        query = (
            WebhookMessage.select(
                WebhookMessage.event_type,
                WebhookMessage.device_id,
                WebhookMessage.user_id,
                WebhookDelivery.endpoint_id,
                WebhookDelivery.status,
            )
            .join(WebhookDelivery, on=WebhookDelivery.message_id == WebhookMessage.id)
            .order_by(WebhookMessage.id, WebhookDelivery.endpoint_id)
        )
        return list(query.tuples())


def test_no_endpoint_writes_nothing(service, database):
    service.register("dev-1", "alice", now=T0)
    service.deactivate("dev-1", now=T0 + 1)
    with database.connection_context():
        assert WebhookMessage.select().count() == 0 and WebhookDelivery.select().count() == 0


def test_events_of_the_catalogue_are_queued_with_their_audit_rows(service, database, clock):
    everything, locks = endpoint(database), endpoint(database, ["device.locked", "device.hard_locked"])
    registered = service.register("dev-1", "alice", now=T0)
    assert service.verify("dev-1", code_at(registered, T0 + 30), now=T0 + 30)["valid"]
    for n in range(service.settings.otp_max_failures):
        service.verify("dev-1", wrong_code(registered, T0 + 60 + n), now=T0 + 60 + n)
    service.unlock("dev-1", now=T0 + 100)
    rows = queued(database)
    assert [(kind, e) for kind, _, _, e, _ in rows] == [
        ("device.registered", everything),
        ("device.locked", everything),
        ("device.locked", locks),
        ("device.unlocked", everything),
    ]
    assert all(status == "pending" for *_, status in rows)
    assert all(user == "alice" and device == "dev-1" for _, device, user, _, _ in rows)
    with database.connection_context():  # a verification is no event: the hot path wrote no message for it
        assert AuditLog.select().where(AuditLog.action == Action.OTP_VERIFICATION).count() == 1 + 5


def test_a_change_that_rolls_back_queues_nothing(service, database):
    endpoint(database)
    row = audit_row(
        AuditEvent(Action.CLIENT_CREATED, True, None, {"client": "x"}), datetime(2025, 1, 2), None, None, SYSTEM
    )
    with pytest.raises(RuntimeError), database.connection_context(), database.atomic():
        service.store.record([row])
        assert len(queued(database)) == 1  # queued in the transaction…
        raise RuntimeError("the change fails after its audit row")
    assert queued(database) == []  # …and gone with it


def test_an_erasure_reaches_queued_messages(service, database):
    endpoint(database)
    service.register("dev-1", "alice", now=T0)
    service.erase_user("alice")
    with database.connection_context():
        messages = list(WebhookMessage.select().order_by(WebhookMessage.id).dicts())
    assert [m["event_type"] for m in messages] == ["device.registered", "user.erased"]
    assert all(m["user_id"] is None for m in messages)
    assert "alice" not in json.dumps(messages, default=str)
    bodies = [
        json.loads(catalogue.body(**{("message_id" if k == "id" else k): v for k, v in m.items()})) for m in messages
    ]
    assert all(b["data"]["user_id"] is None for b in bodies)
    assert bodies[0]["data"]["subject"] and bodies[0]["data"]["subject"] == bodies[1]["data"]["subject"]  # a pseudonym


def test_event_type_of_rows():
    def row(action, success=True, reason=None):
        return audit_row(AuditEvent(action, success, reason), datetime(2025, 1, 1), None, None, SYSTEM)

    assert catalogue.event_type(row(Action.DEVICE_LOCKED, reason="TOO_MANY_FAILURES")) == "device.locked"
    assert catalogue.event_type(row(Action.DEVICE_LOCKED, reason="HARD_LOCK")) == "device.hard_locked"
    assert catalogue.event_type(row(Action.OTP_VERIFICATION)) is None
    assert catalogue.event_type(row(Action.DEVICE_REGISTERED, False, "DEVICE_EXISTS")) is None
    assert catalogue.event_type(row(Action.AUDIT_VERIFIED, False, "BROKEN")) == "audit.verification_failed"
    with pytest.raises(ValueError, match="unknown event type"):
        catalogue.normal_types(["device.locked", "device.exploded"])
    assert catalogue.normal_types(["device.locked", "device.hard_locked"]) == ",device.hard_locked,device.locked,"
