"""The HTTP API end to end: real sockets, the real Tornado app, a real database."""

import base64
import uuid

import pyotp
import pytest

from tests.conftest import API_KEY, settings_for
from tests.helpers import audit_rows, code_at, seed_client_generate, wrong_code

REGISTER = "/api/v1/devices/register"
VERIFY = "/api/v1/otp/verify"


def register(api, device_id="DEV-1", user_id="alice@example.com", **extra):
    resp = api.post(REGISTER, {"device_id": device_id, "user_id": user_id, **extra})
    assert resp.status == 201, resp.body
    return resp.body["data"]


def assert_error(resp, status, code):
    assert resp.status == status, resp.body
    assert resp.body["success"] is False
    assert resp.body["error"]["code"] == code
    assert resp.body["message"] and "Traceback" not in resp.raw.decode()
    assert resp.body["error"]["request_id"] == resp.headers["X-Request-ID"]


def test_health(api):
    resp = api.get("/health", auth=None)
    assert resp.status == 200
    assert resp.body["data"]["status"] == "ok" and resp.body["data"]["database"] == "ok"
    assert resp.body["data"]["version"] and resp.body["data"]["uptime_seconds"] >= 0
    assert resp.raw.startswith(b'{"success":true,')  # compact, like every other answer
    assert api.request("HEAD", "/health", auth=None).status == 200


def test_register_then_verify_with_the_seed_client_and_pyotp(api, clock):
    data = register(api)
    assert set(data) >= {
        "device_id",
        "user_id",
        "derived_key",
        "secret_base32",
        "otpauth_uri",
        "digits",
        "interval",
        "algorithm",
        "created_at",
    }
    # The original spec's client, unchanged, sends an int.
    code = seed_client_generate(data["derived_key"], clock.now)
    resp = api.post(VERIFY, {"device_id": "DEV-1", "otp": code})
    assert resp.status == 200 and resp.body == {
        "success": True,
        "message": "OTP verification completed",
        "data": {"device_id": "DEV-1", "valid": True},
    }
    # An authenticator app scanning the otpauth URI produces the next code.
    clock.advance(30)
    app_code = pyotp.parse_uri(data["otpauth_uri"]).at(clock.now)
    assert api.post(VERIFY, {"device_id": "DEV-1", "otp": app_code}).body["data"]["valid"] is True
    assert api.post(VERIFY, {"device_id": "DEV-1", "otp": app_code}).body["data"] == {
        "device_id": "DEV-1",
        "valid": False,
        "reason": "REPLAYED",
    }


def test_otpauth_uri_for_options_and_issuer(api, clock):
    data = register(api, digits=8, interval=60, algorithm="sha256", issuer="ACME Corp")
    otp = pyotp.parse_uri(data["otpauth_uri"])
    assert (otp.digits, otp.interval, otp.issuer, otp.name) == (8, 60, "ACME Corp", "alice@example.com")
    assert data["algorithm"] == "SHA256"
    assert api.post(VERIFY, {"device_id": "DEV-1", "otp": otp.at(clock.now)}).body["data"]["valid"] is True


def test_authentication_required_and_audited(api, database):
    for auth in (None, "wrong-key", ""):
        resp = api.get("/api/v1/stats", auth=auth)
        assert_error(resp, 401, "UNAUTHORIZED")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = api.get("/api/v1/stats", auth=None, headers={"Authorization": f"Basic {API_KEY}"})
    assert_error(resp, 401, "UNAUTHORIZED")
    rows = audit_rows(database, action="AUTH_FAILED")
    assert len(rows) == 4 and all(r.user_agent == "pytest-client/1.0" and r.ip_address == "127.0.0.1" for r in rows)
    assert all(API_KEY not in (r.additional_data or "") for r in rows)


def test_api_keys_are_compared_as_equal_length_digests(monkeypatch):
    """Whatever the length of the token sent or of the keys, every comparison is of two 32-byte digests,
    and every key is compared (no early exit): timing tells nothing of which key, or of any key's length."""
    import hmac

    from otp_service.http.access import bearer_matches

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((len(a), len(b))) or real(a, b))
    keys = ("short-key-0123456789", "a-much-longer-key-" + "x" * 60)
    assert bearer_matches("Bearer " + keys[0], keys) and bearer_matches("bearer " + keys[1], keys)
    assert not bearer_matches("Bearer " + keys[0][:-1], keys) and not bearer_matches("Basic " + keys[0], keys)
    assert not bearer_matches("Bearer " + "y" * 5000, keys)
    assert compared == [(32, 32)] * 10


