"""API clients and scopes: least privilege for callers, and who did what in the audit trail."""

import time

import pytest

from otp_service.db.models import ApiClient
from otp_service.service import clients
from tests.conftest import ISSUED_KEYS, settings_for
from tests.helpers import audit_rows, code_at, journal_for, make_client, wrong_code

SCOPES = ("verify", "enroll", "manage", "read", "reports", "metrics", "webhooks", "admin")


def routes(reg_code):
    """(method, path, body, scope) for every API route, with input each handler accepts."""
    return [
        ("POST", "/api/v1/devices/register", lambda n: {"device_id": f"NEW-{n}", "user_id": "u"}, "enroll"),
        ("POST", "/api/v1/otp/verify", lambda n: {"device_id": "D1", "otp": reg_code}, "verify"),
        ("POST", "/api/v1/devices/GONE/deactivate", None, "manage"),
        ("POST", "/api/v1/devices/D1/unlock", None, "manage"),
        ("GET", "/api/v1/devices/D1", None, "read"),
        ("GET", "/api/v1/users/alice/devices", None, "read"),
        ("GET", "/api/v1/users/alice/audit", None, "read"),
        ("GET", "/api/v1/stats", None, "read"),
        ("GET", "/api/v1/reports", None, "reports"),
        ("GET", "/api/v1/reports/1", None, "reports"),
        ("GET", "/api/v1/reports/1/data", None, "reports"),
        ("GET", "/api/v1/reports/1/pdf", None, "reports"),
        ("GET", "/metrics", None, "metrics"),
        ("GET", "/api/v1/webhooks/event-types", None, "webhooks"),
        ("GET", "/api/v1/webhooks/endpoints", None, "webhooks"),
        ("POST", "/api/v1/webhooks/endpoints/1/disable", None, "webhooks"),
    ]


def test_every_route_with_a_key_of_every_scope(api, database, clock):
    reg = api.post("/api/v1/devices/register", {"device_id": "D1", "user_id": "alice"}).body["data"]
    api.post("/api/v1/devices/register", {"device_id": "GONE", "user_id": "bob"})
    keys = {scope: make_client(database, f"client-{scope}", scope) for scope in SCOPES}
    for n, (method, path, body, needed) in enumerate(routes(wrong_code(reg, clock.now))):
        for scope, key in keys.items():
            resp = api.request(method, path, body(f"{n}-{scope}") if body else None, auth=key)
            if scope in (needed, "admin"):
                assert resp.status not in (401, 403), (path, scope, resp.status)
            else:
                assert resp.status == 403, (path, scope, resp.status)
                assert resp.body["error"]["code"] == "INSUFFICIENT_SCOPE" and resp.body["error"]["scope"] == needed
    denied = audit_rows(database, action="ACCESS_DENIED")
    # each route refused to the clients without its scope (nor admin)
    assert len(denied) == len(routes("")) * (len(SCOPES) - 2)
    assert {r.actor for r in denied} == {f"client-{s}" for s in SCOPES if s != "admin"}
    assert all(r.reason == "INSUFFICIENT_SCOPE" for r in denied)


def test_every_audit_row_names_its_actor(api, database, clock):
    verifier = make_client(database, "login-frontend", "verify")
    enroller = make_client(database, "signup", "enroll")
    ops = make_client(database, "ops-console", "manage,read")
    reg = api.post("/api/v1/devices/register", {"device_id": "A1", "user_id": "alice"}, auth=enroller).body["data"]
    api.post("/api/v1/otp/verify", {"device_id": "A1", "otp": code_at(reg, clock.now)}, auth=verifier)
    api.post("/api/v1/otp/verify", {"device_id": "A1", "otp": wrong_code(reg, clock.now)}, auth=verifier)
    api.post("/api/v1/devices/A1/unlock", auth=ops)
    api.post("/api/v1/devices/A1/deactivate", auth=ops)
    api.post("/api/v1/devices/A1/deactivate", auth=verifier)  # refused: named too
    api.post("/api/v1/devices/register", {"device_id": "B1", "user_id": "bob"})  # the API_KEY client
    rows = [(r.action, r.success, r.actor) for r in audit_rows(database) if not r.action.startswith("CLIENT_")]
    assert rows == [
        ("DEVICE_REGISTERED", True, "signup"),
        ("OTP_VERIFICATION", True, "login-frontend"),
        ("OTP_VERIFICATION", False, "login-frontend"),
        ("DEVICE_UNLOCKED", True, "ops-console"),
        ("DEVICE_DEACTIVATED", True, "ops-console"),
        ("ACCESS_DENIED", False, "login-frontend"),
        ("DEVICE_REGISTERED", True, "env"),
    ]
    text = api.get("/metrics").raw.decode()
    for name in ("login-frontend", "signup", "ops-console", "env"):
        assert f'otp_client_requests_total{{client="{name}"}}' in text
    entries = api.get("/api/v1/users/alice/audit", auth=ops).body["data"]["entries"]
    assert [e["actor"] for e in entries] == ["ops-console", "ops-console", "login-frontend", "login-frontend", "signup"]


