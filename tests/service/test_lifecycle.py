"""The device lifecycle (issue 12): confirmed enrolment and its expiry, resync with two consecutive codes,
drift recovery and reset, recovery codes, forensic code lookup. On SQLite and PostgreSQL (`service` runs
the event-loop path there), with simultaneous requests wherever state changes."""

import base64
import json
import re
from datetime import timedelta

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors, recovery, totp
from otp_service.core.transitions import to_datetime
from otp_service.db.models import RecoveryCodes
from tests.helpers import at_once, audit_rows, code_at, wrong_code

CTX = RequestContext("198.51.100.7", "AcmeBank-iOS/5.2", None, "app")
STEP = 30


def step_code(reg: dict, step: int) -> str:
    """The code the device shows during time step `step`."""
    return totp.totp(base64.b64decode(reg["derived_key"]), step * STEP + 1, reg["digits"], STEP, reg["algorithm"])


def actions(database, **where) -> list[tuple]:
    return [(r.action, r.success, r.reason) for r in audit_rows(database, **where)]


# -- confirmed enrolment ---------------------------------------------------------------------------


def test_a_confirmed_enrolment_is_pending_until_its_first_code(service, database, clock):
    reg = service.register("PHONE", "alice", CTX, confirm=True)
    assert reg["status"] == "pending"
    assert reg["confirm_by"] == (to_datetime(clock.now) + timedelta(seconds=600)).isoformat() + "Z"
    info = service.device_info("PHONE")
    assert (info["status"], info["is_active"], info["confirm_by"]) == ("pending", True, reg["confirm_by"])
    with pytest.raises(errors.DevicePending) as refused:  # not usable for sign-in yet
        service.verify("PHONE", code_at(reg, clock.now), CTX)
    assert refused.value.status == 409
    wrong = service.confirm("PHONE", wrong_code(reg, clock.now), CTX)
    assert wrong == {"device_id": "PHONE", "valid": False, "status": "pending", "reason": "INVALID_CODE"}
    assert service.device_info("PHONE")["failed_attempts"] == 1  # counted against the budget
    code = code_at(reg, clock.now)
    assert service.confirm("PHONE", code, CTX) == {"device_id": "PHONE", "valid": True, "status": "active"}
    info = service.device_info("PHONE")
    assert (info["status"], info["failed_attempts"], info["usage_count"], info["confirm_by"]) == ("active", 0, 0, None)
    with pytest.raises(errors.AlreadyConfirmed):
        service.confirm("PHONE", code_at(reg, clock.now + STEP), CTX)
    # the confirming code's step is the replay floor: the same code cannot then sign in
    assert service.verify("PHONE", code, CTX)["reason"] == "REPLAYED"
    clock.advance(STEP)
    assert service.verify("PHONE", code_at(reg, clock.now), CTX)["valid"] is True
    assert actions(database, device_id="PHONE") == [
        ("DEVICE_REGISTERED", True, None),
        ("OTP_VERIFICATION", False, "DEVICE_PENDING"),
        ("DEVICE_CONFIRMED", False, "INVALID_CODE"),
        ("DEVICE_CONFIRMED", True, None),
        ("DEVICE_CONFIRMED", False, "ALREADY_CONFIRMED"),
        ("OTP_VERIFICATION", False, "REPLAYED"),
        ("OTP_VERIFICATION", True, None),
    ]
    registered = audit_rows(database, action="DEVICE_REGISTERED")[0]
    assert json.loads(registered.additional_data)["pending"] is True and registered.actor == "app"


def test_wrong_confirmations_lock_the_enrolment_like_wrong_codes(service, clock):
    reg = service.register("PHONE", "alice", CTX, confirm=True)
    answers = [service.confirm("PHONE", wrong_code(reg, clock.now), CTX) for _ in range(5)]
    assert [a["reason"] for a in answers] == ["INVALID_CODE"] * 5 and "locked_until" in answers[-1]
    with pytest.raises(errors.DeviceLocked):
        service.confirm("PHONE", code_at(reg, clock.now), CTX)
    clock.advance(61)
    assert service.confirm("PHONE", code_at(reg, clock.now), CTX)["valid"] is True


