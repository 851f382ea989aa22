"""The domain rules, called without HTTP, against SQLite and (in CI) PostgreSQL."""

import base64
import json
import threading

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors, totp
from otp_service.core.keys import Keyring, key_fingerprint
from otp_service.core.verification import lock_seconds
from otp_service.db.models import Device
from otp_service.service import OtpService
from tests.conftest import settings_for
from tests.helpers import at_once, audit_rows, code_at, wrong_code

CTX = RequestContext(ip_address="203.0.113.7", user_agent="tests", request_id="req-1")


def device_row(database, device_id):
    with database.connection_context():
        return Device.get_by_id((1, device_id))


def test_registration_stores_no_usable_secret(service, database):
    reg = service.register("DEV-1", "alice@example.com", CTX)
    key = base64.b64decode(reg["derived_key"])
    assert len(key) == 32
    assert base64.b32decode(reg["secret_base32"] + "=" * (-len(reg["secret_base32"]) % 8)) == key
    row = device_row(database, "DEV-1")
    assert row.derived_key_hash == key_fingerprint(key)
    stored = json.dumps([str(getattr(row, f.name)) for f in Device._meta.sorted_fields])
    assert reg["derived_key"] not in stored and reg["secret_base32"] not in stored and key.hex() not in stored
    [audit] = audit_rows(database, action="DEVICE_REGISTERED")
    assert (audit.success, audit.device_id, audit.user_id, audit.ip_address) == (
        True,
        "DEV-1",
        "alice@example.com",
        "203.0.113.7",
    )
    assert reg["derived_key"] not in (audit.additional_data or "")


def test_valid_code_is_accepted_once_and_counted(service, database, clock):
    reg = service.register("DEV-1", "alice", CTX)
    code = code_at(reg, clock.now)
    assert service.verify("DEV-1", code, CTX) == {"device_id": "DEV-1", "valid": True}
    assert service.verify("DEV-1", code, CTX) == {"device_id": "DEV-1", "valid": False, "reason": "REPLAYED"}
    row = device_row(database, "DEV-1")
    assert (row.usage_count, row.last_step, row.failed_attempts) == (1, totp.time_step(clock.now), 0)
    results = [(a.success, a.reason) for a in audit_rows(database, action="OTP_VERIFICATION")]
    assert results == [(True, None), (False, "REPLAYED")]


def test_integer_code_means_zero_padded_digits(service, clock):
    reg = service.register("DEV-1", "alice", CTX)
    for _ in range(200):  # find a step whose code starts with 0, as the seed client sends it as an int
        code = code_at(reg, clock.now)
        if code.startswith("0"):
            break
        clock.advance(30)
    assert code.startswith("0")
    assert service.verify("DEV-1", int(code), CTX)["valid"] is True


def test_code_for_an_earlier_step_is_refused_after_a_later_one(service, clock):
    reg = service.register("DEV-1", "alice", CTX)
    earlier, later = code_at(reg, clock.now, -1), code_at(reg, clock.now)
    assert service.verify("DEV-1", later, CTX)["valid"] is True
    assert service.verify("DEV-1", earlier, CTX) == {"device_id": "DEV-1", "valid": False, "reason": "REPLAYED"}


@pytest.mark.parametrize("offset,valid", [(-2, False), (-1, True), (0, True), (1, True), (2, False)])
def test_drift_window(service, clock, offset, valid):
    reg = service.register("DEV-1", "alice", CTX)
    result = service.verify("DEV-1", code_at(reg, clock.now, offset), CTX)
    assert result["valid"] is valid


def test_drift_is_remembered_and_recentres_the_window(service, database, clock):
    reg = service.register("DEV-1", "alice", CTX)
    assert service.verify("DEV-1", code_at(reg, clock.now, 1), CTX)["valid"]  # device runs one step fast
    assert device_row(database, "DEV-1").drift == 1
    clock.advance(60)
    # Two steps ahead of the server is outside ±1 around "now", but inside ±1 around now+drift.
    assert service.verify("DEV-1", code_at(reg, clock.now, 2), CTX)["valid"]
    assert device_row(database, "DEV-1").drift == 2
    audit = audit_rows(database, action="OTP_VERIFICATION", success=True)[-1]
    assert json.loads(audit.additional_data)["offset"] == 2


