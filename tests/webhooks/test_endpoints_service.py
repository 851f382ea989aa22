"""The webhook endpoints' service layer (`service.webhooks`), blocking on SQLite and on the event-loop service on
PostgreSQL: each change and its audit row in one transaction, the production rules for receiver URLs, the secret
derived (never stored), the cap held under concurrent creations, tenants kept apart."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.config import Settings
from otp_service.core import errors
from otp_service.core.actions import Action
from otp_service.core.transitions import to_datetime
from otp_service.db.models import AuditLog, WebhookEndpoint
from otp_service.reports import audit_queries
from otp_service.service import webhooks
from otp_service.webhooks import secrets
from tests.conftest import API_KEY, T0, service_for
from tests.helpers import at_once, audit_rows
from tests.serving import production_env

URL = "https://93.184.216.34/in?token=t0ken"
OPS = RequestContext(ip_address="192.0.2.1", actor="ops-console", by="grace (CHG-9)")


def endpoints(database) -> list[WebhookEndpoint]:
    with database.connection_context():
        return list(WebhookEndpoint.select().order_by(WebhookEndpoint.id))


def test_each_change_is_audited_with_the_endpoint_and_never_the_secret(service, database):
    made = service.create_webhook_endpoint(URL, ["device.locked"], "pager", OPS, now=T0)
    rotated = service.rotate_webhook_endpoint(made["id"], 60, OPS, now=T0 + 1)
    service.disable_webhook_endpoint(made["id"], OPS, now=T0 + 2)
    service.enable_webhook_endpoint(made["id"], OPS, now=T0 + 3)
    service.delete_webhook_endpoint(made["id"], OPS, now=T0 + 4)
    rows = audit_rows(database)
    assert [r.action for r in rows] == [
        Action.WEBHOOK_ENDPOINT_CREATED,
        Action.WEBHOOK_ENDPOINT_ROTATED,
        Action.WEBHOOK_ENDPOINT_DISABLED,
        Action.WEBHOOK_ENDPOINT_ENABLED,
        Action.WEBHOOK_ENDPOINT_DELETED,
    ]
    for row in rows:
        data = json.loads(row.additional_data)
        assert data["endpoint"] == made["id"] and data["url"] == "https://93.184.216.34/in"
        assert data["event_types"] == ["device.locked"] and data["by"] == "grace (CHG-9)"
        assert row.actor == "ops-console" and row.ip_address == "192.0.2.1"
        for secret in (made["secret"], rotated["secret"]):
            assert secret not in row.additional_data and secret.removeprefix("whsec_") not in row.additional_data
    assert endpoints(database) == []
    # the administrative report reads them in words
    with database.connection_context():
        frame = audit_queries.admin_actions(to_datetime(T0 - 10), to_datetime(T0 + 10))
    assert "webhook endpoint" in " ".join(frame["details"]) and "grace (CHG-9)" in set(frame["person"])


def test_a_change_whose_audit_row_fails_is_not_made(service, database, monkeypatch):
    def broken(rows):
        raise RuntimeError("the audit trail refused the row")

    monkeypatch.setattr(service.store, "record", broken)
    with pytest.raises(RuntimeError):
        service.create_webhook_endpoint(URL, None, None, OPS, now=T0)
    assert endpoints(database) == []


def test_the_secret_is_derived_from_the_master_secret_and_shown_only_when_made(service, database):
    made = service.create_webhook_endpoint(URL, None, None, OPS, now=T0)
    (row,) = endpoints(database)
    key = secrets.signing_key(service.keyring, row.salt, row.key_version)
    assert made["secret"] == secrets.shown(key) and row.key_hash == hashlib.sha256(key).hexdigest()
    rotated = service.rotate_webhook_endpoint(made["id"], 60, OPS, now=T0)
    (after,) = endpoints(database)
    assert after.previous_key_hash == row.key_hash and after.key_hash != row.key_hash
    assert rotated["secret"] == secrets.shown(secrets.signing_key(service.keyring, after.salt, after.key_version))
    assert "secret" not in service.webhook_endpoint(made["id"], OPS, now=T0)
    assert all("secret" not in e for e in service.list_webhook_endpoints(OPS, now=T0)["endpoints"])
    stored = json.dumps([list(vars(r)["__data__"].values()) for r in endpoints(database)], default=str)
    assert made["secret"] not in stored and made["secret"].removeprefix("whsec_") not in stored


def test_production_refuses_http_and_private_receivers(database, clock, backend, db_url):
    settings = Settings.from_env(production_env(db_url, API_KEY))
    for service in service_for(settings, database, clock, backend):
        with pytest.raises(errors.InvalidWebhookUrl, match="https in production"):
            service.create_webhook_endpoint("http://93.184.216.34/in", None, None, OPS)
        with pytest.raises(errors.InvalidWebhookUrl, match="not a public"):
            service.create_webhook_endpoint("https://10.0.0.1/in", None, None, OPS)
        assert service.create_webhook_endpoint(URL, None, None, OPS)["secret"].startswith("whsec_")


def test_tenants_are_kept_apart(service, database):
    mine = service.create_webhook_endpoint(URL, None, None, OPS, now=T0)
    other = replace(OPS, tenant_id=2)
    assert service.list_webhook_endpoints(other)["endpoints"] == []
    for call in (
        lambda: service.webhook_endpoint(mine["id"], other),
        lambda: service.rotate_webhook_endpoint(mine["id"], None, other),
        lambda: service.disable_webhook_endpoint(mine["id"], other),
        lambda: service.delete_webhook_endpoint(mine["id"], other),
        lambda: service.webhook_deliveries(mine["id"], ctx=other),
    ):
        with pytest.raises(errors.EndpointNotFound):
            call()
    assert len(endpoints(database)) == 1
    with database.connection_context():
        assert AuditLog.select().where(AuditLog.tenant_id == 2).count() == 0


@pytest.mark.postgres
def test_concurrent_creations_do_not_pass_the_cap(service, database):
    for n in range(webhooks.MAX_ENDPOINTS - 3):
        service.create_webhook_endpoint(f"{URL}&n={n}", None, None, OPS, now=T0)

    def attempt():
        try:
            return service.create_webhook_endpoint(URL, None, None, OPS, now=T0)["id"]
        except errors.TooManyEndpoints:
            return None

    made = at_once(8, attempt)
    assert sum(m is not None for m in made) == 3 and len(endpoints(database)) == webhooks.MAX_ENDPOINTS