def test_several_api_keys_for_rotation(make_server, settings, db_url):
    api = make_server(settings_for(db_url, API_KEY=f"old-key-0123456789abcdef, {API_KEY}")).client
    assert api.get("/api/v1/stats", auth="old-key-0123456789abcdef").status == 200
    assert api.get("/api/v1/stats").status == 200
    assert api.get("/api/v1/stats", auth="old-key").status == 401


def test_a_long_user_agent_is_audited_truncated_on_every_path(api, clock, database):
    """The audit column holds 256 characters; a longer User-Agent must not turn a request into a 500."""
    agent = {"User-Agent": "ua-" + "x" * 1000}
    reg = api.post(REGISTER, {"device_id": "UA-1", "user_id": "alice"}, headers=agent)
    assert reg.status == 201, reg.body
    ok = api.post(VERIFY, {"device_id": "UA-1", "otp": code_at(reg.body["data"], clock.now)}, headers=agent)
    assert ok.status == 200 and ok.body["data"]["valid"] is True
    wrong = api.post(VERIFY, {"device_id": "UA-1", "otp": wrong_code(reg.body["data"], clock.now)}, headers=agent)
    assert wrong.status == 200 and wrong.body["data"]["valid"] is False
    assert api.post(VERIFY, {"device_id": "NONE", "otp": "123456"}, headers=agent).status == 404
    assert api.get("/api/v1/stats", auth="wrong-key", headers=agent).status == 401
    rows = audit_rows(database)
    assert len(rows) == 5
    assert {r.user_agent for r in rows} == {("ua-" + "x" * 1000)[:256]}


def test_request_id_is_echoed_or_generated(api):
    assert api.get("/health", auth=None, headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = api.get("/health", auth=None, headers={"X-Request-ID": "bad id\twith spaces"}).headers["X-Request-ID"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    resp = api.get("/nowhere", auth=None, headers={"X-Request-ID": "trace-42"})
    assert resp.headers["X-Request-ID"] == "trace-42" and resp.body["error"]["request_id"] == "trace-42"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"user_id": "u"}, "device_id"),
        ({"device_id": "", "user_id": "u"}, "device_id"),
        ({"device_id": "has space", "user_id": "u"}, "device_id"),
        ({"device_id": "x" * 129, "user_id": "u"}, "device_id"),
        ({"device_id": "DÉV", "user_id": "u"}, "device_id"),
        ({"device_id": 123, "user_id": "u"}, "device_id"),
        ({"device_id": "D"}, "user_id"),
        ({"device_id": "D", "user_id": ""}, "user_id"),
        ({"device_id": "D", "user_id": "a\nb"}, "user_id"),
        ({"device_id": "D", "user_id": "x" * 255}, "user_id"),
        ({"device_id": "D", "user_id": "u", "digits": 9}, "digits"),
        ({"device_id": "D", "user_id": "u", "digits": 5}, "digits"),
        ({"device_id": "D", "user_id": "u", "digits": "6"}, "digits"),
        ({"device_id": "D", "user_id": "u", "digits": True}, "digits"),
        ({"device_id": "D", "user_id": "u", "interval": 10}, "interval"),
        ({"device_id": "D", "user_id": "u", "interval": 301}, "interval"),
        ({"device_id": "D", "user_id": "u", "algorithm": "MD5"}, "algorithm"),
        ({"device_id": "D", "user_id": "u", "issuer": "a:b"}, "issuer"),
    ],
)
def test_registration_validation(api, database, body, field):
    resp = api.post(REGISTER, body)
    assert_error(resp, 400, "VALIDATION_ERROR")
    assert resp.body["error"]["field"] == field and field in resp.body["message"]
    assert audit_rows(database) == []


def test_duplicate_registration_conflicts(api, database):
    register(api)
    assert_error(api.post(REGISTER, {"device_id": "DEV-1", "user_id": "mallory"}), 409, "DEVICE_EXISTS")
    assert [(r.success, r.reason) for r in audit_rows(database, action="DEVICE_REGISTERED")] == [
        (True, None),
        (False, "DEVICE_EXISTS"),
    ]


