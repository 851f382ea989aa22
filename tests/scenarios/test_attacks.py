"""Attacks on the verification rules: brute force under the lockout policy, lockout as a denial of
service, and replay races across two real service processes."""

import base64
import contextlib
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.client import HTTPConnection

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors, totp
from otp_service.core.verification import lock_seconds
from otp_service.db.models import AuditLog, Device
from tests.conftest import API_KEY, PG_URL, REDIS_URL
from tests.helpers import audit_rows, code_at
from tests.serving import production_env, two_servers

ATTACKER = RequestContext("203.0.113.66", "attack-tool", None)
OWNER = RequestContext("198.51.100.20", "AcmeBank-iOS", None)


def guess_that_misses(rng, reg, now):
    """A random 6-digit guess, re-drawn in the (rare) case it would be right: the simulation measures
    how many guesses reach the code check, which bounds the chance of a lucky one."""
    near = {code_at(reg, now, k) for k in range(-3, 4)}
    while True:
        guess = f"{rng.randrange(10**6):06d}"
        if guess not in near:
            return guess


def test_brute_force_for_an_hour_reaches_the_code_check_ten_times(service, database, clock):
    """One guess a second (RATE_LIMIT_VERIFY=60/minute) for a simulated hour against one device."""
    reg = service.register("VICTIM", "alice", OWNER)
    rng = random.Random(1)
    start = clock.now
    refused_locked = 0
    while clock.now < start + 3600:
        try:
            result = service.verify("VICTIM", guess_that_misses(rng, reg, clock.now), ATTACKER)
            assert result["valid"] is False
        except errors.DeviceLocked:
            refused_locked += 1
        clock.advance(1)
    with database.connection_context():
        checked = AuditLog.select().where(AuditLog.reason == "INVALID_CODE").count()
        locks = list(AuditLog.select().where(AuditLog.action == "DEVICE_LOCKED").order_by(AuditLog.id))
    # The documented schedule: 5 failures, then locks of 60, 120, 240, 480, 960, 1920 s — 10 checks an hour.
    elapsed, expected = 0, 0
    while elapsed < 3600:
        expected += 1
        elapsed += lock_seconds(expected, 5, 60) or 1
    assert checked == expected == 10 and refused_locked == 3600 - checked
    assert [json.loads(row.additional_data)["lock_seconds"] for row in locks] == [60, 120, 240, 480, 960, 1920]
    # So the chance that such an attacker gets in within the hour is at most 10 × 3 / 10^6 (window ±1).
    # The owner's next correct code after the lock expires works, and resets the counter.
    locked_until = service.device_info("VICTIM")["locked_until"]
    with pytest.raises(errors.DeviceLocked):
        service.verify("VICTIM", code_at(reg, clock.now), OWNER)
    clock.now = start + 4 + 60 + 120 + 240 + 480 + 960 + 1920 + 1
    assert service.verify("VICTIM", code_at(reg, clock.now), OWNER)["valid"] is True
    assert service.device_info("VICTIM")["failed_attempts"] == 0 and locked_until


def test_lockout_as_denial_of_service_and_operator_unlock(service, clock):
    """What an attacker with an API key can do to someone else's device: lock it (and keep it locked);
    what it cannot: get in, or stop the operator from unlocking it."""
    reg = service.register("VICTIM", "alice", OWNER)
    rng = random.Random(2)
    for _ in range(5):
        service.verify("VICTIM", guess_that_misses(rng, reg, clock.now), ATTACKER)
    with pytest.raises(errors.DeviceLocked):  # the owner is locked out: that is the denial of service
        service.verify("VICTIM", code_at(reg, clock.now), OWNER)
    for _ in range(20):  # guesses while locked are refused without being checked or extending the lock
        with pytest.raises(errors.DeviceLocked):
            service.verify("VICTIM", guess_that_misses(rng, reg, clock.now), ATTACKER)
    assert service.device_info("VICTIM")["failed_attempts"] == 5
    service.unlock("VICTIM", RequestContext("10.0.0.1", "ops-console", None))  # always works
    assert service.verify("VICTIM", code_at(reg, clock.now), OWNER)["valid"] is True
    # Unlocking resets the counter: the attacker needs five fresh failures to lock it again.
    clock.advance(30)
    for _ in range(4):
        service.verify("VICTIM", guess_that_misses(rng, reg, clock.now), ATTACKER)
    assert service.verify("VICTIM", code_at(reg, clock.now), OWNER)["valid"] is True