def test_an_enrolment_not_confirmed_in_time_expires_once_and_frees_its_id(service, database, clock):
    reg = service.register("LATE", "alice", CTX, confirm=True)
    service.register("SWEPT", "bob", CTX, confirm=True)
    service.register("DONE", "carol", CTX)  # not pending: never expires
    clock.advance(600)
    with pytest.raises(errors.EnrollmentExpired) as refused:
        service.confirm("LATE", code_at(reg, clock.now), CTX)
    assert refused.value.status == 410
    info = service.device_info("LATE")
    assert (info["status"], info["is_active"], info["enrollment_expired"]) == ("deactivated", False, True)
    assert service.expire_pending() == 1  # SWEPT; LATE is already recorded
    assert service.expire_pending() == 0
    expiries = audit_rows(database, action="ENROLLMENT_EXPIRED")
    assert [(r.device_id, r.actor) for r in expiries] == [("LATE", "app"), ("SWEPT", "otp-service")]
    with pytest.raises(errors.EnrollmentExpired):
        service.verify("LATE", code_at(reg, clock.now), CTX)
    again = service.register("LATE", "alice", CTX)  # its id may be registered again, with a new key
    assert again["derived_key"] != reg["derived_key"] and again["status"] == "active"
    assert service.verify("LATE", code_at(again, clock.now), CTX)["valid"] is True


def test_registering_over_a_pending_enrolment_is_refused_until_it_expires(service, clock):
    service.register("PHONE", "alice", CTX, confirm=True)
    with pytest.raises(errors.DeviceExists):
        service.register("PHONE", "mallory", CTX)
    clock.advance(601)
    assert service.register("PHONE", "alice", CTX)["status"] == "active"  # recorded as expired, then taken over


def test_required_confirmation_makes_every_enrolment_pending(make_server, db_url, clock):
    from tests.conftest import settings_for

    api = make_server(settings_for(db_url, ENROLLMENT_CONFIRMATION="required", ENROLLMENT_TTL_SECONDS="120")).client
    resp = api.post("/api/v1/devices/register", {"device_id": "D1", "user_id": "u", "confirm": False})
    assert resp.status == 201 and resp.body["data"]["status"] == "pending"
    assert "confirm_by" in resp.body["message"]
    reg = resp.body["data"]
    assert api.post("/api/v1/otp/verify", {"device_id": "D1", "otp": code_at(reg, clock.now)}).body["error"][
        "code"
    ] == ("DEVICE_PENDING")
    assert api.post("/api/v1/devices/D1/confirm", {"otp": "12345"}).body["error"]["field"] == "otp"
    assert api.post("/api/v1/devices/D1/confirm", {}).body["error"]["field"] == "otp"
    ok = api.post("/api/v1/devices/D1/confirm", {"otp": code_at(reg, clock.now)})
    assert ok.status == 200 and ok.body["data"] == {"device_id": "D1", "valid": True, "status": "active"}
    clock.advance(121)
    api.post("/api/v1/devices/register", {"device_id": "D2", "user_id": "u"})
    clock.advance(121)
    expired = api.post("/api/v1/devices/D2/confirm", {"otp": "123456"})
    assert (expired.status, expired.body["error"]["code"]) == (410, "ENROLLMENT_EXPIRED")


def test_simultaneous_confirmations_activate_once_and_count_every_failure(service, database, clock):
    reg = service.register("RACE", "alice", CTX, confirm=True)
    code = code_at(reg, clock.now)

    def confirm():
        try:
            return service.confirm("RACE", code, CTX).get("reason", "CONFIRMED")
        except errors.AlreadyConfirmed:
            return "ALREADY_CONFIRMED"

    outcomes = at_once(20, confirm)
    assert outcomes.count("CONFIRMED") == 1 and set(outcomes) <= {"CONFIRMED", "ALREADY_CONFIRMED"}
    assert len(audit_rows(database, action="DEVICE_CONFIRMED", success=True)) == 1

    other = service.register("BURST", "bob", CTX, confirm=True)
    wrong = [f"{n:06d}" for n in range(30) if f"{n:06d}" not in {code_at(other, clock.now, k) for k in (-1, 0, 1)}]
    codes = iter(wrong[:24])

    def guess():
        try:
            return service.confirm("BURST", next(codes), CTX)["reason"]
        except errors.DeviceLocked:
            return "DEVICE_LOCKED"

    outcomes = at_once(24, guess)
    assert outcomes.count("INVALID_CODE") == 5 and outcomes.count("DEVICE_LOCKED") == 19
    assert len(audit_rows(database, device_id="BURST", action="DEVICE_CONFIRMED", reason="INVALID_CODE")) == 5