@pytest.mark.parametrize(
    "otp",
    [
        True,
        12.0,
        -1,
        123456789,
        "12345a",
        " 123456",
        "123456 ",
        "+123456",
        "1e5",
        "١٢٣٤٥٦",
        "",
        None,
        [123456],
        {"otp": 1},
        "1234567",
        "12345",
    ],
)
def test_verify_rejects_malformed_codes(api, otp):
    register(api)
    resp = api.post(VERIFY, {"device_id": "DEV-1", "otp": otp})
    assert_error(resp, 400, "VALIDATION_ERROR")
    assert resp.body["error"]["field"] == "otp"


def test_verify_requires_fields(api):
    assert_error(api.post(VERIFY, {"otp": "123456"}), 400, "VALIDATION_ERROR")
    register(api)
    assert_error(api.post(VERIFY, {"device_id": "DEV-1"}), 400, "VALIDATION_ERROR")


def test_verify_wrong_code_unknown_and_inactive_devices(api, clock):
    data = register(api)
    resp = api.post(VERIFY, {"device_id": "DEV-1", "otp": wrong_code(data, clock.now)})
    assert resp.status == 200 and resp.body["data"] == {"device_id": "DEV-1", "valid": False, "reason": "INVALID_CODE"}
    assert_error(api.post(VERIFY, {"device_id": "GHOST", "otp": "123456"}), 404, "DEVICE_NOT_FOUND")
    api.post("/api/v1/devices/DEV-1/deactivate")
    assert_error(api.post(VERIFY, {"device_id": "DEV-1", "otp": code_at(data, clock.now)}), 409, "DEVICE_INACTIVE")


def test_lockout_and_unlock_over_http(api, clock, database):
    data = register(api)
    for _ in range(5):
        api.post(VERIFY, {"device_id": "DEV-1", "otp": wrong_code(data, clock.now)})
    resp = api.post(VERIFY, {"device_id": "DEV-1", "otp": code_at(data, clock.now)})
    assert_error(resp, 429, "DEVICE_LOCKED")
    assert resp.headers["Retry-After"] == "60" and resp.body["error"]["retry_after"] == 60
    info = api.get("/api/v1/devices/DEV-1").body["data"]
    assert info["failed_attempts"] == 5 and info["locked_until"].endswith("Z")
    resp = api.post("/api/v1/devices/DEV-1/unlock")
    assert resp.status == 200 and resp.body["data"]["locked_until"] is None
    assert api.post(VERIFY, {"device_id": "DEV-1", "otp": code_at(data, clock.now)}).body["data"]["valid"] is True
    assert [r.action for r in audit_rows(database, action="DEVICE_LOCKED")] == ["DEVICE_LOCKED"]
    assert_error(api.post("/api/v1/devices/GHOST/unlock"), 404, "DEVICE_NOT_FOUND")


def test_deactivate_is_idempotent(api):
    register(api)
    first = api.post("/api/v1/devices/DEV-1/deactivate")
    assert first.status == 200 and first.body["data"]["is_active"] is False
    assert first.body["data"]["deactivated_at"].endswith("Z")
    again = api.post("/api/v1/devices/DEV-1/deactivate")
    assert again.status == 200 and again.body["data"] == first.body["data"]
    assert_error(api.post("/api/v1/devices/GHOST/deactivate"), 404, "DEVICE_NOT_FOUND")
    assert_error(api.post("/api/v1/devices/bad%20id/deactivate"), 400, "VALIDATION_ERROR")


def test_device_info_never_contains_a_secret(api):
    data = register(api)
    resp = api.get("/api/v1/devices/DEV-1")
    assert resp.status == 200
    info = resp.body["data"]
    assert set(info) == {
        "device_id",
        "user_id",
        "is_active",
        "created_at",
        "last_used",
        "usage_count",
        "deactivated_at",
        "digits",
        "interval",
        "algorithm",
        "issuer",
        "key_version",
        "failed_attempts",
        "locked_until",
        "hard_locked",
        "status",
        "confirm_by",
        "enrollment_expired",
        "locked",
        "drift",
    }
    assert (info["status"], info["confirm_by"], info["locked"], info["drift"]) == ("active", None, False, 0)
    key_hex = base64.b64decode(data["derived_key"]).hex()
    for secret in (data["derived_key"], data["secret_base32"], key_hex):
        assert secret not in resp.raw.decode()
    assert_error(api.get("/api/v1/devices/GHOST"), 404, "DEVICE_NOT_FOUND")


