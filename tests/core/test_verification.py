"""The verification rule on its own: `verification.decide` is pure, so each case is a state in and a
transition out — no database, no clock. The RFC 6238 Appendix B key and times give the codes."""

from datetime import timedelta

import pytest

from otp_service.core import totp
from otp_service.core.transitions import DeviceState, to_datetime
from otp_service.core.verification import Policy, decide, lock_seconds
from tests.rfc_vectors import RFC6238_SEEDS

KEY = RFC6238_SEEDS["SHA1"]
NOW = 1_111_111_109.0  # RFC 6238 Appendix B: 07081804 at 8 digits
POLICY = Policy(window=1, max_drift=10, max_failures=5, lockout_seconds=60)
AT = to_datetime(NOW)
FRESH = DeviceState(
    "D", "alice", "00", 1, "ff", 8, 30, "SHA1", None, True, AT - timedelta(days=1), None, 0, None, -1, 0, 0, None, 3
)


def test_the_rfc_code_is_accepted_and_becomes_the_replay_floor():
    t = decide("D", FRESH, KEY, "07081804", NOW, POLICY)
    assert t.verdict == "ACCEPTED" and t.expected_version == 3
    assert (t.after.last_step, t.after.usage_count, t.after.last_used, t.after.version) == (
        totp.time_step(NOW),
        1,
        AT,
        4,
    )
    assert [(e.action, e.success, e.data) for e in t.events] == [
        ("OTP_VERIFICATION", True, {"offset": 0, "drift": 0, "key_version": 1})
    ]
    again = decide("D", t.after, KEY, "07081804", NOW + 1, POLICY)
    assert again.verdict == "REPLAYED" and again.after is None  # refused, not counted


def test_the_failure_that_reaches_the_budget_locks_and_says_until_when():
    state, verdicts = FRESH, []
    for _ in range(5):
        t = decide("D", state, KEY, "00000000", NOW, POLICY)
        verdicts.append((t.verdict, t.after.failed_attempts, [e.action for e in t.events]))
        state = t.after
    assert verdicts[-1] == ("INVALID_CODE", 5, ["OTP_VERIFICATION", "DEVICE_LOCKED"])
    assert all(v[2] == ["OTP_VERIFICATION"] for v in verdicts[:-1])
    assert state.locked_until == AT + timedelta(seconds=60) and t.details == {"locked_until": state.locked_until}


def test_a_locked_device_refuses_even_the_right_code_without_checking_or_counting_it():
    locked = FRESH._replace(failed_attempts=5, locked_until=AT + timedelta(seconds=1))
    t = decide("D", locked, KEY, "07081804", NOW, POLICY)
    assert (t.verdict, t.after, t.details) == (
        "DEVICE_LOCKED",
        None,
        {"locked_until": locked.locked_until, "hard": False},
    )
    after_expiry = decide("D", locked, KEY, "00000000", NOW + 1, POLICY)
    assert after_expiry.after.failed_attempts == 6 and after_expiry.after.locked_until == to_datetime(NOW + 1 + 120)


@pytest.mark.parametrize(
    "state, key, verdict",
    [
        (None, KEY, "DEVICE_NOT_FOUND"),
        (FRESH._replace(is_active=False), KEY, "DEVICE_INACTIVE"),
        (FRESH, None, "KEY_UNAVAILABLE"),
    ],
)
def test_refusals_are_audited_and_change_nothing(state, key, verdict):
    t = decide("D", state, key, "07081804", NOW, POLICY)
    assert (t.verdict, t.after, [(e.success, e.reason) for e in t.events]) == (verdict, None, [(False, verdict)])


def test_a_malformed_code_records_nothing():
    t = decide("D", FRESH, KEY, "070818", NOW, POLICY)  # 6 digits for an 8-digit device
    assert t.verdict == "MALFORMED_CODE" and t.empty and t.details["error"].code == "VALIDATION_ERROR"


def test_the_lock_schedule_doubles_to_an_hour():
    assert [lock_seconds(n, 5, 60) for n in range(4, 13)] == [0, 60, 120, 240, 480, 960, 1920, 3600, 3600]