def test_a_verify_key_cannot_reset_the_failure_budget(api, database, clock):
    """The attack of the issue: unlock after every few guesses. A login front end's key can verify, not unlock."""
    reg = api.post("/api/v1/devices/register", {"device_id": "V1", "user_id": "u"}).body["data"]
    front_end = make_client(database, "front-end", "verify")
    statuses = [
        api.post("/api/v1/otp/verify", {"device_id": "V1", "otp": wrong_code(reg, clock.now)}, auth=front_end).status
        for _ in range(5)
    ]
    assert statuses == [200] * 5
    assert api.post("/api/v1/devices/V1/unlock", auth=front_end).status == 403
    locked = api.post("/api/v1/otp/verify", {"device_id": "V1", "otp": code_at(reg, clock.now)}, auth=front_end)
    assert locked.status == 429 and locked.body["error"]["code"] == "DEVICE_LOCKED"
    assert len(audit_rows(database, reason="INVALID_CODE")) == 5


def test_rotation_grace_revocation_and_expiry(make_server, db_url, database, monkeypatch):
    monkeypatch.setattr(clients, "REMEMBER_SECONDS", 0.0)  # every request asks the database
    api = make_server(settings_for(db_url)).client
    old = make_client(database, "billing", "read")
    assert api.get("/api/v1/stats", auth=old).status == 200
    with database.connection_context(), database.atomic():
        new = clients.rotate(
            journal_for(database), "billing", time.time(), grace=__import__("datetime").timedelta(hours=1)
        )
    ISSUED_KEYS.add(new)
    assert api.get("/api/v1/stats", auth=new).status == 200 and api.get("/api/v1/stats", auth=old).status == 200
    with database.connection_context():  # the grace period is over
        ApiClient.update(previous_valid_until=__import__("datetime").datetime(2000, 1, 1)).execute()
    assert api.get("/api/v1/stats", auth=old).status == 401 and api.get("/api/v1/stats", auth=new).status == 200
    with database.connection_context(), database.atomic():
        clients.revoke(journal_for(database), "billing", time.time())
    assert api.get("/api/v1/stats", auth=new).status == 401
    expired = make_client(database, "temp", "read", expires=__import__("datetime").datetime(2000, 1, 1))
    assert api.get("/api/v1/stats", auth=expired).status == 401
    actions = [(r.action, r.success) for r in audit_rows(database) if r.action.startswith("CLIENT_")]
    assert actions == [
        ("CLIENT_CREATED", True),
        ("CLIENT_ROTATED", True),
        ("CLIENT_REVOKED", True),
        ("CLIENT_CREATED", True),
    ]
    with database.connection_context():
        # only digests are kept (compared here, not in SQL: the query's parameters reach peewee's debug log)
        assert new not in {digest for (digest,) in ApiClient.select(ApiClient.key_digest).tuples()}


@pytest.mark.parametrize("name", ["env", "env-1", "env-12", "metrics-token", "command-line", "otp-service"])
def test_the_names_the_service_gives_are_not_for_clients(name):
    """A client named `env` would share the API_KEY admin's name in the audit trail and its rate budget."""
    with pytest.raises(ValueError, match="a name the service gives"):
        clients.check_name(name)
    assert clients.check_name("env-reader") == "env-reader"


@pytest.mark.parametrize("scopes", ["", "verify,fly", " , "])
def test_scopes_are_checked(scopes):
    with pytest.raises(ValueError, match="scopes must be some of"):
        clients.parse_scopes(scopes)


def test_limits_per_client_keep_one_noisy_integration_from_starving_the_others(make_server, db_url, database):
    settings = settings_for(db_url, RATE_LIMIT_PER_CLIENT="read=3/minute verify=100/minute")
    api = make_server(settings).client
    noisy, quiet = make_client(database, "noisy-dashboard", "read"), make_client(database, "quiet-dashboard", "read")
    assert [api.get("/api/v1/stats", auth=noisy).status for _ in range(5)] == [200, 200, 200, 429, 429]
    assert api.get("/api/v1/stats", auth=quiet).status == 200  # its own budget, from the same address
    limited = [r for r in audit_rows(database, action="RATE_LIMITED")]
    assert [(r.reason, r.actor) for r in limited] == [("CLIENT:READ", "noisy-dashboard")]  # once per window


def test_per_client_rates_are_checked():
    from otp_service.config import ConfigError, Settings

    for bad in ("read", "write=3/minute", "admin=3/minute", "read=lots"):
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"RATE_LIMIT_PER_CLIENT": bad})
        assert exc.value.variable == "RATE_LIMIT_PER_CLIENT"


def test_the_audit_report_says_who_did_what_to_which_client_and_route(api, database):
    from datetime import datetime, timedelta

    from otp_service.reports import audit_queries

    reader = make_client(database, "dashboard", "read")
    api.post("/api/v1/devices/X1/unlock", auth=reader)  # refused: no manage scope
    with database.connection_context():
        admin = audit_queries.admin_actions(datetime(2000, 1, 1), datetime.now() + timedelta(days=1))
    rows = admin[["client", "action", "result", "details"]].values.tolist()
    assert rows == [
        ["command-line", "CLIENT_CREATED", "done", "client dashboard; scopes read"],
        # the route's template, never the ids in its path
        ["dashboard", "ACCESS_DENIED", "refused", "/api/v1/devices/{device_id}/unlock (needs manage)"],
    ]
