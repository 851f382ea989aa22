"""The engine: a decision is applied only on the state it was made on, and decided again when that state
has moved on. First its loop alone (`settle`, pure), then against a real database where another "process"
(a second service on the same database, with its own cache) changes the device behind the first one's back."""

import json
import threading

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors
from otp_service.core.keys import Keyring
from otp_service.core.lifecycle import decide_unlock
from otp_service.core.transitions import UNKNOWN, DeviceState, to_datetime
from otp_service.persistence.engine import OPTIMISTIC_ATTEMPTS, Apply, ApplyLocked, Plan, Read, settle
from otp_service.persistence.store import PostgresStore
from otp_service.service import OtpService
from tests.conftest import T0
from tests.helpers import audit_rows, code_at, journal_for, wrong_code

CTX = RequestContext("198.51.100.1", "tests", "r")
AT = to_datetime(T0)
STATE = DeviceState(
    "D", "alice", "00", 1, "ff", 6, 30, "SHA1", None, True, AT, None, 0, None, -1, 0, 3, None, version=7
)


def unlock_plan() -> Plan:
    return Plan("D", lambda state: decide_unlock("D", state, AT), CTX, lambda t: {})


def test_settle_applies_a_decision_made_on_a_known_state_in_one_write():
    steps = settle(unlock_plan(), STATE, optimistic=True)
    op = next(steps)
    assert isinstance(op, Apply) and op.transition.expected_version == 7 and op.transition.after.version == 8
    with pytest.raises(StopIteration) as done:
        steps.send((True, None))
    assert done.value.value is op.transition


def test_settle_reads_first_when_nothing_is_known():
    steps = settle(unlock_plan(), UNKNOWN, optimistic=True)
    assert next(steps) == Read((1, "D"))  # the device's id within the default tenant
    assert steps.send(STATE).transition.before is STATE


def test_settle_decides_again_on_the_state_that_won_the_race():
    steps = settle(unlock_plan(), STATE, optimistic=True)
    next(steps)
    newer = STATE._replace(failed_attempts=5, version=9)
    op = steps.send((False, newer))
    assert isinstance(op, Apply) and op.transition.before is newer and op.transition.expected_version == 9


def test_settle_takes_the_row_lock_after_losing_every_optimistic_race():
    steps = settle(unlock_plan(), STATE, optimistic=True)
    op = next(steps)
    for n in range(OPTIMISTIC_ATTEMPTS - 1):
        op = steps.send((False, STATE._replace(version=10 + n)))
        assert isinstance(op, Apply)
    op = steps.send((False, STATE._replace(version=99)))
    assert isinstance(op, ApplyLocked) and op.key == (1, "D")


def test_settle_without_optimism_goes_straight_to_the_row_lock():
    assert isinstance(next(settle(unlock_plan(), STATE, optimistic=False)), ApplyLocked)


@pytest.fixture
def other(settings, database, clock):
    """A second process's service: same database, its own cache."""
    return OtpService(settings, Keyring(settings.master_secrets, settings.master_secret_version), database, clock=clock)


def warm(service, device_id, reg, clock):
    """Verify once so the device's state is known to this service; then a step later."""
    assert service.verify(device_id, code_at(reg, clock.now), CTX)["valid"]
    clock.advance(30)


def test_answers_and_audit_rows(service, database, clock):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    assert service.verify("D", code_at(reg, clock.now, 1), CTX) == {"device_id": "D", "valid": True}
    assert service.verify("D", wrong_code(reg, clock.now), CTX) == {
        "device_id": "D",
        "valid": False,
        "reason": "INVALID_CODE",
    }
    rows = audit_rows(database, action="OTP_VERIFICATION")
    assert [(r.success, r.reason, r.user_id, r.ip_address, r.request_id) for r in rows[1:]] == [
        (True, None, "alice", "198.51.100.1", "r"),
        (False, "INVALID_CODE", "alice", "198.51.100.1", "r"),
    ]
    assert json.loads(rows[1].additional_data) == {"offset": 1, "drift": 1, "key_version": 1}
    assert json.loads(rows[2].additional_data) == {"failed_attempts": 1}
    info = service.device_info("D")
    assert info["usage_count"] == 2 and info["failed_attempts"] == 1


def test_replay_seen_by_another_process_is_refused(service, other, clock):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    warm(other, "D", reg, clock)
    code = code_at(reg, clock.now)
    assert other.verify("D", code, CTX)["valid"] is True
    assert service.verify("D", code, CTX) == {"device_id": "D", "valid": False, "reason": "REPLAYED"}


def test_reregistration_elsewhere_is_seen(service, other, clock):
    old = service.register("D", "alice", CTX)
    warm(service, "D", old, clock)
    other.deactivate("D", CTX)
    new = other.register("D", "alice", CTX, digits=8)
    # 8 digits: malformed for the 6-digit state this service last saw, a wrong code for the device now.
    assert service.verify("D", code_at(old, clock.now)[:6] + "00", CTX)["valid"] is False
    clock.advance(30)
    assert service.verify("D", code_at(new, clock.now), CTX)["valid"] is True
    assert service.device_info("D")["digits"] == 8


