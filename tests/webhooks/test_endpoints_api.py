"""The webhook endpoints API (issue 22), over HTTP on SQLite and PostgreSQL: every route's answer and every
refusal, the secret shown once (the secrets scan checks that no other answer, log line or row holds it), the rows
and audit rows each change writes, another tenant's ids answered as none, and the scope it needs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from jsonschema import Draft202012Validator

from otp_service.core.actions import Action
from otp_service.core.keys import Keyring
from otp_service.core.transitions import to_datetime
from otp_service.db.models import AuditLog, WebhookDelivery, WebhookEndpoint, WebhookMessage
from otp_service.http.openapi import build_spec
from otp_service.http.routes import ROUTES
from otp_service.service.webhooks import MAX_ENDPOINTS
from otp_service.webhooks import catalogue, secrets
from tests.conftest import API_KEY, MASTER_SECRET, settings_for
from tests.helpers import audit_rows, make_client
from tests.openapi_check import to_json_schema
from tests.scenarios.test_tenants import client_of, make_tenant

URL = "https://93.184.216.34/hooks/in?token=receiver-token-123"  # a public literal: no DNS in the tests
ENDPOINTS = "/api/v1/webhooks/endpoints"
HOOK_ACTIONS = {a for a in Action if a.startswith("WEBHOOK_")}


def create(api, body=None, **kw):
    return api.post(ENDPOINTS, body if body is not None else {"url": URL}, **kw)


def data_of(row: AuditLog) -> dict:
    return json.loads(row.additional_data) if row.additional_data else {}


def hook_rows(database) -> list[AuditLog]:
    with database.connection_context():
        return list(AuditLog.select().where(AuditLog.action.in_(HOOK_ACTIONS)).order_by(AuditLog.id))


def deliveries(database, endpoint_id=None) -> list[WebhookDelivery]:
    with database.connection_context():
        query = WebhookDelivery.select().order_by(WebhookDelivery.id)
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        return list(query)


def register(api, device_id: str) -> None:
    assert api.post("/api/v1/devices/register", {"device_id": device_id, "user_id": "alice"}).status == 201


def test_create_shows_the_secret_once_and_audits_the_endpoint(api, database, clock):
    made = create(
        api,
        {"url": URL, "event_types": ["device.locked", "device.registered"], "description": "alerts"},
        headers={"X-Actor": "alice@example.com (INC-1)"},
    )
    assert made.status == 201, made.body
    data = made.body["data"]
    assert data["secret"].startswith("whsec_") and "never shown again" in made.body["message"]
    assert data["url"] == URL and data["event_types"] == ["device.locked", "device.registered"]
    assert data["enabled"] is True and data["description"] == "alerts" and data["previous_secret_valid_until"] is None
    with database.connection_context():
        row = WebhookEndpoint.get_by_id(data["id"])
    assert row.tenant_id == 1 and row.event_types == ",device.locked,device.registered,"
    # the table holds a salt and a version, from which only the master secret derives the secret shown
    keyring = Keyring({1: MASTER_SECRET}, 1)
    assert secrets.shown(secrets.signing_key(keyring, row.salt, row.key_version)) == data["secret"]
    # never again: not in the listing, not in the endpoint's own answer
    listed = api.get(ENDPOINTS)
    assert listed.status == 200 and [e["id"] for e in listed.body["data"]["endpoints"]] == [data["id"]]
    assert "secret" not in listed.body["data"]["endpoints"][0]
    one = api.get(f"{ENDPOINTS}/{data['id']}")
    assert one.status == 200 and "secret" not in one.body["data"]
    assert one.body["data"]["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0, "cancelled": 0}
    (audited,) = hook_rows(database)
    assert audited.action == Action.WEBHOOK_ENDPOINT_CREATED and audited.success and audited.actor == "env"
    assert data_of(audited) == {
        "endpoint": data["id"],
        "url": "https://93.184.216.34/hooks/in",  # no query string: it holds the receiver's token
        "event_types": ["device.locked", "device.registered"],
        "by": "alice@example.com (INC-1)",
    }
    assert "receiver-token-123" not in audited.additional_data
    assert data["secret"] not in json.dumps(data_of(audited))


def test_the_event_types_are_listed_with_their_meaning(api):
    listed = api.get("/api/v1/webhooks/event-types")
    assert listed.status == 200
    types = listed.body["data"]["event_types"]
    assert [t["type"] for t in types] == list(catalogue.EVENT_TYPES)
    assert all(t["description"] == catalogue.DESCRIPTIONS[t["type"]] for t in types)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/",
        "https://127.0.0.1/in",
        "https://10.1.2.3/in",
        "https://192.168.0.10/in",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/in",
        "https://0.0.0.0/in",
        "https://[::1]/in",
        "https://[::ffff:127.0.0.1]/in",
        "https://2130706433/in",
        "https://0177.0.0.1/in",
        "https://localhost/in",
        "https://user:secret@93.184.216.34/in",
        "https://93.184.216.34/" + "a" * 2048,
        "not a url",
        7,
        None,
    ],
)
def test_a_url_that_cannot_receive_webhooks_is_refused_and_nothing_is_written(api, database, url):
    refused = create(api, {"url": url})
    assert refused.status == 400 and refused.body["error"]["code"] == "INVALID_WEBHOOK_URL"
    assert refused.body["error"]["field"] == "url" and refused.body["message"].startswith("This URL cannot receive")
    assert hook_rows(database) == [] and api.get(ENDPOINTS).body["data"]["endpoints"] == []


@pytest.mark.parametrize(
    "body, code, field, says",
    [
        ({}, "INVALID_WEBHOOK_URL", "url", "url is required"),
        ({"url": URL, "event_types": ["device.locked", "device.exploded"]}, "INVALID_EVENT_TYPE", "event_types", ""),
        ({"url": URL, "event_types": []}, "INVALID_EVENT_TYPE", "event_types", "at least one"),
        ({"url": URL, "event_types": "device.locked"}, "INVALID_EVENT_TYPE", "event_types", "list"),
        ({"url": URL, "event_types": [7]}, "INVALID_EVENT_TYPE", "event_types", "list"),
        ({"url": URL, "description": "x" * 257}, "VALIDATION_ERROR", "description", "1-256"),
        ({"url": URL, "description": "a\nb"}, "VALIDATION_ERROR", "description", "printable"),
        ({"url": URL, "description": ""}, "VALIDATION_ERROR", "description", "1-256"),
        # a misspelt filter would make an endpoint taking every event: refused (the newcomer's review)
        ({"url": URL, "events": ["device.locked"]}, "VALIDATION_ERROR", "events", "Unknown field(s): events"),
    ],
)
def test_other_invalid_input_is_refused_naming_the_field(api, database, body, code, field, says):
    refused = create(api, body)
    assert refused.status == 400 and refused.body["error"]["code"] == code and refused.body["error"]["field"] == field
    assert says in refused.body["message"]
    if "exploded" in json.dumps(body):
        assert "device.exploded" in refused.body["message"] and "device.locked" not in refused.body["message"]
    assert hook_rows(database) == []


def test_private_receivers_only_with_webhook_allow_private(make_server, db_url):
    dev = make_server(settings_for(db_url, WEBHOOK_ALLOW_PRIVATE="true")).client
    made = create(dev, {"url": "http://127.0.0.1:9/in"})
    assert made.status == 201 and made.body["data"]["url"] == "http://127.0.0.1:9/in"


def test_a_tenant_has_at_most_so_many_endpoints(api, database):
    for n in range(MAX_ENDPOINTS):
        assert create(api, {"url": f"{URL}&n={n}"}).status == 201
    refused = create(api)
    assert refused.status == 409 and refused.body["error"]["code"] == "TOO_MANY_ENDPOINTS"
    assert len(hook_rows(database)) == MAX_ENDPOINTS
    assert create(api, headers={"X-Tenant": "acme"}).status == 404  # no such tenant (operator): nothing made
    make_tenant(database, "acme")
    assert create(api, headers={"X-Tenant": "acme"}).status == 201  # another tenant counts its own


def test_the_scope_is_webhooks_and_admin_holds_it(api, database):
    reader = make_client(database, "reader", "read,manage,reports")
    refused = create(api, auth=reader)
    assert refused.status == 403 and refused.body["error"]["code"] == "INSUFFICIENT_SCOPE"
    assert refused.body["error"]["scope"] == "webhooks"
    assert api.get(ENDPOINTS, auth=reader).status == 403
    assert api.get("/api/v1/webhooks/event-types", auth=reader).status == 403
    hooks = make_client(database, "hooks-admin", "webhooks")
    made = create(api, auth=hooks, headers={"X-Actor": "bob"})
    assert made.status == 201
    assert create(api, auth=make_client(database, "tenant-admin", "admin")).status == 201
    rows = hook_rows(database)
    assert [(r.actor, data_of(r).get("by")) for r in rows] == [("hooks-admin", "bob"), ("tenant-admin", None)]
    denied = audit_rows(database, action=Action.ACCESS_DENIED)
    assert len(denied) == 3 and {json.loads(r.additional_data)["scope"] for r in denied} == {"webhooks"}


def test_another_tenants_endpoint_is_answered_as_none(api, database):
    acme = client_of(database, make_tenant(database, "acme"), "acme-hooks", "webhooks")
    theirs = create(api, auth=acme).body["data"]["id"]
    with database.connection_context():
        message = WebhookMessage.insert(tenant_id=2, event_type="device.registered", occurred_at=to_datetime(0))
        delivery = WebhookDelivery.insert(
            message_id=message.execute(), endpoint_id=theirs, status="pending", created_at=to_datetime(0)
        ).execute()
    paths = [
        ("GET", f"{ENDPOINTS}/{{}}"),
        ("DELETE", f"{ENDPOINTS}/{{}}"),
        ("POST", f"{ENDPOINTS}/{{}}/rotate"),
        ("POST", f"{ENDPOINTS}/{{}}/disable"),
        ("POST", f"{ENDPOINTS}/{{}}/enable"),
        ("GET", f"{ENDPOINTS}/{{}}/deliveries"),
        ("POST", f"{ENDPOINTS}/{{}}/deliveries/" + str(delivery) + "/replay"),
    ]
    for method, template in paths:
        for endpoint_id in (theirs, 999_999, "abc"):  # another tenant's, none, not even an id
            refused = api.request(method, template.format(endpoint_id))  # API_KEY: the default tenant
            assert refused.status == 404, (method, template, endpoint_id)
            assert refused.body["error"]["code"] == "WEBHOOK_ENDPOINT_NOT_FOUND"
            if isinstance(endpoint_id, int):  # another tenant's id reads exactly as one no endpoint has
                assert refused.body["message"] == f"No webhook endpoint with id {endpoint_id}."
    assert api.get(ENDPOINTS).body["data"]["endpoints"] == []
    assert [r.action for r in hook_rows(database)] == [Action.WEBHOOK_ENDPOINT_CREATED]  # nothing changed
    assert api.get(f"{ENDPOINTS}/{theirs}", auth=acme).status == 200
    assert api.get(f"{ENDPOINTS}/{theirs}", headers={"X-Tenant": "acme"}).status == 200  # an operator, naming it


def test_rotation_keeps_the_previous_secret_signing_for_the_grace(api, database, clock):
    made = create(api).body["data"]
    with database.connection_context():
        before = WebhookEndpoint.get_by_id(made["id"])
    rotated = api.post(f"{ENDPOINTS}/{made['id']}/rotate", {"grace_seconds": 3600}, headers={"X-Actor": "carol"})
    assert rotated.status == 200, rotated.body
    data = rotated.body["data"]
    assert data["secret"].startswith("whsec_") and data["secret"] != made["secret"]
    until = to_datetime(clock.now) + timedelta(seconds=3600)
    assert data["previous_secret_valid_until"] == until.isoformat() + "Z"
    with database.connection_context():
        after = WebhookEndpoint.get_by_id(made["id"])
    assert (after.previous_salt, after.previous_key_version) == (before.salt, before.key_version)
    assert after.previous_valid_until == until and after.salt != before.salt
    keyring = Keyring({1: MASTER_SECRET}, 1)
    assert secrets.shown(secrets.signing_key(keyring, after.salt, after.key_version)) == data["secret"]
    assert secrets.shown(secrets.signing_key(keyring, after.previous_salt, 1)) == made["secret"]  # still signs
    assert (
        api.get(f"{ENDPOINTS}/{made['id']}").body["data"]["previous_secret_valid_until"]
        == data["previous_secret_valid_until"]
    )
    _, row = hook_rows(database)
    assert row.action == Action.WEBHOOK_ENDPOINT_ROTATED
    assert data_of(row)["previous_valid_until"] == data["previous_secret_valid_until"]
    assert data_of(row)["by"] == "carol"
    # no body: a day's grace
    default = api.request("POST", f"{ENDPOINTS}/{made['id']}/rotate")
    assert default.status == 200
    assert (
        default.body["data"]["previous_secret_valid_until"]
        == (to_datetime(clock.now) + timedelta(days=1)).isoformat() + "Z"
    )
    clock.advance(86_401)
    assert api.get(f"{ENDPOINTS}/{made['id']}").body["data"]["previous_secret_valid_until"] is None


@pytest.mark.parametrize("grace", [-1, 7 * 86_400 + 1, "3600", True, 1.5])
def test_a_grace_out_of_bounds_is_refused(api, database, grace):
    made = create(api).body["data"]
    refused = api.post(f"{ENDPOINTS}/{made['id']}/rotate", {"grace_seconds": grace})
    assert refused.status == 400 and refused.body["error"]["field"] == "grace_seconds"
    assert [r.action for r in hook_rows(database)] == [Action.WEBHOOK_ENDPOINT_CREATED]


def test_disable_cancels_pending_deliveries_and_enable_takes_events_again(api, database):
    endpoint = create(api).body["data"]["id"]
    register(api, "D1")
    assert [d.status for d in deliveries(database, endpoint)] == ["pending"]
    disabled = api.post(f"{ENDPOINTS}/{endpoint}/disable", headers={"X-Actor": "dave"})
    assert disabled.status == 200
    assert disabled.body["data"]["enabled"] is False and disabled.body["data"]["disabled_reason"] == "DISABLED"
    assert disabled.body["data"]["pending_cancelled"] == 1
    assert [d.status for d in deliveries(database, endpoint)] == ["cancelled"]
    register(api, "D2")  # a disabled endpoint takes no new events
    assert len(deliveries(database, endpoint)) == 1
    again = api.post(f"{ENDPOINTS}/{endpoint}/disable")
    assert again.status == 200 and again.body["data"]["pending_cancelled"] == 0
    enabled = api.post(f"{ENDPOINTS}/{endpoint}/enable")
    assert enabled.status == 200 and enabled.body["data"]["enabled"] is True
    assert enabled.body["data"]["disabled_at"] is None and enabled.body["data"]["disabled_reason"] is None
    assert api.post(f"{ENDPOINTS}/{endpoint}/enable").status == 200  # idempotent
    register(api, "D3")
    assert [d.status for d in deliveries(database, endpoint)] == ["cancelled", "pending"]
    rows = hook_rows(database)
    assert [(r.action, r.reason) for r in rows] == [
        (Action.WEBHOOK_ENDPOINT_CREATED, None),
        (Action.WEBHOOK_ENDPOINT_DISABLED, "DISABLED"),
        (Action.WEBHOOK_ENDPOINT_ENABLED, None),
    ]
    assert data_of(rows[1])["cancelled"] == 1 and data_of(rows[1])["by"] == "dave"
    assert data_of(rows[2])["was"] == "DISABLED"
    counts = api.get(f"{ENDPOINTS}/{endpoint}").body["data"]["deliveries"]
    assert counts == {"pending": 1, "delivered": 0, "failed": 0, "cancelled": 1}


def test_deliveries_newest_first_and_a_replay_queues_the_same_message(api, database):
    endpoint = create(api).body["data"]["id"]
    for n in range(3):
        register(api, f"D{n}")
    page = api.get(f"{ENDPOINTS}/{endpoint}/deliveries?limit=2")
    assert page.status == 200
    first = page.body["data"]["deliveries"]
    assert [d["id"] for d in first] == sorted((d["id"] for d in first), reverse=True) and len(first) == 2
    assert first[0]["event_type"] == "device.registered" and first[0]["status"] == "pending"
    assert first[0]["message_id"].startswith("msg_") and first[0]["attempts"] == 0
    assert set(first[0]) == {
        "id",
        "message_id",
        "event_type",
        "status",
        "attempts",
        "next_attempt_at",
        "last_attempt_at",
        "last_status",
        "last_error",
        "delivered_at",
        "created_at",
    }
    rest = api.get(f"{ENDPOINTS}/{endpoint}/deliveries?limit=2&before={page.body['data']['next_before']}")
    assert len(rest.body["data"]["deliveries"]) == 1 and rest.body["data"]["next_before"] is None
    assert api.get(f"{ENDPOINTS}/{endpoint}/deliveries?status=delivered").body["data"]["deliveries"] == []
    assert len(api.get(f"{ENDPOINTS}/{endpoint}/deliveries?status=pending").body["data"]["deliveries"]) == 3
    bad = api.get(f"{ENDPOINTS}/{endpoint}/deliveries?status=lost")
    assert bad.status == 400 and bad.body["error"]["field"] == "status"
    assert api.get(f"{ENDPOINTS}/{endpoint}/deliveries?limit=0").status == 400

    oldest = rest.body["data"]["deliveries"][0]
    replayed = api.post(f"{ENDPOINTS}/{endpoint}/deliveries/{oldest['id']}/replay", headers={"X-Actor": "erin"})
    assert replayed.status == 202, replayed.body
    data = replayed.body["data"]
    assert data["message_id"] == oldest["message_id"] and data["replay_of"] == oldest["id"]
    assert data["status"] == "pending" and data["delivery_id"] > first[0]["id"]
    with database.connection_context():
        new = WebhookDelivery.get_by_id(data["delivery_id"])
    assert catalogue.message_ref(new.message_id) == oldest["message_id"] and new.status == "pending"
    assert new.endpoint_id == endpoint and new.attempts == 0
    (row,) = audit_rows(database, action=Action.WEBHOOK_DELIVERY_REPLAYED)
    assert data_of(row) | {"by": "erin"} == data_of(row)
    assert data_of(row)["delivery"] == oldest["id"] and data_of(row)["replay"] == data["delivery_id"]
    assert data_of(row)["message"] == oldest["message_id"]
    # an unknown delivery, another endpoint's delivery, and a disabled endpoint
    other = create(api).body["data"]["id"]
    missing = api.post(f"{ENDPOINTS}/{other}/deliveries/{oldest['id']}/replay")
    assert missing.status == 404 and missing.body["error"]["code"] == "WEBHOOK_DELIVERY_NOT_FOUND"
    assert api.post(f"{ENDPOINTS}/{endpoint}/deliveries/999999/replay").status == 404
    api.post(f"{ENDPOINTS}/{endpoint}/disable")
    refused = api.post(f"{ENDPOINTS}/{endpoint}/deliveries/{oldest['id']}/replay")
    assert refused.status == 409 and refused.body["error"]["code"] == "WEBHOOK_ENDPOINT_DISABLED"
    assert len(audit_rows(database, action=Action.WEBHOOK_DELIVERY_REPLAYED)) == 1


def test_delete_removes_the_endpoint_its_deliveries_and_messages_no_one_else_has(api, database):
    everything = create(api).body["data"]["id"]
    registrations = create(api, {"url": URL, "event_types": ["device.registered"]}).body["data"]["id"]
    register(api, "D1")  # a message to both
    assert api.post("/api/v1/devices/D1/deactivate").status == 200  # a message to `everything` only
    deleted = api.request("DELETE", f"{ENDPOINTS}/{everything}", headers={"X-Actor": "frank"})
    assert deleted.status == 200
    assert deleted.body["data"] == {"id": everything, "deleted": True, "pending_cancelled": 2, "messages_deleted": 1}
    assert api.get(f"{ENDPOINTS}/{everything}").status == 404
    assert deliveries(database, everything) == []
    with database.connection_context():
        kept = [m.event_type for m in WebhookMessage.select()]
    assert kept == ["device.registered"] and len(deliveries(database, registrations)) == 1
    row = audit_rows(database, action=Action.WEBHOOK_ENDPOINT_DELETED)[0]
    assert data_of(row)["endpoint"] == everything and data_of(row)["cancelled"] == 2 and data_of(row)["by"] == "frank"
    assert api.request("DELETE", f"{ENDPOINTS}/{everything}").status == 404


def test_managing_webhooks_sends_no_webhook(api, database):
    endpoint = create(api).body["data"]["id"]  # takes every event
    api.post(f"{ENDPOINTS}/{endpoint}/rotate", {"grace_seconds": 0})
    api.post(f"{ENDPOINTS}/{endpoint}/disable")
    api.post(f"{ENDPOINTS}/{endpoint}/enable")
    create(api)
    api.request("DELETE", f"{ENDPOINTS}/{endpoint}")
    assert len(hook_rows(database)) == 6
    with database.connection_context():
        assert WebhookMessage.select().count() == 0
    assert not any(catalogue.event_type(("", a, True, None)) for a in HOOK_ACTIONS)


def test_the_description_documents_every_route_and_each_webhook(api):
    spec = build_spec(ROUTES)
    hooks = {path: ops for path, ops in spec["paths"].items() if path.startswith("/api/v1/webhooks")}
    assert len(hooks) == 8 and all(
        op["x-required-scope"] == "webhooks" for ops in hooks.values() for op in ops.values()
    )
    assert all(any(p["name"] == "X-Actor" for p in op["parameters"]) for ops in hooks.values() for op in ops.values())
    assert set(spec["x-webhooks"]) == set(catalogue.EVENT_TYPES)
    sent = spec["x-webhooks"]["device.locked"]["post"]
    assert {p["name"] for p in sent["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    # a body as the worker sends it conforms to the payload's schema
    body = json.loads(
        catalogue.body(7, "device.locked", to_datetime(0), 1, "D1", "alice", "sub", "env", "r1", "TOO_MANY", "{}")
    )
    schema = sent["requestBody"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**to_json_schema(schema), "components": to_json_schema(spec["components"])})
    assert list(validator.iter_errors(body)) == []
    assert list(validator.iter_errors({**body, "type": "device.unlocked"}))  # the event's own type only
    served = api.get("/openapi.json", auth=None).body
    assert "x-webhooks" in served and "/api/v1/webhooks/endpoints/{endpoint_id}/rotate" in served["paths"]
    assert API_KEY not in json.dumps(served)