def test_user_devices_and_audit_trail(api, clock):
    data = register(api, "A1", "carol@example.com")
    register(api, "A2", "carol@example.com")
    register(api, "B1", "dave")
    devices = api.get("/api/v1/users/carol%40example.com/devices").body["data"]["devices"]
    assert [d["device_id"] for d in devices] == ["A1", "A2"]
    api.post(VERIFY, {"device_id": "A1", "otp": code_at(data, clock.now)})
    page = api.get("/api/v1/users/carol@example.com/audit?limit=2").body["data"]
    assert [e["action"] for e in page["entries"]] == ["OTP_VERIFICATION", "DEVICE_REGISTERED"]
    assert page["entries"][0]["ip_address"] == "127.0.0.1" and page["entries"][0]["user_agent"] == "pytest-client/1.0"
    rest = api.get(f"/api/v1/users/carol@example.com/audit?limit=2&before={page['next_before']}").body["data"]
    assert [e["device_id"] for e in rest["entries"]] == ["A1"] and rest["next_before"] is None
    for query in ("limit=0", "limit=201", "limit=x", "before=-1", "before=abc"):
        assert_error(api.get(f"/api/v1/users/carol/audit?{query}"), 400, "VALIDATION_ERROR")


def test_stats(api):
    register(api, "A")
    register(api, "B")
    api.post("/api/v1/devices/B/deactivate")
    data = api.get("/api/v1/stats").body["data"]
    assert data["devices"] == {"total": 2, "active": 1, "inactive": 1}
    assert data["last_24h"]["registrations"] == 2


def test_debug_code_endpoint_only_with_debug(api, make_server, db_url, clock):
    data = register(api)
    assert_error(api.get("/api/v1/debug/devices/DEV-1/otp"), 404, "NOT_FOUND")
    debug_api = make_server(settings_for(db_url, DEBUG="true")).client
    resp = debug_api.get("/api/v1/debug/devices/DEV-1/otp")
    assert resp.status == 200 and resp.body["data"]["otp"] == code_at(data, clock.now)