def test_deactivation_elsewhere_is_seen(service, other, clock):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    other.deactivate("D", CTX)
    with pytest.raises(errors.DeviceInactive):
        service.verify("D", code_at(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceInactive):
        service.verify("D", wrong_code(reg, clock.now), CTX)


def test_reactivation_elsewhere_is_seen_by_a_deactivation(service, other, clock, database):
    """A deactivation decided on a stale 'already deactivated' state must not answer from it."""
    service.register("D", "alice", CTX)
    service.deactivate("D", CTX)
    other.register("D", "bob", CTX)
    assert service.deactivate("D", CTX)["deactivated_at"] is not None
    assert service.device_info("D")["is_active"] is False
    assert [r.success for r in audit_rows(database, action="DEVICE_DEACTIVATED")] == [True, True]


def test_lock_set_elsewhere_is_seen(service, other, clock, database):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    for _ in range(5):
        other.verify("D", wrong_code(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceLocked):
        service.verify("D", code_at(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceLocked):
        service.verify("D", wrong_code(reg, clock.now), CTX)
    assert service.device_info("D")["failed_attempts"] == 5


def test_failures_from_two_processes_share_one_budget(service, other, clock, database):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    warm(other, "D", reg, clock)
    for n in range(5):
        (service, other)[n % 2].verify("D", wrong_code(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceLocked):
        service.verify("D", wrong_code(reg, clock.now), CTX)
    failures = [json.loads(r.additional_data)["failed_attempts"] for r in audit_rows(database, reason="INVALID_CODE")]
    assert failures == [1, 2, 3, 4, 5] and len(audit_rows(database, action="DEVICE_LOCKED")) == 1


def test_drift_learned_elsewhere_is_picked_up(service, other, clock, database):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    warm(other, "D", reg, clock)
    assert other.verify("D", code_at(reg, clock.now, 1), CTX)["valid"]  # other learns drift +1
    clock.advance(60)
    # Two steps ahead: outside ±1 around this service's last seen offset 0, inside ±1 around the stored +1.
    assert service.verify("D", code_at(reg, clock.now, 2), CTX)["valid"] is True
    assert service.device_info("D")["last_used"] is not None


@pytest.mark.postgres
def test_one_code_across_two_processes_and_many_threads_is_accepted_once(service, other, clock, database):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    warm(other, "D", reg, clock)
    for _round in range(5):
        code = code_at(reg, clock.now)
        barrier = threading.Barrier(24)
        results = []

        def attempt(svc, code=code, barrier=barrier, results=results):
            barrier.wait()
            results.append(svc.verify("D", code, CTX)["valid"])

        threads = [threading.Thread(target=attempt, args=(svc,)) for svc in (service, other) * 12]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False] * 23 + [True]
        clock.advance(30)
    assert len(audit_rows(database, action="OTP_VERIFICATION", success=True)) == 2 + 5


class Overtaken(PostgresStore):
    """The real store, with another process's wrong code landing just before each optimistic write."""

    def __init__(self, database, rival, reg, clock):
        super().__init__(database, journal_for(database))
        self.rival, self.reg, self.clock, self.overtaken = rival, reg, clock, 0

    def apply(self, transition, ctx):
        optimistic = not self.database.in_transaction()  # apply_locked holds the row: nobody overtakes it
        if optimistic and transition.before is not None:
            self.overtaken += 1
            self.rival.verify("D", wrong_code(self.reg, self.clock.now), CTX)
        return super().apply(transition, ctx)


@pytest.mark.postgres
def test_a_device_overtaken_at_every_attempt_is_settled_under_the_row_lock(settings, other, clock, database):
    service = OtpService(settings, Keyring(settings.master_secrets, 1), database, clock=clock)  # blocking path
    reg = service.register("D", "alice", CTX)
    service.store = service.engine.store = Overtaken(database, other, reg, clock)
    assert service.verify("D", code_at(reg, clock.now), CTX) == {"device_id": "D", "valid": True}
    # Each lost race was decided again; after the last, the row lock: the acceptance applied on the
    # state the rival's failures left, so it reset their count.
    assert service.store.overtaken == OPTIMISTIC_ATTEMPTS
    failures = [json.loads(r.additional_data)["failed_attempts"] for r in audit_rows(database, reason="INVALID_CODE")]
    assert failures == [1, 2, 3, 4]
    assert service.device_info("D")["failed_attempts"] == 0


def test_warm_cache_loads_recent_active_devices_and_verification_uses_it(service, other, clock, database):
    regs = {d: service.register(d, "alice", CTX) for d in ("A", "B", "C")}
    service.deactivate("C", CTX)
    assert other.warm_cache() == 2 and {d for d in "ABC" if other.engine.cache.get((1, d))} == {"A", "B"}
    assert other.warm_cache(limit=1) == 1
    assert other.verify("A", code_at(regs["A"], clock.now), CTX)["valid"] is True


def test_every_command_leaves_the_state_it_applied_in_the_cache(service, clock):
    reg = service.register("N", "alice", CTX, digits=8)
    assert service.engine.cache.get((1, "N")).digits == 8 and service.engine.cache.get((1, "N")).version == 0
    service.verify("N", code_at(reg, clock.now), CTX)
    assert service.engine.cache.get((1, "N")).version == 1 and service.engine.cache.get((1, "N")).usage_count == 1
    service.deactivate("N", CTX)
    assert service.engine.cache.get((1, "N")).is_active is False