def test_drift_is_bounded(database, clock, settings):
    settings = settings_for(settings.database_url, OTP_MAX_DRIFT="1", OTP_WINDOW="1")
    service = OtpService(settings, Keyring(settings.master_secrets, 1), database, clock=clock)
    reg = service.register("DEV-1", "alice", CTX)
    assert service.verify("DEV-1", code_at(reg, clock.now, 1), CTX)["valid"]
    clock.advance(30)
    assert service.verify("DEV-1", code_at(reg, clock.now, 2), CTX)["valid"]
    assert device_row(database, "DEV-1").drift == 1  # clamped
    clock.advance(30)
    assert not service.verify("DEV-1", code_at(reg, clock.now, 3), CTX)["valid"]


def test_lockout_after_max_failures_then_doubling(service, database, clock):
    reg = service.register("DEV-1", "alice", CTX)
    bad = wrong_code(reg, clock.now)
    for _ in range(4):
        assert service.verify("DEV-1", bad, CTX) == {"device_id": "DEV-1", "valid": False, "reason": "INVALID_CODE"}
        assert device_row(database, "DEV-1").locked_until is None
    assert service.verify("DEV-1", bad, CTX)["reason"] == "INVALID_CODE"  # fifth failure locks
    assert device_row(database, "DEV-1").locked_until is not None
    [locked] = audit_rows(database, action="DEVICE_LOCKED")
    assert json.loads(locked.additional_data)["lock_seconds"] == 60

    # While locked even the right code is refused, with a Retry-After, and not counted.
    with pytest.raises(errors.DeviceLocked) as exc:
        service.verify("DEV-1", code_at(reg, clock.now), CTX)
    assert exc.value.headers["Retry-After"] == "60"
    assert device_row(database, "DEV-1").failed_attempts == 5

    clock.advance(61)
    assert service.verify("DEV-1", bad, CTX)["valid"] is False  # sixth failure: locked again, twice as long
    assert json.loads(audit_rows(database, action="DEVICE_LOCKED")[-1].additional_data)["lock_seconds"] == 120
    clock.advance(121)
    assert service.verify("DEV-1", code_at(reg, clock.now), CTX)["valid"] is True  # success resets
    row = device_row(database, "DEV-1")
    assert (row.failed_attempts, row.locked_until) == (0, None)


def test_lock_duration_doubles_and_is_capped():
    assert [lock_seconds(n, 5, 60) for n in (4, 5, 6, 7, 10, 50)] == [0, 60, 120, 240, 1920, 3600]


def test_unlock_lifts_the_lock_but_keeps_the_failures_counted(service, database, clock):
    """An unlock is no reset button: the next wrong code locks again, for longer; the right one clears all."""
    reg = service.register("DEV-1", "alice", CTX)
    for _ in range(5):
        service.verify("DEV-1", wrong_code(reg, clock.now), CTX)
    assert service.unlock("DEV-1", CTX) == {"device_id": "DEV-1", "failed_attempts": 5, "locked_until": None}
    relocked = service.verify("DEV-1", wrong_code(reg, clock.now), CTX)
    assert relocked["reason"] == "INVALID_CODE" and relocked["locked_until"] is not None
    assert service.device_info("DEV-1")["failed_attempts"] == 6
    service.unlock("DEV-1", CTX)
    assert service.verify("DEV-1", code_at(reg, clock.now), CTX)["valid"] is True
    assert service.device_info("DEV-1")["failed_attempts"] == 0
    locks = [json.loads(a.additional_data)["lock_seconds"] for a in audit_rows(database, action="DEVICE_LOCKED")]
    assert locks == [60, 120]  # the escalation survived the unlock
    assert [a.success for a in audit_rows(database, action="DEVICE_UNLOCKED")] == [True, True]
    with pytest.raises(errors.DeviceNotFound):
        service.unlock("NOPE", CTX)