# -- QR codes ----------------------------------------------------------------------------------------


def _svg_modules(svg: str) -> list[tuple[int, int]]:
    """The dark modules of segno's SVG (one path of 'M x y' moves and 'h n' horizontal runs, stroke 1 wide at
    y + 0.5): enough of a rasteriser to hand the image to a real decoder."""
    path = re.search(r""" d=['"]([^'"]+)['"]""", svg).group(1)
    x = y = 0.0
    cells = []
    for op, a, b in re.findall(r"([MmHhVv])\s*(-?[0-9.]+)(?:\s+(-?[0-9.]+))?", path):
        if op == "M":
            x, y = float(a), float(b)
        elif op == "m":
            x, y = x + float(a), y + float(b)
        elif op == "h":
            cells += [(int(x + i), int(y)) for i in range(int(float(a)))]
            x += float(a)
    return cells


@pytest.mark.parametrize("kind", ["png", "svg"])
def test_registration_returns_a_qr_code_that_decodes_to_the_otpauth_uri(api, kind):
    import io

    import zxingcpp
    from PIL import Image

    resp = api.post("/api/v1/devices/register", {"device_id": "QR-1", "user_id": "ana@example.com", "qr": kind})
    assert resp.status == 201
    data = resp.body["data"]
    prefix = {"png": "data:image/png;base64,", "svg": "data:image/svg+xml"}[kind]
    assert data["qr"].startswith(prefix)
    if kind == "png":
        image = Image.open(io.BytesIO(base64.b64decode(data["qr"].removeprefix(prefix))))
    else:
        from urllib.parse import unquote

        svg = unquote(data["qr"].split(",", 1)[1])
        cells = _svg_modules(svg)
        size = max(max(x for x, _ in cells), max(y for _, y in cells)) + 5
        image = Image.new("L", (size * 8, size * 8), 255)
        for x, y in cells:
            image.paste(0, (x * 8, y * 8, x * 8 + 8, y * 8 + 8))
    decoded = zxingcpp.read_barcodes(image)
    assert [d.text for d in decoded] == [data["otpauth_uri"]]
    assert data["otpauth_uri"].startswith("otpauth://totp/ana@example.com?secret=" + data["secret_base32"])


def test_a_qr_format_other_than_svg_or_png_is_refused(api):
    resp = api.post("/api/v1/devices/register", {"device_id": "QR-2", "user_id": "u", "qr": "gif"})
    assert (resp.status, resp.body["error"]["field"]) == (400, "qr")
    resp = api.post("/api/v1/devices/register", {"device_id": "QR-2", "user_id": "u", "confirm": "yes"})
    assert (resp.status, resp.body["error"]["field"]) == (400, "confirm")
    assert api.get("/api/v1/devices/QR-2").status == 404  # nothing half-written


# -- resync and drift ------------------------------------------------------------------------------


def test_resync_with_two_consecutive_codes_sets_a_drift_beyond_max_drift(service, database, clock):
    reg = service.register("FAST", "alice", CTX)
    now_step = totp.time_step(clock.now)
    ahead = now_step + 39  # the phone's clock is about 20 minutes fast
    assert service.verify("FAST", step_code(reg, ahead), CTX)["reason"] == "INVALID_CODE"  # too far for ±1
    answer = service.resync("FAST", step_code(reg, ahead), step_code(reg, ahead + 1), CTX)
    assert answer == {"device_id": "FAST", "resynced": True, "drift": 40}  # OTP_RESYNC_WINDOW's edge
    info = service.device_info("FAST")
    assert (info["drift"], info["failed_attempts"]) == (40, 0)  # a proven pair also clears the failures
    # the phone's next code is accepted, and tracking keeps the resynced offset (not cut to OTP_MAX_DRIFT)
    clock.advance(STEP)
    assert service.verify("FAST", step_code(reg, ahead + 2), CTX)["valid"] is True
    assert service.device_info("FAST")["drift"] == 40
    row = audit_rows(database, action="DEVICE_RESYNCED")[0]
    assert json.loads(row.additional_data) == {"offset": 40, "previous_drift": 0, "key_version": 1}