def _post(port, body, request_id=None, path="/api/v1/otp/verify"):
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    conn.request("POST", path, json.dumps(body), headers | ({"X-Request-ID": request_id} if request_id else {}))
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


@pytest.fixture
def two_processes(tmp_path, database):
    """Two separate service processes on the same PostgreSQL database."""
    yield from two_servers(tmp_path, production_env(PG_URL, API_KEY, DB_POOL_SIZE="16"))


@pytest.mark.postgres
@pytest.mark.slow
def test_replay_race_across_two_processes_accepts_each_code_once(two_processes, database):
    ports = two_processes
    status, body = 0, None
    conn = HTTPConnection("127.0.0.1", ports[0], timeout=30)
    devices = {}
    for n in range(12):
        conn.request(
            "POST",
            "/api/v1/devices/register",
            json.dumps({"device_id": f"RACE-{n}", "user_id": "u"}),
            {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        status, body = resp.status, json.loads(resp.read())
        assert status == 201
        devices[f"RACE-{n}"] = body["data"]
    conn.close()
    with ThreadPoolExecutor(max_workers=40) as pool:
        for device_id, reg in devices.items():
            code = code_at(reg, time.time())
            barrier = threading.Barrier(40)

            def attempt(i, device_id=device_id, code=code, barrier=barrier):
                barrier.wait()
                return _post(ports[i % 2], {"device_id": device_id, "otp": code})

            results = list(pool.map(attempt, range(40)))
            assert all(status == 200 for status, _ in results)
            assert sorted(body["data"]["valid"] for _, body in results) == [False] * 39 + [True]
    with database.connection_context():
        successes = AuditLog.select().where((AuditLog.action == "OTP_VERIFICATION") & AuditLog.success).count()
        replays = AuditLog.select().where(AuditLog.reason == "REPLAYED").count()
    assert successes == 12 and replays == 12 * 39


@pytest.mark.postgres
@pytest.mark.slow
def test_code_for_an_earlier_step_is_refused_in_the_other_process(two_processes):
    ports = two_processes
    conn = HTTPConnection("127.0.0.1", ports[0], timeout=30)
    conn.request(
        "POST",
        "/api/v1/devices/register",
        json.dumps({"device_id": "STEP", "user_id": "u"}),
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    reg = json.loads(conn.getresponse().read())["data"]
    now = time.time()
    later, earlier = code_at(reg, now, 1), code_at(reg, now)
    assert totp.time_step(now) >= 0
    assert _post(ports[0], {"device_id": "STEP", "otp": later})[1]["data"]["valid"] is True
    assert _post(ports[1], {"device_id": "STEP", "otp": earlier})[1]["data"] == {
        "device_id": "STEP",
        "valid": False,
        "reason": "REPLAYED",
    }


def _register(port, device_id):
    status, body = _post(port, {"device_id": device_id, "user_id": "victim"}, path="/api/v1/devices/register")
    assert status == 201
    return body["data"]


def _burst(ports, device_id, codes):
    """Every code at once, alternately to each process; (request id, code, status, body) for each."""
    barrier = threading.Barrier(len(codes))

    def attempt(i):
        rid = f"{device_id}-{i}"
        barrier.wait()
        return (rid, codes[i], *_post(ports[i % 2], {"device_id": device_id, "otp": codes[i]}, rid))

    with ThreadPoolExecutor(max_workers=len(codes)) as pool:
        return list(pool.map(attempt, range(len(codes))))


def _wrong_codes(reg, count):
    near = {code_at(reg, time.time(), k) for k in range(-3, 4)}
    return [c for c in (f"{n:06d}" for n in range(100, 100 + count + len(near))) if c not in near][:count]


def _check_against_the_rule(database, reg, results, failures_before=0):
    """Replay the device's audit trail, in the order the rows were written, through the rule itself
    (`verification.decide`) with the code each request sent: every row, and every answer, must be what
    the rule says for the state the earlier rows left. Returns the number of codes checked and refused."""

    from otp_service.core.transitions import DeviceState, to_datetime
    from otp_service.core.verification import Policy, decide

    key = base64.b64decode(reg["derived_key"])
    sent = {rid: (code, status, body) for rid, code, status, body in results}
    with database.connection_context():
        rows = list(
            AuditLog.select()
            .where((AuditLog.device_id == reg["device_id"]) & (AuditLog.request_id.in_(list(sent))))
            .order_by(AuditLog.id)
        )
    created = to_datetime(time.time() - 3600)
    state = DeviceState(
        reg["device_id"],
        "victim",
        "",
        1,
        "",
        6,
        30,
        "SHA1",
        None,
        True,
        created,
        None,
        0,
        None,
        -1,
        0,
        failures_before,
        None,
        0,
    )
    checked = 0
    verifications = [r for r in rows if r.action == "OTP_VERIFICATION"]
    assert len(verifications) == len(results), "every answered request has exactly one verification row"
    for row in verifications:
        code, status, body = sent[row.request_id]
        now = (row.timestamp - datetime(1970, 1, 1)).total_seconds()
        transition = decide(reg["device_id"], state, key, code, now, Policy())
        assert (row.success, row.reason) == (
            transition.verdict == "ACCEPTED",
            None if transition.verdict == "ACCEPTED" else transition.verdict,
        )
        if transition.verdict == "DEVICE_LOCKED":
            assert status == 429 and body["error"]["code"] == "DEVICE_LOCKED"
        else:
            assert status == 200 and body["data"]["valid"] is (transition.verdict == "ACCEPTED")
            checked += transition.verdict == "INVALID_CODE"
        state = transition.after or state
    return checked


@pytest.mark.postgres
@pytest.mark.slow
def test_a_burst_of_wrong_codes_gets_exactly_the_failure_budget_checked(two_processes, database):
    """60 wrong codes at once against fresh devices, half to each process, three times: five are checked
    (the budget), the other 55 are refused as locked without being checked, on every device."""
    ports = two_processes
    for round_ in range(3):
        reg = _register(ports[round_ % 2], f"FRESH-{round_}")
        results = _burst(ports, reg["device_id"], _wrong_codes(reg, 60))
        statuses = sorted(status for _, _, status, _ in results)
        assert statuses == [200] * 5 + [429] * 55
        assert _check_against_the_rule(database, reg, results) == 5
        with database.connection_context():
            device = Device.get_by_id((1, reg["device_id"]))
            locks = AuditLog.select().where(
                (AuditLog.device_id == reg["device_id"]) & (AuditLog.action == "DEVICE_LOCKED")
            )
            assert device.failed_attempts == 5 and device.locked_until is not None and locks.count() == 1


@pytest.mark.postgres
@pytest.mark.slow
def test_a_burst_against_a_device_one_failure_short_of_its_lock_gets_one_code_checked(two_processes, database):
    ports = two_processes
    for round_ in range(3):
        reg = _register(ports[0], f"SHORT-{round_}")
        for code in _wrong_codes(reg, 4):
            assert _post(ports[1], {"device_id": reg["device_id"], "otp": code})[1]["data"]["reason"] == "INVALID_CODE"
        results = _burst(ports, reg["device_id"], _wrong_codes(reg, 60))
        assert sorted(status for _, _, status, _ in results) == [200] + [429] * 59
        assert _check_against_the_rule(database, reg, results, failures_before=4) == 1


@pytest.mark.postgres
@pytest.mark.slow
def test_a_correct_code_inside_a_burst_is_judged_on_the_state_it_lands_on(two_processes, database):
    """The owner's code among 59 wrong ones: accepted if it lands before the fifth failure (and then it
    resets the count), refused as locked if after; never both, and never more than the budget checked."""
    ports = two_processes
    accepted = 0
    for round_ in range(3):
        reg = _register(ports[0], f"MIXED-{round_}")
        codes = _wrong_codes(reg, 59)
        codes.insert(29, code_at(reg, time.time()))
        results = _burst(ports, reg["device_id"], codes)
        checked = _check_against_the_rule(database, reg, results)
        owner = next(r for r in results if r[1] == codes[29])
        accepted += owner[2] == 200 and owner[3]["data"]["valid"]
        assert checked <= (4 + 5 if owner[2] == 200 and owner[3]["data"]["valid"] else 5)
        assert sum(1 for r in results if r[2] == 200 and r[3]["data"]["valid"]) <= 1


def test_unlocking_after_every_few_guesses_is_bounded(service, database, clock):
    """The attack from the API-clients issue: a key that may unlock unlocks after every few guesses. Each
    unlock is now worth one guess (the count since the last right code survives it, so the next wrong code
    locks again), and after OTP_HARD_LOCK_FAILURES (50) the device stays locked until an unlock — over HTTP
    unlocks are rate limited per device too (next test)."""
    reg = service.register("VICTIM", "alice", OWNER)
    rng, unlocks = random.Random(3), 0
    for _ in range(400):
        try:
            service.verify("VICTIM", guess_that_misses(rng, reg, clock.now), ATTACKER)
        except errors.DeviceLocked:
            service.unlock("VICTIM", ATTACKER)
            unlocks += 1
        clock.advance(1)
    with contextlib.suppress(errors.DeviceLocked):  # one more guess after the last unlock: it locks again
        service.verify("VICTIM", guess_that_misses(rng, reg, clock.now), ATTACKER)
    checked = len(audit_rows(database, reason="INVALID_CODE"))
    assert checked <= 5 + unlocks + 1  # five before the first lock, then one per unlock (and the last guess)
    assert unlocks >= 100  # the attacker did unlock, again and again
    hard = audit_rows(database, action="DEVICE_LOCKED", reason="HARD_LOCK")
    assert hard and service.device_info("VICTIM")["hard_locked"] is True
    with pytest.raises(errors.DeviceLocked) as refused:  # not even the right code, until an unlock
        service.verify("VICTIM", code_at(reg, clock.now), OWNER)
    assert refused.value.details == {"locked_until": None, "hard_locked": True}
    service.unlock("VICTIM", RequestContext("10.0.0.1", "ops-console", None))
    assert service.verify("VICTIM", code_at(reg, clock.now + 30), OWNER)["valid"] is True  # the owner resets it


def test_unlocks_of_one_device_are_rate_limited(make_server, db_url, clock, database):
    from tests.conftest import settings_for
    from tests.helpers import wrong_code

    api = make_server(settings_for(db_url, RATE_LIMIT_UNLOCK="3/hour")).client
    reg = api.post("/api/v1/devices/register", {"device_id": "U1", "user_id": "u"}).body["data"]
    api.post("/api/v1/devices/register", {"device_id": "U2", "user_id": "u"})
    for _ in range(5):
        api.post("/api/v1/otp/verify", {"device_id": "U1", "otp": wrong_code(reg, clock.now)})
    statuses = [api.post("/api/v1/devices/U1/unlock").status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = audit_rows(database, action="RATE_LIMITED")  # audited once per device and window
    assert [(r.reason, r.actor) for r in refused] == [("UNLOCK", "env")]
    assert api.post("/api/v1/devices/U2/unlock").status == 200  # per device


def _burst_to(ports, path, bodies):
    """Every body at once to `path`, alternately to each process; (status, body) for each."""
    barrier = threading.Barrier(len(bodies))

    def attempt(i):
        barrier.wait()
        return _post(ports[i % 2], bodies[i], path=path)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(attempt, range(len(bodies))))


@pytest.mark.postgres
@pytest.mark.slow
def test_lifecycle_bursts_across_two_processes_hold_the_budget_and_use_codes_once(two_processes, database):
    """The lifecycle's new state changes under the same attack: wrong confirmations and wrong resync pairs
    to a fresh device get exactly the budget checked; one recovery code sent 40 times is accepted once, and
    wrong recovery codes get exactly the budget checked."""
    ports = two_processes
    status, body = _post(
        ports[0], {"device_id": "PENDING", "user_id": "victim", "confirm": True}, path="/api/v1/devices/register"
    )
    assert status == 201 and body["data"]["status"] == "pending"
    bodies = [{"otp": code} for code in _wrong_codes(body["data"], 40)]
    results = _burst_to(ports, "/api/v1/devices/PENDING/confirm", bodies)
    assert sorted(status for status, _ in results) == [200] * 5 + [429] * 35
    with database.connection_context():
        assert Device.get_by_id((1, "PENDING")).failed_attempts == 5

    reg = _register(ports[1], "DRIFTY")
    now_step = totp.time_step(time.time())
    key = base64.b64decode(reg["derived_key"])
    pairs = [(totp.hotp(key, now_step + k), totp.hotp(key, now_step + k + 2)) for k in range(-20, 20)]
    results = _burst_to(ports, "/api/v1/devices/DRIFTY/resync", [{"otp1": a, "otp2": b} for a, b in pairs])
    assert sorted(status for status, _ in results) == [200] * 5 + [429] * 35
    assert all(body["data"]["reason"] == "INVALID_CODE" for status, body in results if status == 200)

    status, body = _post(ports[0], {}, path="/api/v1/users/victim/recovery-codes")
    assert status == 201
    code = body["data"]["codes"][0]
    results = _burst_to(ports, "/api/v1/users/victim/recovery-codes/verify", [{"code": code}] * 40)
    assert sorted(body["data"].get("reason", "ACCEPTED") for _, body in results) == ["ACCEPTED"] + ["REPLAYED"] * 39
    wrong = [{"code": f"2222-3333-{n:02d}AA".replace("0", "Z").replace("1", "Y")} for n in range(40)]
    results = _burst_to(ports, "/api/v1/users/victim/recovery-codes/verify", wrong)
    assert sorted(status for status, _ in results) == [200] * 5 + [429] * 35
    refused = [body["error"]["code"] for status, body in results if status == 429]
    assert set(refused) == {"RECOVERY_CODES_LOCKED"}
    with database.connection_context():
        checked = AuditLog.select().where(
            (AuditLog.action == "RECOVERY_CODE_VERIFICATION") & (AuditLog.reason == "INVALID_CODE")
        )
        assert checked.count() == 5
    # every row those processes wrote, each batch in its own chain, links up and verifies
    from otp_service.config import Settings
    from otp_service.service import build_service

    settings = Settings.from_env(production_env(PG_URL, API_KEY))
    result = build_service(settings, database).verify_audit(record=False)
    assert result.intact, result.lines()
    assert result.rows == AuditLog.select().count() > 100


@pytest.fixture
def two_instances(tmp_path, database):
    """Two service instances as two deployments would run them: two `serve` commands of two processes each,
    on their own ports, sharing one PostgreSQL and one Redis (the rate limits)."""
    env = production_env(PG_URL, API_KEY, DB_POOL_SIZE="8", REDIS_URL=REDIS_URL)
    yield from two_servers(tmp_path, env, "--processes", "2")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_two_instances_under_load_accept_each_code_once_and_check_only_the_budget(two_instances, database):
    """While eight clients keep both instances busy (valid and wrong codes on 30 other devices), bursts
    land on all four processes: 40 copies of one valid code → one accepted; 60 wrong codes → five checked,
    the other 55 refused as locked, the audit trail replaying through the rule; then every answered request
    has its audit row and the chains verify."""
    ports = two_instances
    others = [_register(ports[n % 2], f"LOAD-{n}") for n in range(30)]
    stop, answered = threading.Event(), []

    def load(worker):
        rng, count = random.Random(worker), 0
        while not stop.is_set():
            reg = rng.choice(others)
            code = code_at(reg, time.time()) if rng.random() < 0.3 else f"{rng.randrange(10**6):06d}"
            status, _ = _post(ports[worker % 2], {"device_id": reg["device_id"], "otp": code})
            assert status in (200, 429)
            count += 1
        answered.append(count)

    with ThreadPoolExecutor(max_workers=8) as background:
        running = [background.submit(load, w) for w in range(8)]
        try:
            for round_ in range(3):
                reg = _register(ports[round_ % 2], f"REPLAY-{round_}")
                code = code_at(reg, time.time())
                results = _burst(ports, reg["device_id"], [code] * 40)
                assert [status for _, _, status, _ in results] == [200] * 40
                assert sorted(body["data"]["valid"] for _, _, _, body in results) == [False] * 39 + [True]
                victim = _register(ports[(round_ + 1) % 2], f"BUDGET-{round_}")
                results = _burst(ports, victim["device_id"], _wrong_codes(victim, 60))
                assert sorted(status for _, _, status, _ in results) == [200] * 5 + [429] * 55
                assert _check_against_the_rule(database, victim, results) == 5
        finally:
            stop.set()
        for future in running:
            future.result()
    with database.connection_context():
        load_rows = (
            AuditLog.select()
            .where((AuditLog.action == "OTP_VERIFICATION") & AuditLog.device_id.startswith("LOAD-"))
            .count()
        )
        accepted = AuditLog.select().where((AuditLog.action == "OTP_VERIFICATION") & AuditLog.success).count()
    assert sum(answered) > 100 and load_rows == sum(answered)
    assert accepted >= 3  # each REPLAY round's code, and the load's valid codes accepted once per step
    from otp_service.config import Settings
    from otp_service.service import build_service

    result = build_service(Settings.from_env(production_env(PG_URL, API_KEY)), database).verify_audit(record=False)
    assert result.intact, result.lines()