def test_deactivation_is_idempotent_and_blocks_verification(service, database, clock):
    reg = service.register("DEV-1", "alice", CTX)
    first = service.deactivate("DEV-1", CTX)
    clock.advance(100)
    assert service.deactivate("DEV-1", CTX) == first
    with pytest.raises(errors.DeviceInactive):
        service.verify("DEV-1", code_at(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceNotFound):
        service.deactivate("NOPE", CTX)
    reasons = [(a.action, a.success, a.reason) for a in audit_rows(database)]
    assert reasons[1:] == [  # the second deactivation answers like the first and records nothing new
        ("DEVICE_DEACTIVATED", True, None),
        ("OTP_VERIFICATION", False, "DEVICE_INACTIVE"),
        ("DEVICE_DEACTIVATED", False, "DEVICE_NOT_FOUND"),
    ]


def test_reregistering_a_deactivated_device_gives_a_new_key(service, clock):
    first = service.register("DEV-1", "alice", CTX)
    with pytest.raises(errors.DeviceExists):
        service.register("DEV-1", "alice", CTX)
    service.deactivate("DEV-1", CTX)
    second = service.register("DEV-1", "alice", CTX)
    assert second["derived_key"] != first["derived_key"]
    assert service.verify("DEV-1", code_at(second, clock.now), CTX)["valid"] is True


def test_unknown_device_is_not_found_and_audited(service, database):
    with pytest.raises(errors.DeviceNotFound):
        service.verify("GHOST", "123456", CTX)
    [row] = audit_rows(database)
    assert (row.action, row.success, row.reason, row.device_id) == (
        "OTP_VERIFICATION",
        False,
        "DEVICE_NOT_FOUND",
        "GHOST",
    )


def test_malformed_code_for_the_device_is_a_validation_error_and_changes_nothing(service, database):
    service.register("DEV-1", "alice", CTX, digits=8)
    for bad in ("123456", 123456789):
        with pytest.raises(errors.ValidationError):
            service.verify("DEV-1", bad, CTX)
    assert device_row(database, "DEV-1").failed_attempts == 0
    assert len(audit_rows(database)) == 1


def test_registration_options_are_honoured(service, clock):
    reg = service.register("DEV-1", "alice", CTX, digits=8, interval=60, algorithm="SHA512", issuer="ACME")
    assert (reg["digits"], reg["interval"], reg["algorithm"]) == (8, 60, "SHA512")
    assert "issuer=ACME" in reg["otpauth_uri"] and "algorithm=SHA512" in reg["otpauth_uri"]
    assert service.verify("DEV-1", code_at(reg, clock.now), CTX)["valid"] is True


def test_wrong_master_secret_is_key_unavailable_not_invalid_code(service, database, clock, settings):
    reg = service.register("DEV-1", "alice", CTX)
    other = settings_for(settings.database_url, MASTER_SECRET="another-master-secret-0123456789abcdefgh")
    misconfigured = OtpService(other, Keyring(other.master_secrets, 1), database, clock=clock)
    with pytest.raises(errors.KeyUnavailableError):
        misconfigured.verify("DEV-1", code_at(reg, clock.now), CTX)
    assert audit_rows(database, action="OTP_VERIFICATION")[-1].reason == "KEY_UNAVAILABLE"


def test_rotation_keeps_old_devices_working_and_signs_new_ones_with_the_new_secret(service, database, clock, settings):
    old = service.register("OLD", "alice", CTX)
    rotated = settings_for(
        settings.database_url,
        MASTER_SECRET="rotated-master-secret-0123456789abcdefghij",
        MASTER_SECRET_VERSION="2",
        MASTER_SECRETS_PREVIOUS=f"1:{settings.master_secret}",
    )
    service2 = OtpService(rotated, Keyring(rotated.master_secrets, 2), database, clock=clock)
    new = service2.register("NEW", "alice", CTX)
    assert (old["key_version"], new["key_version"]) == (1, 2)
    assert service2.verify("OLD", code_at(old, clock.now), CTX)["valid"] is True
    assert service2.verify("NEW", code_at(new, clock.now), CTX)["valid"] is True
    assert service2.stats()["by_key_version"] == {"1": {"active": 1, "total": 1}, "2": {"active": 1, "total": 1}}


def refuse_audit_inserts(database):
    """Make the database itself refuse every audit row, as a full disk or a broken constraint would."""
    with database.connection_context():
        if database.__class__.__name__.endswith("SqliteDatabase"):
            database.execute_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_logs BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        else:
            database.execute_sql(
                "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
            database.execute_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_logs FOR EACH ROW EXECUTE FUNCTION refuse()"
            )


def allow_audit_inserts(database):
    with database.connection_context():
        database.execute_sql("DROP TRIGGER refuse" + ("" if "Sqlite" in type(database).__name__ else " ON audit_logs"))


def test_audit_row_and_state_change_commit_together(service, database, clock):
    """When the audit row cannot be written, the state change it records is not kept either — whether the
    decision was made on a remembered state or a fresh read, and for every kind of operation."""
    reg = service.register("DEV-1", "alice", CTX)
    service.verify("DEV-1", code_at(reg, clock.now), CTX)  # its state is remembered from now on
    clock.advance(30)
    before = device_row(database, "DEV-1")
    refuse_audit_inserts(database)
    try:
        attempts = [
            lambda: service.verify("DEV-1", code_at(reg, clock.now), CTX),  # success
            lambda: service.verify("DEV-1", wrong_code(reg, clock.now), CTX),  # failure
            lambda: service.register("DEV-2", "bob", CTX),
            lambda: service.deactivate("DEV-1", CTX),
            lambda: service.unlock("DEV-1", CTX),
        ]
        for attempt in attempts:
            with pytest.raises(Exception, match="disk full"):
                attempt()
        service.engine.cache.discard((1, "DEV-1"))  # and on a fresh read
        with pytest.raises(Exception, match="disk full"):
            service.verify("DEV-1", code_at(reg, clock.now), CTX)
    finally:
        allow_audit_inserts(database)
    after = device_row(database, "DEV-1")
    fields = ("usage_count", "last_step", "failed_attempts", "is_active", "drift", "last_used")
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]
    with database.connection_context():
        assert Device.get_or_none(Device.device_id == "DEV-2") is None
    assert len(audit_rows(database)) == 2  # the registration and the first verification
    assert service.verify("DEV-1", code_at(reg, clock.now), CTX)["valid"] is True  # and all is well again