def test_resync_refuses_used_steps_and_counts_wrong_pairs(service, database, clock):
    reg = service.register("DEV", "alice", CTX)
    now_step = totp.time_step(clock.now)
    assert service.verify("DEV", step_code(reg, now_step), CTX)["valid"] is True
    # a pair ending at or before the accepted step would move the floor back: CVE-2019-12887
    old = service.resync("DEV", step_code(reg, now_step - 1), step_code(reg, now_step), CTX)
    assert old == {"device_id": "DEV", "resynced": False, "reason": "REPLAYED"}
    older = service.resync("DEV", step_code(reg, now_step - 11), step_code(reg, now_step - 10), CTX)
    assert older["reason"] == "REPLAYED"
    assert service.device_info("DEV")["failed_attempts"] == 0  # replays are refused, not counted
    # two codes that are not consecutive, or outside ±40 steps, are a wrong pair, counted
    apart = service.resync("DEV", step_code(reg, now_step + 3), step_code(reg, now_step + 5), CTX)
    far = service.resync("DEV", step_code(reg, now_step + 41), step_code(reg, now_step + 42), CTX)
    assert apart["reason"] == far["reason"] == "INVALID_CODE"
    assert service.device_info("DEV")["failed_attempts"] == 2
    with pytest.raises(errors.ValidationError):
        service.resync("DEV", "12345", step_code(reg, now_step), CTX)
    assert [r.reason for r in audit_rows(database, action="DEVICE_RESYNCED")] == [
        "REPLAYED",
        "REPLAYED",
        "INVALID_CODE",
        "INVALID_CODE",
    ]


def test_simultaneous_wrong_resyncs_get_exactly_the_failure_budget(service, database, clock):
    reg = service.register("DEV", "alice", CTX)
    now_step = totp.time_step(clock.now)
    pairs = iter([(step_code(reg, now_step + k), step_code(reg, now_step + k + 2)) for k in range(-15, 15)])

    def attempt():
        first, second = next(pairs)
        try:
            return service.resync("DEV", first, second, CTX)["reason"]
        except errors.DeviceLocked:
            return "DEVICE_LOCKED"

    outcomes = at_once(24, attempt)
    assert outcomes.count("INVALID_CODE") == 5 and outcomes.count("DEVICE_LOCKED") == 19
    assert service.device_info("DEV")["failed_attempts"] == 5


def test_a_corrected_phone_clock_is_recentred_not_locked_out(service, database, clock):
    reg = service.register("DEV", "alice", CTX)
    now_step = totp.time_step(clock.now)
    service.resync("DEV", step_code(reg, now_step + 5), step_code(reg, now_step + 6), CTX)  # 3 minutes fast
    clock.advance(10 * STEP)  # ... then its owner sets the clock right
    now_step = totp.time_step(clock.now)
    assert service.verify("DEV", step_code(reg, now_step), CTX)["valid"] is True
    assert service.device_info("DEV")["drift"] == 0
    row = audit_rows(database, action="OTP_VERIFICATION")[-1]
    assert json.loads(row.additional_data)["recentred_from"] == 6


def test_drift_reset_and_unlock_forget_the_offset(service, database, clock):
    reg = service.register("DEV", "alice", CTX)
    now_step = totp.time_step(clock.now)
    service.resync("DEV", step_code(reg, now_step + 7), step_code(reg, now_step + 8), CTX)
    assert service.reset_drift("DEV", CTX) == {"device_id": "DEV", "drift": 0, "previous_drift": 8}
    info = service.device_info("DEV")
    assert (info["drift"], info["failed_attempts"], info["locked_until"]) == (0, 0, None)
    service.resync("DEV", step_code(reg, now_step + 20), step_code(reg, now_step + 21), CTX)
    service.unlock("DEV", CTX)
    assert service.device_info("DEV")["drift"] == 0
    rows = audit_rows(database, action="DRIFT_RESET") + audit_rows(database, action="DEVICE_UNLOCKED")
    assert [json.loads(r.additional_data)["previous_drift"] for r in rows] == [8, 21]
    with pytest.raises(errors.DeviceNotFound):
        service.reset_drift("GHOST", CTX)


