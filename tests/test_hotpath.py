"""The cached hot path must never answer differently from the full path, however stale its cache:
each case below makes another "process" (a second service on the same database) change the device
behind the first one's back."""

import json
import threading

import pytest

from otp_service import errors
from otp_service.keys import Keyring
from otp_service.service import OtpService, RequestContext
from tests.helpers import audit_rows, code_at, wrong_code

CTX = RequestContext("198.51.100.1", "tests", "r")


@pytest.fixture
def other(settings, database, clock):
    """A second process's service: same database, its own cache."""
    return OtpService(settings, Keyring(settings.master_secrets, settings.master_secret_version), database, clock=clock)


def warm(service, device_id, reg, clock):
    """Verify once so the device is cached; return the step used."""
    assert service.verify(device_id, code_at(reg, clock.now), CTX)["valid"]
    assert service.devices.get(device_id) is not None
    clock.advance(30)


def test_hot_path_answers_and_audits_like_the_full_path(service, database, clock):
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
    assert service.device_info("D")["usage_count"] == 2 and service.device_info("D")["failed_attempts"] == 1


def test_replay_seen_by_another_process_is_refused(service, other, clock):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    warm(other, "D", reg, clock)
    code = code_at(reg, clock.now)
    assert other.verify("D", code, CTX)["valid"] is True
    assert service.verify("D", code, CTX) == {"device_id": "D", "valid": False, "reason": "REPLAYED"}


def test_reregistration_elsewhere_invalidates_the_cached_key(service, other, clock):
    old = service.register("D", "alice", CTX)
    warm(service, "D", old, clock)
    other.deactivate("D", CTX)
    new = other.register("D", "alice", CTX, digits=8)
    assert service.verify("D", code_at(old, clock.now)[:6] + "00", CTX)["valid"] is False  # an 8-digit wrong code
    clock.advance(30)
    assert service.verify("D", code_at(new, clock.now), CTX)["valid"] is True
    assert service.devices.get("D").digits == 8


def test_deactivation_elsewhere_is_seen(service, other, clock):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    other.deactivate("D", CTX)
    with pytest.raises(errors.DeviceInactive):
        service.verify("D", code_at(reg, clock.now), CTX)
    with pytest.raises(errors.DeviceInactive):
        service.verify("D", wrong_code(reg, clock.now), CTX)


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


def test_the_failure_that_locks_takes_the_full_path(service, database, clock):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    for _ in range(5):
        service.verify("D", wrong_code(reg, clock.now), CTX)
    assert len(audit_rows(database, action="DEVICE_LOCKED")) == 1
    assert service.device_info("D")["locked_until"] is not None


def test_drift_learned_elsewhere_is_picked_up(service, other, clock, database):
    reg = service.register("D", "alice", CTX)
    warm(service, "D", reg, clock)
    warm(other, "D", reg, clock)
    assert other.verify("D", code_at(reg, clock.now, 1), CTX)["valid"]  # other learns drift +1
    clock.advance(60)
    # Two steps ahead: outside ±1 around this process's cached offset 0, inside ±1 around the stored +1.
    assert service.verify("D", code_at(reg, clock.now, 2), CTX)["valid"] is True
    assert service.devices.get("D").drift == 2


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


def test_warm_cache_loads_recent_active_devices_and_verification_uses_it(service, other, clock, database):
    regs = {d: service.register(d, "alice", CTX) for d in ("A", "B", "C")}
    service.deactivate("C", CTX)
    assert other.warm_cache() == 2 and {d for d in "ABC" if other.devices.get(d)} == {"A", "B"}
    assert other.warm_cache(limit=1) == 1
    assert other.verify("A", code_at(regs["A"], clock.now), CTX)["valid"] is True


def test_registration_caches_the_new_device(service):
    service.register("N", "alice", CTX, digits=8)
    cached = service.devices.get("N")
    assert cached is not None and cached.digits == 8 and len(cached.key) == 32