def test_user_audit_is_newest_first_with_keyset_pagination(service, clock):
    reg = service.register("DEV-1", "alice", CTX)
    for _ in range(4):
        clock.advance(30)
        service.verify("DEV-1", code_at(reg, clock.now), CTX)
    service.register("DEV-B", "bob", CTX)
    page1 = service.user_audit("alice", limit=3)
    ids1 = [e["id"] for e in page1["entries"]]
    assert ids1 == sorted(ids1, reverse=True) and len(ids1) == 3
    page2 = service.user_audit("alice", limit=3, before=page1["next_before"])
    assert [e["action"] for e in page2["entries"]] == ["OTP_VERIFICATION", "DEVICE_REGISTERED"]
    assert page2["next_before"] is None
    assert all(e["user_id"] == "alice" for e in page1["entries"] + page2["entries"])


def test_stats_count_devices_and_recent_activity(service, clock):
    reg = service.register("A", "alice", CTX)
    service.register("B", "bob", CTX)
    service.deactivate("B", CTX)
    service.verify("A", code_at(reg, clock.now), CTX)
    service.verify("A", wrong_code(reg, clock.now), CTX)
    clock.advance(2 * 86400)
    service.verify("A", code_at(reg, clock.now), CTX)
    stats = service.stats()
    assert stats["devices"] == {"total": 2, "active": 1, "inactive": 1}
    assert stats["last_24h"] == {"registrations": 0, "verifications_succeeded": 1, "verifications_failed": 0}
    assert stats["last_7d"] == {"registrations": 2, "verifications_succeeded": 2, "verifications_failed": 1}


@pytest.mark.postgres
def test_concurrent_verification_of_one_code_is_accepted_exactly_once(service, database, clock):
    reg = service.register("DEV-1", "alice", CTX)
    code = code_at(reg, clock.now)
    results = at_once(20, lambda: service.verify("DEV-1", code, CTX)["valid"])
    assert sorted(results) == [False] * 19 + [True]
    assert len(audit_rows(database, action="OTP_VERIFICATION", success=True)) == 1
    assert device_row(database, "DEV-1").usage_count == 1


def test_concurrent_failures_are_each_counted(service, database, clock):
    reg = service.register("DEV-1", "alice", CTX)
    bad = wrong_code(reg, clock.now)
    threads = [threading.Thread(target=service.verify, args=("DEV-1", bad, CTX)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert device_row(database, "DEV-1").failed_attempts == 4


@pytest.mark.postgres
def test_concurrent_registrations_of_one_id_create_exactly_one_device(service, database):
    barrier = threading.Barrier(12)
    outcomes = []

    def attempt(n):
        barrier.wait()
        try:
            outcomes.append(service.register("RACE", f"user{n}", CTX)["derived_key"])
        except errors.DeviceExists:
            outcomes.append(None)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [k for k in outcomes if k]
    assert len(keys) == 1
    rows = audit_rows(database, action="DEVICE_REGISTERED")
    assert sorted((r.success, r.reason) for r in rows) == [(False, "DEVICE_EXISTS")] * 11 + [(True, None)]
    assert device_row(database, "RACE").derived_key_hash == key_fingerprint(base64.b64decode(keys[0]))