def test_protocol_errors_are_json(api):
    assert_error(
        api.request("POST", REGISTER, raw=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "MALFORMED_JSON",
    )
    assert_error(
        api.request("POST", REGISTER, raw=b"[1, 2]", headers={"Content-Type": "application/json"}),
        400,
        "MALFORMED_JSON",
    )
    assert_error(
        api.request("POST", REGISTER, raw=b"\xff\xfe", headers={"Content-Type": "application/json"}),
        400,
        "MALFORMED_JSON",
    )
    deep = b"[" * 8000 + b"]" * 8000  # under the 16 KiB limit, deeper than Python's recursion limit
    assert_error(
        api.request("POST", VERIFY, raw=deep, headers={"Content-Type": "application/json"}), 400, "MALFORMED_JSON"
    )
    assert_error(
        api.request("POST", REGISTER, raw=b"device_id=x", headers={"Content-Type": "text/plain"}),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    big = b'{"device_id": "' + b"x" * 20000 + b'"}'
    assert_error(
        api.request("POST", REGISTER, raw=big, headers={"Content-Type": "application/json"}), 413, "PAYLOAD_TOO_LARGE"
    )
    assert_error(api.get("/api/v1/nothing-here"), 404, "NOT_FOUND")
    assert_error(api.get(REGISTER), 405, "METHOD_NOT_ALLOWED")
    assert_error(api.request("DELETE", "/api/v1/devices/DEV-1"), 405, "METHOD_NOT_ALLOWED")


def test_unexpected_error_is_a_json_500_with_nothing_internal(api, make_server, settings, monkeypatch):
    from otp_service.service import OtpService

    def boom(self, *args, **kwargs):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(OtpService, "stats", boom)
    resp = api.get("/api/v1/stats")
    assert_error(resp, 500, "INTERNAL_ERROR")
    assert "internals" not in resp.raw.decode() and "RuntimeError" not in resp.raw.decode()


def test_database_unreachable_gives_503_json(make_server):
    down = settings_for("postgresql://postgres@127.0.0.1:1/nowhere", DB_TIMEOUT="2")
    api = make_server(down, own_database=True).client
    resp = api.get("/health", auth=None)
    assert resp.status == 503 and resp.body["data"]["database"] == "unreachable"
    assert_error(api.post(VERIFY, {"device_id": "D", "otp": "123456"}), 503, "DATABASE_UNAVAILABLE")
    assert_error(api.post(REGISTER, {"device_id": "D", "user_id": "u"}), 503, "DATABASE_UNAVAILABLE")


def test_rate_limit_per_client_ip(make_server, db_url, database):
    api = make_server(settings_for(db_url, RATE_LIMIT_DEFAULT="3/minute")).client
    statuses = [api.get("/api/v1/stats") for _ in range(5)]
    assert [r.status for r in statuses] == [200, 200, 200, 429, 429]
    assert statuses[0].headers["X-RateLimit-Limit"] == "3" and statuses[0].headers["X-RateLimit-Remaining"] == "2"
    limited = statuses[3]
    assert_error(limited, 429, "RATE_LIMITED")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 and limited.headers["X-RateLimit-Remaining"] == "0"
    # One audit row per client and window, not one per refused request.
    assert len(audit_rows(database, action="RATE_LIMITED")) == 1


def test_forwarded_for_is_trusted_only_for_configured_hops(make_server, db_url):
    plain = make_server(settings_for(db_url, RATE_LIMIT_DEFAULT="2/minute")).client
    spoofed = [plain.get("/api/v1/stats", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status for i in range(3)]
    assert spoofed == [200, 200, 429]  # the header is ignored: every request counts against 127.0.0.1
    proxied = make_server(settings_for(db_url, RATE_LIMIT_DEFAULT="2/minute", TRUSTED_PROXY_HOPS="1")).client
    # Behind one proxy the last entry is the client; a client-written prefix does not help it.
    hdr = {"X-Forwarded-For": "1.2.3.4, 198.51.100.9"}
    assert [proxied.get("/api/v1/stats", headers=hdr).status for _ in range(3)] == [200, 200, 429]
    other = {"X-Forwarded-For": "198.51.100.10"}
    assert proxied.get("/api/v1/stats", headers=other).status == 200


def test_ipv6_clients_are_limited_per_network_and_addresses_are_stored_in_normal_form(make_server, db_url, database):
    api = make_server(settings_for(db_url, RATE_LIMIT_DEFAULT="3/hour", TRUSTED_PROXY_HOPS="1")).client

    def stats(address):
        return api.get("/api/v1/stats", headers={"X-Forwarded-For": address}).status

    # Four addresses of one /64 share its budget; the next /64 has its own; IPv4 counts per address.
    assert [stats(f"2001:db8:0:7::{n}") for n in range(1, 5)] == [200, 200, 200, 429]
    assert stats("2001:db8:0:8::1") == 200
    assert [stats("192.0.2.1"), stats("192.0.2.2"), stats("192.0.2.3"), stats("192.0.2.4")] == [200] * 4
    # A zone id (any length the client likes) or an IPv4-mapped disguise is not what is stored.
    api.get("/api/v1/stats", auth="wrong", headers={"X-Forwarded-For": "fe80::1%" + "x" * 300})
    api.get("/api/v1/stats", auth="wrong", headers={"X-Forwarded-For": "::ffff:192.0.2.77"})
    stored = [r.ip_address for r in audit_rows(database, action="AUTH_FAILED")]
    assert stored == ["fe80::1", "192.0.2.77"]


@pytest.mark.redis
def test_rate_limits_are_shared_through_redis(make_server, db_url):
    import os

    env = dict(RATE_LIMIT_DEFAULT="4/minute", TRUSTED_PROXY_HOPS="1", REDIS_URL=os.environ["REDIS_URL"])
    first = make_server(settings_for(db_url, **env)).client
    second = make_server(settings_for(db_url, **env)).client
    client = {"X-Forwarded-For": f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}
    statuses = [c.get("/api/v1/stats", headers=client).status for c in (first, second, first, second, first, second)]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_redis_unreachable_fails_open_or_closed_as_configured(make_server, db_url):
    env = dict(RATE_LIMIT_DEFAULT="2/minute", REDIS_URL="redis://127.0.0.1:1/0")
    fail_open = make_server(settings_for(db_url, **env)).client
    assert [fail_open.get("/api/v1/stats").status for _ in range(3)] == [200, 200, 429]  # in-process limits
    fail_closed = make_server(settings_for(db_url, RATE_LIMIT_ON_REDIS_ERROR="closed", **env)).client
    assert_error(fail_closed.get("/api/v1/stats"), 503, "RATE_LIMITER_UNAVAILABLE")
