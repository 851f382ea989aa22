"""PostgreSQL on the event loop (`pg_eventloop`) and the commands that run on it: the same answers and
audit rows as the blocking paths, shared statements that keep each request's own outcome, bounded waits,
and recovery from dead or stuck connections."""

import asyncio
import json
import time

import psycopg2
import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors
from otp_service.core.keys import Keyring
from otp_service.db.models import AuditLog, Device
from otp_service.persistence.pg_eventloop import AsyncPool
from otp_service.persistence.store import PostgresStore
from otp_service.service import AsyncOtpService, OtpService
from tests.conftest import PG_URL
from tests.helpers import code_at, journal_for, wrong_code

pytestmark = pytest.mark.postgres

CTX = RequestContext("198.51.100.7", "tests", "async")


def pool_for(database, size=4, timeout=5.0) -> AsyncPool:
    return AsyncPool.for_database(database, size, timeout)


@pytest.fixture
def fast(settings, database, clock):
    """The service as the server builds it on PostgreSQL: commands on the event loop."""
    keyring = Keyring(settings.master_secrets, settings.master_secret_version)
    service = AsyncOtpService(OtpService(settings, keyring, database, clock=clock))
    yield service
    service.executor.shutdown(wait=True)
    service.pool.close()


def batches(fast, kind="writes") -> int:
    return getattr(fast.engine.store, kind).batches


def run(coro):
    return asyncio.run(coro)


def verification_rows(database, device_id):
    with database.connection_context():
        rows = AuditLog.select().where(AuditLog.device_id == device_id, AuditLog.action == "OTP_VERIFICATION")
        return [(r.success, r.reason, r.ip_address, r.request_id) for r in rows.order_by(AuditLog.id)]


def test_register_and_verify_on_the_event_loop(fast, database, clock):
    reg = run(fast.register("A1", "alice", CTX))
    assert reg["device_id"] == "A1" and reg["secret_base32"] and reg["key_version"] == 1
    assert run(fast.verify("A1", code_at(reg, clock.now), CTX)) == {"device_id": "A1", "valid": True}
    assert run(fast.verify("A1", wrong_code(reg, clock.now), CTX)) == {
        "device_id": "A1",
        "valid": False,
        "reason": "INVALID_CODE",
    }
    assert verification_rows(database, "A1") == [
        (True, None, "198.51.100.7", "async"),
        (False, "INVALID_CODE", "198.51.100.7", "async"),
    ]
    info = run(fast.device_info("A1"))
    assert (info["usage_count"], info["failed_attempts"]) == (1, 1)
    with pytest.raises(errors.DeviceExists):
        run(fast.register("A1", "mallory", CTX))
    with database.connection_context():
        assert Device.get(Device.device_id == "A1").user_id == "alice"


def test_a_code_sent_many_times_at_once_is_accepted_once(fast, database, clock):
    reg = fast.service.register("R1", "alice", CTX)
    code = code_at(reg, clock.now)

    async def storm():
        return await asyncio.gather(*(fast.verify("R1", code, CTX) for _ in range(12)))

    answers = run(storm())
    assert answers.count({"device_id": "R1", "valid": True}) == 1
    assert answers.count({"device_id": "R1", "valid": False, "reason": "REPLAYED"}) == 11
    assert [row[0] for row in verification_rows(database, "R1")] == [True] + [False] * 11


def test_a_stale_state_is_decided_again_not_answered_from(fast, service, database, clock):
    reg = fast.service.register("S1", "alice", CTX)
    assert run(fast.verify("S1", code_at(reg, clock.now), CTX))["valid"]
    clock.advance(30)
    service.deactivate("S1", CTX)  # another process, behind this one's back
    with pytest.raises(errors.DeviceInactive):
        run(fast.verify("S1", code_at(reg, clock.now), CTX))
    assert [row[:2] for row in verification_rows(database, "S1")] == [(True, None), (False, "DEVICE_INACTIVE")]


def test_an_unknown_device_is_answered_and_audited_on_the_event_loop(fast, database):
    with pytest.raises(errors.DeviceNotFound):
        run(fast.verify("NOPE", "123456", CTX))
    assert verification_rows(database, "NOPE") == [(False, "DEVICE_NOT_FOUND", "198.51.100.7", "async")]


def test_new_connections_prepare_the_statements(database):
    statement = PostgresStore(database, journal_for(database)).statements.read
    assert statement.startswith("EXECUTE otp_read")
    pool = pool_for(database)
    try:
        assert run(pool.fetchone(statement, ([1], ["no-such-device"]))) is None  # needs the prepared statement
    finally:
        pool.close()