# -- recovery codes -----------------------------------------------------------------------------


def test_recovery_codes_are_one_time_and_stored_only_as_keyed_hashes(service, database, clock):
    issued = service.issue_recovery_codes("alice", CTX)
    codes = issued["codes"]
    assert len(codes) == len(set(codes)) == 10
    assert all(re.fullmatch(r"[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}", c) for c in codes)
    with database.connection_context():
        row = RecoveryCodes.get_by_id((1, "alice"))
    stored = json.loads(row.codes)
    assert len(stored) == 10 and all(len(h) == 64 and used is None for h, used in stored)
    assert not any(c in row.codes or c.replace("-", "") in row.codes for c in codes)
    typed = codes[3].replace("-", "").lower()  # as a person types it
    assert service.use_recovery_code("alice", typed, CTX) == {"user_id": "alice", "valid": True, "remaining": 9}
    assert service.use_recovery_code("alice", codes[3], CTX) == {
        "user_id": "alice",
        "valid": False,
        "reason": "REPLAYED",
    }
    assert service.user_devices("alice")["recovery_codes"]["remaining"] == 9
    with pytest.raises(errors.ValidationError):
        service.use_recovery_code("alice", "not-a-code", CTX)
    with pytest.raises(errors.NoRecoveryCodes):
        service.use_recovery_code("bob", codes[0], CTX)  # bound to its user
    assert service.use_recovery_code("alice", codes[0], CTX)["valid"] is True
    rows = audit_rows(database, user_id="alice")
    assert [(r.action, r.success, r.reason) for r in rows] == [
        ("RECOVERY_CODES_ISSUED", True, None),
        ("RECOVERY_CODE_VERIFICATION", True, None),
        ("RECOVERY_CODE_VERIFICATION", False, "REPLAYED"),
        ("RECOVERY_CODE_VERIFICATION", True, None),
    ]


def test_an_attempt_at_a_user_with_no_recovery_codes_names_no_one(service, database):
    """It is audited (the address and client of whoever tried), but without the user id: the service holds
    nothing of that user, and the attempt may have waited on a set an erasure was deleting (attack review)."""
    with pytest.raises(errors.NoRecoveryCodes):
        service.use_recovery_code("bob", "2222-3333-4444", CTX)
    rows = audit_rows(database, action="RECOVERY_CODE_VERIFICATION")
    assert [(r.reason, r.user_id, r.ip_address) for r in rows] == [("NO_RECOVERY_CODES", None, CTX.ip_address)]
    assert service.verify_audit(record=False).intact


def test_wrong_recovery_codes_lock_the_set_and_a_new_set_replaces_the_old(service, database, clock):
    old = service.issue_recovery_codes("alice", CTX)["codes"]
    wrong = "2222-3333-4444"
    answers = [service.use_recovery_code("alice", wrong, CTX) for _ in range(5)]
    assert [a["reason"] for a in answers] == ["INVALID_CODE"] * 5 and "locked_until" in answers[-1]
    with pytest.raises(errors.RecoveryCodesLocked) as locked:
        service.use_recovery_code("alice", old[0], CTX)
    assert locked.value.status == 429 and locked.value.headers["Retry-After"] == "60"
    new = service.issue_recovery_codes("alice", CTX)["codes"]
    assert service.use_recovery_code("alice", old[0], CTX)["reason"] == "INVALID_CODE"  # the old set is gone
    assert service.use_recovery_code("alice", new[0], CTX)["remaining"] == 9
    listing = service.user_devices("alice")["recovery_codes"]
    assert (listing["remaining"], listing["failed_attempts"], listing["locked_until"]) == (9, 0, None)
    assert len(audit_rows(database, action="RECOVERY_CODES_LOCKED")) == 1


def test_simultaneous_uses_of_one_recovery_code_accept_it_once(service, database):
    codes = service.issue_recovery_codes("alice", CTX)["codes"]
    outcomes = at_once(16, lambda: service.use_recovery_code("alice", codes[0], CTX).get("reason", "ACCEPTED"))
    assert sorted(outcomes) == ["ACCEPTED"] + ["REPLAYED"] * 15
    wrong = iter(f"2222-3333-{n:04d}".replace("0", "A").replace("1", "B") for n in range(24))

    def guess():
        try:
            return service.use_recovery_code("alice", next(wrong), CTX)["reason"]
        except errors.RecoveryCodesLocked:
            return "LOCKED"

    outcomes = at_once(24, guess)
    assert outcomes.count("INVALID_CODE") == 5 and outcomes.count("LOCKED") == 19


