"""Tenants isolate one application's users and devices from another's (issue 25, "any client can act on every
application's users"): a client acts in its own tenant only; another tenant's device, user or report is
answered exactly as one that does not exist (no existence oracle); the recovery-code takeover of the attack
review is closed; an operator names the tenant it acts in; each tenant's policy and rate limits are its own.
On SQLite and PostgreSQL, and across two server processes."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from otp_service.db.models import AuditLog, Device, RecoveryCodes
from otp_service.service import clients, tenants
from tests.conftest import API_KEY, ISSUED_KEYS, PG_URL, settings_for
from tests.helpers import code_at, journal_for, wrong_code
from tests.serving import http, production_env, two_servers


def make_tenant(database, name, **policy):
    with database.connection_context(), database.atomic():
        journal = journal_for(database)
        tenant_id = tenants.create(journal, name, time.time())
        if policy:
            settings = settings_for(f"sqlite:///{name}.db")
            rates = policy.pop("rate_limits", None)
            tenants.configure(
                journal, settings, name, {k.upper(): str(v) for k, v in policy.items()}, rates, time.time()
            )
    return tenant_id


def client_of(database, tenant_id, name, scopes="admin"):
    with database.connection_context(), database.atomic():
        key = clients.create(journal_for(database), name, clients.parse_scopes(scopes), time.time(), None, tenant_id)
    ISSUED_KEYS.add(key)
    return key


@pytest.fixture
def two_tenants(database):
    """acme and globex, each with an admin client: (acme key, globex key)."""
    acme, globex = make_tenant(database, "acme"), make_tenant(database, "globex")
    return client_of(database, acme, "acme-app"), client_of(database, globex, "globex-app")


def requests_naming(device_id, user_id, report_id, code):
    """(method, path, body) for every route that names a device, a user or a report."""
    lookup = {"otp": code, "from": "2025-11-24T00:00:00Z", "to": "2025-11-25T00:00:00Z"}
    return [
        ("GET", f"/api/v1/devices/{device_id}", None),
        ("POST", "/api/v1/otp/verify", {"device_id": device_id, "otp": code}),
        ("POST", f"/api/v1/devices/{device_id}/confirm", {"otp": code}),
        ("POST", f"/api/v1/devices/{device_id}/resync", {"otp1": code, "otp2": code}),
        ("POST", f"/api/v1/devices/{device_id}/drift/reset", None),
        ("POST", f"/api/v1/devices/{device_id}/code-lookup", lookup),
        ("POST", f"/api/v1/devices/{device_id}/unlock", None),
        ("POST", f"/api/v1/devices/{device_id}/deactivate", None),
        ("GET", f"/api/v1/users/{user_id}/devices", None),
        ("GET", f"/api/v1/users/{user_id}/audit", None),
        ("POST", f"/api/v1/users/{user_id}/recovery-codes/verify", {"code": "ABCD-EFGH-JKLM"}),
        ("GET", f"/api/v1/reports/{report_id}", None),
        ("GET", f"/api/v1/reports/{report_id}/data", None),
        ("GET", f"/api/v1/reports/{report_id}/pdf", None),
    ]


def comparable(status, body):
    """An answer without what differs between any two requests (the request id; the id named in a message)."""
    error = {k: v for k, v in body.get("error", {}).items() if k != "request_id"}
    data = {k: v for k, v in body.get("data", {}).items() if k not in ("device_id", "user_id")}
    return status, error.get("code"), data


def stored_report(database, tenant_id):
    from datetime import datetime

    from otp_service.db.models import Report

    with database.connection_context():
        return Report.insert(
            kind="audit",
            period_start=datetime(2025, 11, 1),
            period_end=datetime(2025, 11, 2),
            created_at=datetime(2025, 11, 2),
            html="<p>acme's report</p>",
            data_zip=b"PK",
            pdf=b"%PDF",
            tenant_id=tenant_id,
        ).execute()


def test_another_tenants_device_user_and_report_are_answered_as_ones_that_do_not_exist(
    api, database, clock, two_tenants
):
    acme, globex = two_tenants
    reg = api.post("/api/v1/devices/register", {"device_id": "D1", "user_id": "alice"}, auth=acme).body["data"]
    assert api.post("/api/v1/users/alice/recovery-codes", auth=acme).status == 201
    report_id = stored_report(database, tenant_id=2)
    code = code_at(reg, clock.now)
    foreign = requests_naming("D1", "alice", report_id, code)
    absent = requests_naming("NO-SUCH-DEVICE", "nobody", report_id + 1000, code)
    for (method, path, body), (_, other_path, other_body) in zip(foreign, absent, strict=True):
        theirs = api.request(method, path, body, auth=globex)
        nothing = api.request(method, other_path, other_body, auth=globex)
        assert comparable(theirs.status, theirs.body) == comparable(nothing.status, nothing.body), path
        assert theirs.status in (200, 404), (path, theirs.status)
    # nothing of acme's changed: the device still verifies, its user's codes are all there
    assert api.post("/api/v1/otp/verify", {"device_id": "D1", "otp": code}, auth=acme).body["data"]["valid"]
    with database.connection_context():
        assert Device.get_by_id((2, "D1")).is_active
        assert RecoveryCodes.get_by_id((2, "alice")).failed_attempts == 0
        # acme's trail holds acme's requests only: none of globex's ended up in it
        assert {r.actor for r in AuditLog.select().where(AuditLog.tenant_id == 2)} <= {"acme-app", "command-line"}
    # the same ids in globex are globex's own: registering D1 there is no conflict (no existence oracle)
    assert api.post("/api/v1/devices/register", {"device_id": "D1", "user_id": "alice"}, auth=globex).status == 201
    assert api.get("/api/v1/stats", auth=globex).body["data"]["devices"]["total"] == 1
    # and erasing "alice" in globex leaves acme's alice as she was
    assert api.post("/api/v1/users/alice/erase", auth=globex).body["data"]["devices"] == 1
    assert api.get("/api/v1/users/alice/devices", auth=acme).body["data"]["devices"][0]["device_id"] == "D1"


def test_the_recovery_code_takeover_of_the_attack_review_is_closed(api, database, clock, two_tenants):
    """A key with only `enroll` of another application issued codes for someone's user that the owner's check
    accepted (replacing the user's own set); it registered and confirmed a device under that user that the
    owner's verify accepted."""
    acme, _ = two_tenants
    globex_enroll = client_of(database, 3, "globex-signup", "enroll")
    globex_verify = client_of(database, 3, "globex-login", "verify")
    own = api.post("/api/v1/users/alice/recovery-codes", auth=acme).body["data"]["codes"]
    planted = api.post("/api/v1/users/alice/recovery-codes", auth=globex_enroll)
    assert planted.status == 201  # globex's own alice
    answer = api.post(
        "/api/v1/users/alice/recovery-codes/verify", {"code": planted.body["data"]["codes"][0]}, auth=acme
    )
    assert answer.body["data"]["valid"] is False and answer.body["data"]["reason"] == "INVALID_CODE"
    checked = api.post("/api/v1/users/alice/recovery-codes/verify", {"code": own[0]}, auth=acme).body["data"]
    assert checked["valid"] is True and checked["remaining"] == 9  # acme's set was never replaced
    body = {"device_id": "PLANTED", "user_id": "alice", "confirm": True}
    reg = api.post("/api/v1/devices/register", body, auth=globex_enroll).body["data"]
    assert (
        api.post("/api/v1/devices/PLANTED/confirm", {"otp": code_at(reg, clock.now)}, auth=globex_enroll).status == 200
    )
    refused = api.post("/api/v1/otp/verify", {"device_id": "PLANTED", "otp": code_at(reg, clock.now, 1)}, auth=acme)
    assert refused.status == 404 and refused.body["error"]["code"] == "DEVICE_NOT_FOUND"
    assert api.get("/api/v1/users/alice/devices", auth=acme).body["data"]["devices"] == []
    accepted = api.post(
        "/api/v1/otp/verify", {"device_id": "PLANTED", "otp": code_at(reg, clock.now, 1)}, auth=globex_verify
    )
    assert accepted.body["data"]["valid"] is True  # in its own tenant it is a device like any other


def test_an_operator_names_the_tenant_it_acts_in_and_no_one_else_can(api, database, two_tenants):
    acme, _ = two_tenants
    as_globex = {"X-Tenant": "globex"}
    body = {"device_id": "OPS-1", "user_id": "bob"}
    assert api.post("/api/v1/devices/register", body, headers=as_globex).status == 201  # API_KEY: an operator
    assert api.get("/api/v1/devices/OPS-1", headers=as_globex).status == 200
    assert api.get("/api/v1/devices/OPS-1").status == 404  # without the header: its own tenant, the default
    unknown = api.get("/api/v1/devices/OPS-1", headers={"X-Tenant": "initech"})
    assert unknown.status == 404 and unknown.body["error"]["code"] == "NOT_FOUND"
    # a tenant's admin naming another tenant is refused the same whether that tenant exists or not
    for name in ("globex", "initech"):
        refused = api.get("/api/v1/devices/OPS-1", auth=acme, headers={"X-Tenant": name})
        assert refused.status == 403 and refused.body["error"] == {
            "code": "INSUFFICIENT_SCOPE",
            "scope": "operator",
            "request_id": refused.body["error"]["request_id"],
        }
    assert api.get("/api/v1/devices/OPS-1", auth=acme, headers={"X-Tenant": "acme"}).status == 404  # its own: fine


def test_each_tenant_has_its_own_policy(api, database, clock):
    strict = make_tenant(database, "strict", otp_max_failures=2, otp_digits=8, otp_hard_lock_failures=20)
    key = client_of(database, strict, "strict-app")
    reg = api.post("/api/v1/devices/register", {"device_id": "S1", "user_id": "u"}, auth=key).body["data"]
    assert reg["digits"] == 8  # the tenant's default
    answers = [
        api.post("/api/v1/otp/verify", {"device_id": "S1", "otp": wrong_code(reg, clock.now)}, auth=key)
        for _ in range(3)
    ]
    assert [a.status for a in answers] == [200, 200, 429]  # locked by the second failure
    other = api.post("/api/v1/devices/register", {"device_id": "S1", "user_id": "u"}).body["data"]  # default tenant
    assert other["digits"] == 6
    default = [
        api.post("/api/v1/otp/verify", {"device_id": "S1", "otp": wrong_code(other, clock.now)}).status
        for _ in range(3)
    ]
    assert default == [200, 200, 200]  # the service's OTP_MAX_FAILURES=5 there


def test_a_tenants_clients_share_its_rate_limit(make_server, db_url, database):
    limited = make_tenant(database, "small", rate_limits="read=3/hour")
    first, second = client_of(database, limited, "small-a"), client_of(database, limited, "small-b")
    outsider = client_of(database, make_tenant(database, "big"), "big-a")
    api = make_server(settings_for(db_url)).client
    statuses = [api.get("/api/v1/stats", auth=key).status for key in (first, second, first, second)]
    assert statuses == [200, 200, 200, 429]
    assert api.get("/api/v1/stats", auth=outsider).status == 200


def test_another_tenant_cannot_spend_a_devices_unlocks(make_server, db_url, database, two_tenants):
    """The unlock limit is per tenant and device (the attack review: a foreign key's ten 404s left the owner
    unable to unlock its own device for an hour)."""
    acme, globex = two_tenants
    api = make_server(settings_for(db_url, RATE_LIMIT_UNLOCK="3/hour")).client
    assert api.post("/api/v1/devices/register", {"device_id": "A1", "user_id": "u"}, auth=acme).status == 201
    foreign = [api.post("/api/v1/devices/A1/unlock", auth=globex).status for _ in range(4)]
    assert foreign == [404, 404, 404, 429]
    assert api.post("/api/v1/devices/A1/unlock", auth=acme).status == 200


@pytest.fixture
def two_processes(tmp_path, database):
    """Two service processes on the same PostgreSQL database (the tenants and clients are read from it)."""
    yield from two_servers(tmp_path, production_env(PG_URL, API_KEY, DB_POOL_SIZE="8"))


@pytest.mark.postgres
@pytest.mark.slow
def test_every_route_of_another_tenant_answers_as_nothing_across_two_processes(two_processes, database):
    acme, globex = make_tenant(database, "acme"), make_tenant(database, "globex")
    acme_key, globex_key = client_of(database, acme, "acme-app"), client_of(database, globex, "globex-app")
    first, second = two_processes
    status, reg = _ask(first, acme_key, "POST", "/api/v1/devices/register", {"device_id": "D1", "user_id": "alice"})
    assert status == 201
    code = code_at(reg["data"], time.time())
    report_id = stored_report(database, acme)
    foreign = requests_naming("D1", "alice", report_id, code)
    absent = requests_naming("NO-SUCH-DEVICE", "nobody", report_id + 1000, code)
    for n, ((method, path, body), (_, other_path, other_body)) in enumerate(zip(foreign, absent, strict=True)):
        theirs = _ask((first, second)[n % 2], globex_key, method, path, body)
        nothing = _ask((second, first)[n % 2], globex_key, method, other_path, other_body)
        assert comparable(*theirs) == comparable(*nothing), path
    # a burst of another tenant's guesses, through both processes at once, reaches nothing of acme's
    guesses = [{"device_id": "D1", "otp": wrong_code(reg["data"], time.time())} for _ in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda n: _ask((first, second)[n % 2], globex_key, "POST", "/api/v1/otp/verify", guesses[n]), range(40)
            )
        )
    assert {status for status, _ in answers} == {404}
    with database.connection_context():
        device = Device.get_by_id((acme, "D1"))
        assert device.failed_attempts == 0 and device.is_active
        assert not AuditLog.select().where((AuditLog.tenant_id == acme) & (AuditLog.actor == "globex-app")).exists()


def _ask(port, key, method, path, body):
    return http(method, f"http://127.0.0.1:{port}{path}", body, headers={"Authorization": f"Bearer {key}"})
