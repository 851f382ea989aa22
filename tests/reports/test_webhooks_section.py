"""The audit report's "Webhooks" section (issue 22): each endpoint of the tenant, its state at the period's end, and
what became of the deliveries of the period's events — counted from rows the service itself queued."""

from datetime import UTC, datetime

from otp_service.db.models import WebhookDelivery, WebhookEndpoint
from otp_service.reports import webhook_queries
from otp_service.webhooks.secrets import new_salt

START, END = datetime(2026, 2, 1), datetime(2026, 3, 1)


def ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def endpoint(url: str, types: str | None, created: str, disabled: str | None = None, reason: str | None = None):
    return WebhookEndpoint.create(
        tenant_id=1,
        url=url,
        event_types=types,
        salt=new_salt(),
        key_version=1,
        created_at=datetime.fromisoformat(created),
        disabled_at=None if disabled is None else datetime.fromisoformat(disabled),
        disabled_reason=reason,
    )


def test_each_endpoint_with_its_state_and_the_fate_of_the_periods_deliveries(service, database):
    with database.connection_context():
        siem = endpoint("https://siem.example.com/in?token=s3cr3t-of-theirs", None, "2026-01-10")
        gone = endpoint("https://user:pw@[2001:db8::1]:8443/h", ",device.locked,", "2026-01-10", "2026-02-20", "GONE")
        later = endpoint("https://late.example.com/", None, "2026-03-04")
    service.register("D1", "u@example.com", now=ts("2026-02-02"))  # device.registered: to siem (and to `later`)
    service.register("D2", "u@example.com", now=ts("2026-03-02"))  # after the period
    with database.connection_context():
        first, second = (
            WebhookDelivery.select().where(WebhookDelivery.endpoint_id == siem.id).order_by(WebhookDelivery.id)
        )
        first.status, first.attempts, first.delivered_at = "delivered", 3, datetime(2026, 2, 2, 0, 1)
        first.save()
        frame = webhook_queries.webhook_endpoints(START, END)
    rows = {r["endpoint"]: r for r in frame.to_dict("records")}
    assert list(frame.columns) == webhook_queries.WEBHOOK_COLUMNS
    assert rows[siem.id]["receiver"] == "https://siem.example.com/in"  # their token stays out of the report
    assert rows[siem.id]["events"] == "all" and rows[siem.id]["at the period's end"] == "active"
    assert rows[siem.id]["deliveries in the period"] == 1 and rows[siem.id]["delivered"] == 1
    assert rows[siem.id]["delivered after a retry"] == 1 and rows[siem.id]["last delivered"] == "2026-02-02T00:01:00Z"
    assert second.status == "pending"  # D2's, after the period: not counted
    assert rows[gone.id]["receiver"] == "https://[2001:db8::1]:8443/h"
    assert rows[gone.id]["events"] == "device.locked" and rows[gone.id]["deliveries in the period"] == 0
    assert rows[gone.id]["at the period's end"] == "disabled 2026-02-20T00:00:00Z, the receiver answered 410 Gone"
    assert rows[later.id]["at the period's end"] == "not yet created (created 2026-03-04T00:00:00Z)"
    assert rows[later.id]["last delivered"] == "never"