def test_simultaneous_first_issues_leave_one_set(service, database):
    sets = at_once(8, lambda: service.issue_recovery_codes("newbie", CTX)["codes"])
    listing = service.user_devices("newbie")["recovery_codes"]
    assert listing["remaining"] == 10 and len(audit_rows(database, action="RECOVERY_CODES_ISSUED")) == 8
    # one whole set is stored: the one written last, not a mixture
    key = service.keyring.purpose_key("recovery-codes")
    with database.connection_context():
        stored = [h for h, _ in json.loads(RecoveryCodes.get_by_id((1, "newbie")).codes)]
    assert sum(stored == [recovery.code_hash(key, "newbie", c) for c in codes] for codes in sets) == 1


# -- forensic lookup ----------------------------------------------------------------------------------


def test_code_lookup_finds_when_a_code_was_valid_without_testing_live_codes(service, database, clock):
    from datetime import datetime

    reg = service.register("DEV", "alice", CTX)
    typed_at = clock.now
    code = code_at(reg, typed_at)
    assert service.verify("DEV", code, CTX)["valid"] is True
    start, end = to_datetime(typed_at - 3600), to_datetime(typed_at + 3600)
    found = service.lookup_code("DEV", code, start, end, CTX)
    step = totp.time_step(typed_at)
    assert {
        "step": step,
        "valid_from": to_datetime(step * STEP).isoformat() + "Z",
        "valid_to": to_datetime((step + 1) * STEP).isoformat() + "Z",
    } in found["matches"]
    assert all(m["step"] <= step for m in found["matches"])
    # the next codes could still be accepted: they are not searched, whatever the range
    live = code_at(reg, typed_at, 1)
    answer = service.lookup_code("DEV", live, start, end, CTX)
    assert all(m["step"] <= step for m in answer["matches"])
    assert datetime.fromisoformat(answer["searched_to"].rstrip("Z")) <= to_datetime((step + 1) * STEP)
    rows = audit_rows(database, action="CODE_LOOKUP")
    assert len(rows) == 2 and rows[0].actor == "app" and code not in (rows[0].additional_data or "")
    with pytest.raises(errors.DeviceNotFound):
        service.lookup_code("GHOST", code, start, end, CTX)


def test_code_lookup_over_http_checks_its_range(api, clock):
    reg = api.post("/api/v1/devices/register", {"device_id": "L1", "user_id": "u"}).body["data"]
    code = code_at(reg, clock.now)
    base = {"otp": code, "from": "2025-11-20T00:00:00Z"}
    too_long = api.post("/api/v1/devices/L1/code-lookup", base | {"to": "2025-11-27T00:00:01Z"})
    assert (too_long.status, too_long.body["error"]["field"]) == (400, "to")
    backwards = api.post("/api/v1/devices/L1/code-lookup", base | {"to": "2025-11-19T00:00:00Z"})
    assert (backwards.status, backwards.body["error"]["field"]) == (400, "to")
    naive = api.post("/api/v1/devices/L1/code-lookup", base | {"to": "2025-11-21T00:00:00"})
    assert (naive.status, naive.body["error"]["field"]) == (400, "to")
    ok = api.post("/api/v1/devices/L1/code-lookup", base | {"to": "2025-11-26T23:59:59+00:00"})
    assert ok.status == 200 and ok.body["data"]["device_id"] == "L1"


