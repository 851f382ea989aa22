"""One regression test per published advisory of our peers that could apply to us, named after it.
The README's security section has the table: advisory, what went wrong there, the test here."""

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors
from tests.helpers import at_once, audit_rows, code_at, wrong_code

CTX = RequestContext("198.51.100.3", "advisory-tests", None)
VERIFY, REGISTER = "/api/v1/otp/verify", "/api/v1/devices/register"


def test_hcsec_2025_17_cve_2025_55000_another_spelling_of_a_code_is_not_a_second_code(api, clock):
    """Vault accepted a used TOTP code again when it was sent with spaces: the used-code check compared
    strings. Here a code has exactly one spelling; every other is refused before any check."""
    reg = api.post(REGISTER, {"device_id": "SPELL", "user_id": "u"}).body["data"]
    code = code_at(reg, clock.now)
    assert api.post(VERIFY, {"device_id": "SPELL", "otp": code}).body["data"]["valid"] is True
    spellings = [
        f"{code[:3]} {code[3:]}",
        f" {code}",
        f"{code} ",
        f"+{code}",
        f"0{code}",
        code.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
        f"{code}\n",
        float(code),
    ]
    for spelling in spellings:
        resp = api.post(VERIFY, {"device_id": "SPELL", "otp": spelling})
        assert resp.status == 400 and resp.body["error"]["code"] == "VALIDATION_ERROR", spelling
    if code[0] != "0":  # as a JSON number it is the same code, and refused as a replay
        assert api.post(VERIFY, {"device_id": "SPELL", "otp": int(code)}).body["data"]["reason"] == "REPLAYED"


def test_ghsa_qq2p_4282_cfc5_and_keycloak_13867_one_code_accepted_once_under_concurrency(service, clock, database):
    """Concurrent logins with one code were all accepted (a check-then-set race). Here acceptance is a
    write guarded by the state it was decided on: one wins, the others see the newer state."""
    reg = service.register("RACE", "u", CTX)
    code = code_at(reg, clock.now)
    assert sorted(at_once(24, lambda: service.verify("RACE", code, CTX)["valid"])) == [False] * 23 + [True]
    assert len(audit_rows(database, action="OTP_VERIFICATION", success=True)) == 1


def test_multiotp_261_a_drifting_window_does_not_let_a_code_replay(service, clock):
    """multiOTP kept a fractional clock offset, and re-centring its window let a used code match again.
    Here the offset is whole steps and the replay floor is the step, whatever the window's centre."""
    reg = service.register("DRIFT", "u", CTX)
    ahead = code_at(reg, clock.now, 1)  # the phone runs one step fast
    assert service.verify("DRIFT", ahead, CTX)["valid"] is True
    for _ in range(3):  # the server's clock catches up, and the window re-centres around the device
        clock.advance(10)
        assert service.verify("DRIFT", ahead, CTX) == {"device_id": "DRIFT", "valid": False, "reason": "REPLAYED"}


def test_cve_2019_12887_no_operation_moves_the_replay_floor_back(service, clock, database):
    """privacyIDEA's resynchronisation could set a token's counter back, making used codes valid again.
    Here nothing an operator can do — unlock, failures, a deactivation — lowers the floor; a new
    registration of the id gets a new key, so the old codes mean nothing."""
    reg = service.register("FLOOR", "u", CTX)
    used = code_at(reg, clock.now)
    assert service.verify("FLOOR", used, CTX)["valid"] is True
    service.verify("FLOOR", wrong_code(reg, clock.now), CTX)
    service.unlock("FLOOR", CTX)
    assert service.verify("FLOOR", used, CTX)["reason"] == "REPLAYED"
    service.deactivate("FLOOR", CTX)
    new = service.register("FLOOR", "u", CTX)
    assert new["derived_key"] != reg["derived_key"]
    assert service.verify("FLOOR", used, CTX)["valid"] is False or used == code_at(new, clock.now)


@pytest.mark.parametrize(
    "options",
    [
        {"digits": 10},
        {"digits": 5},
        {"digits": 0},
        {"interval": 1},
        {"interval": 86400},
        {"interval": 10**12},
        {"digits": "6"},
        {"interval": 30.5},
        {"algorithm": "MD5"},
    ],
)
def test_ghsa_g7m4_839x_ch6v_digits_and_period_are_bounded(api, options):
    """A library took digits and period from an otpauth input unchecked (huge or zero values). Here they
    are bounded: 6–8 digits, 15–300 s, SHA1/256/512, whole numbers only."""
    resp = api.post(REGISTER, {"device_id": "BOUND", "user_id": "u", **options})
    assert resp.status == 400 and resp.body["error"]["code"] == "VALIDATION_ERROR"
    assert resp.body["error"]["field"] == next(iter(options))


def test_cve_2018_14657_brute_force_protection_holds_on_every_path(api, service, clock):
    """Keycloak skipped its brute-force protection on one login path. Here the failure count is part of
    the one rule every path applies: the HTTP API and the service called directly lock alike."""
    reg_http = api.post(REGISTER, {"device_id": "BF-HTTP", "user_id": "u"}).body["data"]
    for _ in range(5):
        api.post(VERIFY, {"device_id": "BF-HTTP", "otp": wrong_code(reg_http, clock.now)})
    locked = api.post(VERIFY, {"device_id": "BF-HTTP", "otp": code_at(reg_http, clock.now)})
    assert locked.status == 429 and locked.body["error"]["code"] == "DEVICE_LOCKED"
    reg = service.register("BF-DIRECT", "u", CTX)
    for _ in range(5):
        service.verify("BF-DIRECT", wrong_code(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceLocked):
        service.verify("BF-DIRECT", code_at(reg, clock.now), CTX)