def test_concurrency_is_bounded_by_the_pool_size(database):
    pool, peak = pool_for(database, size=2), []

    async def sleeper():
        row = await pool.fetchone("SELECT pg_sleep(0.05), 1")
        peak.append(pool.in_use)
        return row[1]

    async def main():
        return await asyncio.gather(*(sleeper() for _ in range(8)))

    try:
        assert run(main()) == [1] * 8
        assert max(peak) <= 2 and pool.in_use == 0
        assert len(pool._idle) == 2
    finally:
        pool.close()


def pool_with_statement_timeout(database, seconds: float) -> AsyncPool:
    """A pool as the server builds it: its timeout is also its connections' statement_timeout."""
    params = {**database.connect_params, "options": f"-c statement_timeout={int(seconds * 1000)}"}
    return AsyncPool({"dbname": database.database, **params}, 1, seconds, {})


def test_a_statement_over_the_timeout_is_a_503_and_the_pool_recovers(database):
    pool = pool_with_statement_timeout(database, 0.3)
    try:
        started = time.monotonic()
        with pytest.raises(errors.DatabaseUnavailable):
            run(pool.fetchone("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 1.5  # the server cancelled it
        assert run(pool.fetchone("SELECT 42")) == (42,)
    finally:
        pool.close()


def test_a_write_that_committed_is_never_answered_503(database):
    """A busy process notices a statement's answer late. A statement the server completed within its
    statement_timeout is answered with its result, never a 503 (its write committed: it was audited, and a
    code it accepted cannot be used again)."""
    pool = pool_with_statement_timeout(database, 1.0)

    async def main():
        done = asyncio.ensure_future(
            pool.fetchone(
                "INSERT INTO audit_logs (timestamp, action, success) SELECT now(), 'LATE_ANSWER', true "
                "FROM pg_sleep(0.8) RETURNING id"
            )
        )
        await asyncio.sleep(0.1)
        time.sleep(1.2)  # the event loop is busy with other requests while the server finishes the statement
        return await done

    try:
        (row_id,) = run(main())
    finally:
        pool.close()
    with database.connection_context():
        assert AuditLog.get_by_id(row_id).action == "LATE_ANSWER"


def test_a_connection_killed_by_the_server_is_a_503_then_a_reconnect(database):
    pool = pool_for(database, size=2)
    try:
        (pid,) = run(pool.fetchone("SELECT pg_backend_pid()"))
        admin = psycopg2.connect(PG_URL)
        admin.autocommit = True
        admin.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
        admin.close()
        time.sleep(0.2)
        with pytest.raises(errors.DatabaseUnavailable):
            run(pool.fetchone("SELECT 1"))
        assert run(pool.fetchone("SELECT 1")) == (1,)
        (new_pid,) = run(pool.fetchone("SELECT pg_backend_pid()"))
        assert new_pid != pid
    finally:
        pool.close()


def test_a_cancelled_statement_does_not_return_its_busy_connection(database):
    pool = pool_for(database, size=1)

    async def main():
        task = asyncio.ensure_future(pool.fetchone("SELECT pg_sleep(2)"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._idle == [] and pool.in_use == 0
        return await pool.fetchone("SELECT 7")

    try:
        assert run(main()) == (7,)
    finally:
        pool.close()


def test_an_unreachable_server_is_a_quick_503(database):
    params = {**database.connect_params, "port": 1, "host": "127.0.0.1"}
    pool = AsyncPool({"dbname": database.database, **params}, 2, 2.0, {})
    started = time.monotonic()
    with pytest.raises(errors.DatabaseUnavailable):
        run(pool.fetchone("SELECT 1"))
    assert time.monotonic() - started < 2.5


def test_concurrent_verifications_share_one_statement_and_keep_their_own_outcomes(fast, database, clock):
    regs = [fast.service.register(f"G{i}", f"user{i}", CTX) for i in range(20)]  # their states are cached
    codes = [code_at(r, clock.now) if i % 2 == 0 else wrong_code(r, clock.now) for i, r in enumerate(regs)]

    async def login_storm():
        return await asyncio.gather(*(fast.verify(f"G{i}", codes[i], CTX) for i in range(20)))

    answers = run(login_storm())
    assert batches(fast) == 1
    assert [a["valid"] for a in answers] == [i % 2 == 0 for i in range(20)]
    for i in range(20):
        expected = (True, None) if i % 2 == 0 else (False, "INVALID_CODE")
        assert verification_rows(database, f"G{i}") == [(*expected, "198.51.100.7", "async")]
        info = fast.service.device_info(f"G{i}")
        assert (info["usage_count"], info["failed_attempts"]) == ((1, 0) if i % 2 == 0 else (0, 1))
    with database.connection_context():
        failures = AuditLog.select().where(AuditLog.reason == "INVALID_CODE")
        assert {json.loads(r.additional_data)["failed_attempts"] for r in failures} == {1}


def test_a_row_locked_elsewhere_does_not_hold_up_the_others_and_is_settled_under_the_lock(fast, database, clock):
    busy, free = fast.service.register("L1", "alice", CTX), fast.service.register("L2", "bob", CTX)
    holder = psycopg2.connect(PG_URL)

    async def main():
        holder.cursor().execute("SELECT 1 FROM devices WHERE device_id = 'L1' FOR UPDATE")
        waiting = asyncio.ensure_future(fast.verify("L1", code_at(busy, clock.now), CTX))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        assert (await fast.verify("L2", code_at(free, clock.now), CTX))["valid"] is True
        assert time.monotonic() - started < 0.5 and not waiting.done()
        holder.rollback()  # the row lock the last attempt waits for is released
        return await waiting

    try:
        assert run(main()) == {"device_id": "L1", "valid": True}
    finally:
        holder.close()
    assert [row[0] for row in verification_rows(database, "L1")] == [True]


def test_when_the_database_is_unreachable_every_request_of_the_batch_gets_a_503(fast, database, clock):
    regs = [fast.service.register(f"F{i}", "alice", CTX) for i in range(5)]
    params = {**database.connect_params, "port": 1, "host": "127.0.0.1"}
    fast.engine.store.writes.pool = AsyncPool({"dbname": database.database, **params}, 2, 2.0, {})

    async def storm():
        return await asyncio.gather(
            *(fast.verify(f"F{i}", code_at(r, clock.now), CTX) for i, r in enumerate(regs)),
            return_exceptions=True,
        )

    answers = run(storm())
    assert batches(fast) == 1
    assert all(isinstance(a, errors.DatabaseUnavailable) for a in answers)
    assert all(verification_rows(database, f"F{i}") == [] for i in range(5))


def test_a_row_the_database_refuses_fails_only_its_own_request(fast, database, clock):
    """Every value is checked before it reaches a column; should one slip through, the others in its
    statement are sent again on their own and answered as if it had not been there."""
    regs = [fast.service.register(f"I{i}", "alice", CTX) for i in range(6)]

    async def mixed():
        too_long = fast.service.plan_register("I-BAD", "u" * 300, CTX)  # user_id holds 254: refused
        return await asyncio.gather(
            fast.execute(too_long),
            *(fast.verify(f"I{i}", code_at(r, clock.now), CTX) for i, r in enumerate(regs)),
            return_exceptions=True,
        )

    bad, *good = run(mixed())
    assert isinstance(bad, psycopg2.DataError)
    assert good == [{"device_id": f"I{i}", "valid": True} for i in range(6)]
    assert all(verification_rows(database, f"I{i}") == [(True, None, "198.51.100.7", "async")] for i in range(6))
    with database.connection_context():
        assert not Device.select().where(Device.device_id == "I-BAD").exists()
        assert not AuditLog.select().where(AuditLog.device_id == "I-BAD").exists()


def device_row(database, device_id):
    with database.connection_context():
        row = Device.select().where(Device.device_id == device_id).dicts().get()
    return {k: v for k, v in row.items() if k not in ("device_id", "salt", "derived_key_hash")}


def test_a_registration_on_the_event_loop_writes_the_same_row_as_a_blocking_one(fast, database, clock):
    fast.service.register("SYNC", "alice", CTX, digits=8, issuer="Acme")
    run(fast.register("ASYNC", "alice", CTX, digits=8, issuer="Acme"))
    assert device_row(database, "ASYNC") == device_row(database, "SYNC")
    with database.connection_context():
        rows = list(AuditLog.select().where(AuditLog.action == "DEVICE_REGISTERED").order_by(AuditLog.id).dicts())
    for row in rows:
        for column in ("id", "device_id", "chain", "seq", "entry_hash"):
            row.pop(column)
    assert rows[0] == rows[1]


def test_concurrent_registrations_share_one_statement_and_keep_their_own_outcomes(fast, database, clock):
    fast.service.register("TAKEN", "owner", CTX)
    fast.service.register("RETIRED", "owner", CTX)
    fast.service.deactivate("RETIRED", CTX)
    ids = [f"N{i}" for i in range(8)] + ["TAKEN", "RETIRED"]

    async def signups():
        return await asyncio.gather(
            *(fast.register(device_id, "newcomer", CTX) for device_id in ids), return_exceptions=True
        )

    answers = run(signups())
    assert batches(fast) == 1
    assert [a["device_id"] for a in answers[:8]] == ids[:8] and answers[9]["device_id"] == "RETIRED"
    assert isinstance(answers[8], errors.DeviceExists)
    assert fast.service.device_info("TAKEN")["user_id"] == "owner"
    retired = fast.service.device_info("RETIRED")
    assert retired["user_id"] == "newcomer" and retired["is_active"]
    with database.connection_context():
        audit = {
            (r.device_id, r.success, r.reason)
            for r in AuditLog.select().where(AuditLog.action == "DEVICE_REGISTERED", AuditLog.user_id == "newcomer")
        }
    assert audit == {(i, True, None) for i in ids[:8]} | {("RETIRED", True, None)}
    with database.connection_context():
        refused = AuditLog.get(AuditLog.action == "DEVICE_REGISTERED", AuditLog.reason == "DEVICE_EXISTS")
    assert (refused.device_id, refused.user_id, refused.success) == ("TAKEN", "owner", False)


def test_the_same_id_twice_at_once_takes_turns(fast, database):
    async def twice():
        return await asyncio.gather(
            fast.register("TWICE", "a", CTX), fast.register("TWICE", "b", CTX), return_exceptions=True
        )

    first, second = run(twice())
    assert first["device_id"] == "TWICE" and isinstance(second, errors.DeviceExists)
    assert fast.service.device_info("TWICE")["user_id"] == "a"


def test_uncached_devices_are_read_together(fast, service, database, clock):
    regs = {f"C{i}": service.register(f"C{i}", "alice", CTX) for i in range(10)}  # another process's cache
    assert len(fast.service.engine.cache) == 0

    async def logins():
        return await asyncio.gather(*(fast.verify(d, code_at(r, clock.now), CTX) for d, r in regs.items()))

    assert [a["valid"] for a in run(logins())] == [True] * 10
    assert batches(fast, "reads") == 1 and batches(fast) == 1
    assert len(fast.service.engine.cache) == 10


def test_processes_keep_each_others_remembered_states_current(settings, database, clock):
    """Two services ("processes") on one database, each remembering the device: each one's writes reach the
    other's memory (LISTEN/NOTIFY), so alternating requests are decided on the current state the first
    time — no lost race, no second round trip. (Without it every alternation would be one.)"""
    from otp_service.metrics import OVERTAKEN

    keyring = Keyring(settings.master_secrets, settings.master_secret_version)
    a, b = (AsyncOtpService(OtpService(settings, keyring, database, clock=clock)) for _ in range(2))
    overtaken = OVERTAKEN.labels("optimistic")

    async def main():
        a.start(), b.start()
        reg = await a.register("COHERENT", "alice", CTX)
        b.service.engine.cache.put(b.service.query(b.service.store.read, (1, "COHERENT")))  # b has seen it too
        await asyncio.sleep(0.3)  # both listeners connected
        before = overtaken._value.get()
        for n in range(4):  # within the failure budget
            service = (a, b)[n % 2]
            assert (await service.verify("COHERENT", wrong_code(reg, clock.now), CTX))["reason"] == "INVALID_CODE"
            await asyncio.sleep(0.05)  # the notification arrives
        return overtaken._value.get() - before

    try:
        assert run(main()) == 0
        assert a.service.engine.cache.get((1, "COHERENT")).failed_attempts == 4
        assert (
            b.service.engine.cache.get((1, "COHERENT")).version == a.service.engine.cache.get((1, "COHERENT")).version
        )
    finally:
        for service in (a, b):
            service.close()


def test_the_longest_states_still_fit_the_notifications(fast, database, clock):
    """User ids and issuers at their limits in four-byte characters, many registered in one statement: the
    notifications that carry their states stay under PostgreSQL's 8000-byte payload limit."""
    user, issuer = "𝔘" * 254, "𝔦" * 64

    async def signups():
        return await asyncio.gather(*(fast.register(f"LONG-{n}", user, CTX, issuer=issuer) for n in range(16)))

    answers = run(signups())
    assert batches(fast) == 1 and all(a["user_id"] == user for a in answers)