def test_every_server_process_sweeps_expired_enrolments(settings, database, clock):
    """The sweep `serve` runs in each process records expiries nobody asked about."""
    import asyncio

    from otp_service.http.app import build_state
    from otp_service.http.server import expire_enrolments

    state = build_state(settings, database, clock)

    async def run():
        state.service.start()
        await state.service.register("IDLE", "alice", CTX, confirm=True)
        clock.advance(601)
        sweeping = asyncio.ensure_future(expire_enrolments(state, every=0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if audit_rows(database, action="ENROLLMENT_EXPIRED"):
                break
        sweeping.cancel()

    try:
        asyncio.run(run())
    finally:
        state.service.close()
    rows = audit_rows(database, action="ENROLLMENT_EXPIRED")
    assert [(r.device_id, r.actor) for r in rows] == [("IDLE", "otp-service")]


# -- what the attack review found ---------------------------------------------------------------------


def test_a_qr_code_that_cannot_be_made_fails_the_registration_before_anything_is_written(api):
    long = {"device_id": "QR-BIG", "user_id": "用户" * 127, "issuer": "公司" * 32, "qr": "png"}
    resp = api.post("/api/v1/devices/register", long)
    assert (resp.status, resp.body["error"]["code"], resp.body["error"]["field"]) == (400, "VALIDATION_ERROR", "qr")
    assert api.get("/api/v1/devices/QR-BIG").status == 404  # no device whose key nobody was given
    assert api.post("/api/v1/devices/register", {**long, "qr": None}).status == 201  # without a QR code it fits


@pytest.mark.parametrize(
    "start,end",
    [
        ("1969-12-31T23:00:00Z", "1970-01-01T01:00:00Z"),
        ("1970-01-01T00:00:00+01:00", "1970-01-01T03:00:00Z"),
        ("0001-01-01T00:00:00+14:00", "0001-01-02T00:00:00Z"),
        ("9999-12-30T00:00:00Z", "9999-12-31T00:00:00-12:00"),
        ("2026-11-26T10:00:00Z", "2026-11-26T23:59:60Z"),
    ],
)
def test_code_lookup_refuses_times_outside_what_totp_counts(api, start, end):
    api.post("/api/v1/devices/register", {"device_id": "L2", "user_id": "u"})
    resp = api.post("/api/v1/devices/L2/code-lookup", {"otp": "123456", "from": start, "to": end})
    assert resp.status == 400 and resp.body["error"]["code"] == "VALIDATION_ERROR"


def test_code_lookup_does_not_depend_on_the_servers_time_zone(service, clock, monkeypatch):
    import time

    reg = service.register("DEV", "alice", CTX)
    code = code_at(reg, clock.now)
    assert service.verify("DEV", code, CTX)["valid"] is True
    start, end = to_datetime(clock.now - 600), to_datetime(clock.now + 600)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        found = service.lookup_code("DEV", code, start, end, CTX)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert totp.time_step(clock.now) in [m["step"] for m in found["matches"]]
    assert found["from"] == start.isoformat() + "Z"


def test_an_expired_enrolment_says_so_to_every_later_request(service, clock):
    reg = service.register("LATE", "alice", CTX, confirm=True)
    service.register("DROPPED", "alice", CTX, confirm=True)
    service.deactivate("DROPPED", CTX)  # ended by an operator before its deadline: not an expiry
    clock.advance(601)
    assert service.expire_pending() == 1
    for attempt in (service.confirm, service.verify):
        with pytest.raises(errors.EnrollmentExpired):
            attempt("LATE", code_at(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceInactive):
        service.confirm("DROPPED", "123456", CTX)
    assert service.device_info("DROPPED")["enrollment_expired"] is False
    assert service.device_info("LATE")["enrollment_expired"] is True


def test_code_lookups_are_limited_per_client(make_server, db_url, clock):
    from tests.conftest import settings_for

    api = make_server(settings_for(db_url, RATE_LIMIT_CODE_LOOKUP="2/hour")).client
    api.post("/api/v1/devices/register", {"device_id": "L3", "user_id": "u"})
    body = {"otp": "123456", "from": "2025-11-24T00:00:00Z", "to": "2025-11-24T12:00:00Z"}
    statuses = [api.post("/api/v1/devices/L3/code-lookup", body).status for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_a_recovery_code_has_one_spelling(service):
    codes = service.issue_recovery_codes("alice", CTX)["codes"]
    lookalike = codes[0].replace("S", "\u017f") if "S" in codes[0] else "\u017f" + codes[0][1:]
    with pytest.raises(errors.ValidationError):
        service.use_recovery_code("alice", lookalike, CTX)
    with pytest.raises(errors.NoRecoveryCodes) as none:
        service.use_recovery_code("nobody", codes[0], CTX)
    assert "'nobody'" in none.value.message
