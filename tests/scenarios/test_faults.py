"""Faults in the services the API depends on: PostgreSQL stopped and started under load, Redis stopped
and started again. Each test stops servers of its own (`tests/throwaway.py`), never the machine's."""

import json
import shutil
import subprocess
import threading
import time
import uuid
from http.client import HTTPConnection

import prometheus_client
import pytest

from otp_service.db.database import open_database
from otp_service.db.models import AuditLog, Device
from tests.conftest import API_KEY, FakeClock, settings_for
from tests.helpers import code_at
from tests.serving import free_port, production_env, run_cli, start_cli, wait_healthy
from tests.throwaway import StallingProxy, ThrowawayPostgres, ThrowawayRedis, postgres_available, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]
DB_TIMEOUT = 2


@pytest.fixture
def own_postgres():
    """A PostgreSQL cluster of this test's own, so stopping it disturbs nothing else."""
    server = ThrowawayPostgres()
    server.start()
    yield server
    server.remove()


def call(port, method, path, body=None):
    rid = uuid.uuid4().hex
    started = time.monotonic()
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            method,
            path,
            json.dumps(body) if body is not None else None,
            {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", "X-Request-ID": rid},
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), time.monotonic() - started, rid
    except OSError:
        return None, {}, time.monotonic() - started, rid
    finally:
        conn.close()


@pytest.mark.skipif(postgres_available() is not None, reason=str(postgres_available()))
def test_postgres_restart_under_load(tmp_path, own_postgres):
    env = production_env(own_postgres.url, API_KEY, DB_TIMEOUT=str(DB_TIMEOUT))
    assert run_cli("migrate", cwd=tmp_path, **env).returncode == 0
    port = free_port()
    proc = start_cli("serve", cwd=tmp_path, PORT=str(port), **env)
    results, stop = [], threading.Event()
    try:
        wait_healthy(port, proc)
        regs = {}
        for n in range(120):
            status, body, _, _ = call(port, "POST", "/api/v1/devices/register", {"device_id": f"F{n}", "user_id": "u"})
            assert status == 201
            regs[f"F{n}"] = body["data"]
        pending = list(regs)

        def load(worker):
            n = 0
            while not stop.is_set():
                n += 1
                if n % 3 == 0:
                    results.append(
                        (
                            "register",
                            *call(
                                port,
                                "POST",
                                "/api/v1/devices/register",
                                {"device_id": f"N{worker}-{n}", "user_id": "u"},
                            ),
                        )
                    )
                elif pending:
                    device = pending.pop()
                    results.append(
                        (
                            "verify",
                            *call(
                                port,
                                "POST",
                                "/api/v1/otp/verify",
                                {"device_id": device, "otp": code_at(regs[device], time.time())},
                            ),
                        )
                    )
                time.sleep(0.02)

        workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.5)
        own_postgres.stop()
        time.sleep(1.0)
        down_health = call(port, "GET", "/health")
        time.sleep(2.0)
        own_postgres.start()
        restarted = time.monotonic()
        recovered = None
        while time.monotonic() - restarted < 20:
            if call(port, "GET", "/health")[0] == 200:
                recovered = time.monotonic() - restarted
                break
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        for w in workers:
            w.join(30)
    finally:
        stop.set()
        if not own_postgres.ready():
            own_postgres.start()
        proc.terminate()
        proc.communicate(timeout=30)

    assert down_health[0] == 503 and down_health[1]["data"]["database"] == "unreachable"
    assert recovered is not None and recovered < 10, "the service did not recover by itself"
    statuses = [status for _, status, *_ in results]
    assert 503 in statuses and (200 in statuses or 201 in statuses)
    for kind, status, body, seconds, _ in results:
        assert status in (200, 201, 409, 503), (kind, status, body)  # never a 500, a hang or a dropped connection
        assert seconds < DB_TIMEOUT * 2 + 3, f"{kind} took {seconds:.1f}s"
        if status == 503:
            assert body["error"]["code"] == "DATABASE_UNAVAILABLE" and "Traceback" not in json.dumps(body)
    # Afterwards: every 2xx has exactly its audit row, and no device is half-written.
    wait_for(own_postgres.ready)
    database = open_database(own_postgres.url, 1)
    with database.connection_context():
        for kind, status, body, _, rid in results:
            if status in (200, 201):
                rows = list(AuditLog.select().where(AuditLog.request_id == rid))
                assert len(rows) == 1 and rows[0].success is (kind == "register" or body["data"]["valid"])
        for device in Device.select():
            registered = (
                AuditLog.select()
                .where(
                    (AuditLog.device_id == device.device_id)
                    & (AuditLog.action == "DEVICE_REGISTERED")
                    & AuditLog.success
                )
                .count()
            )
            used = (
                AuditLog.select()
                .where(
                    (AuditLog.device_id == device.device_id)
                    & (AuditLog.action == "OTP_VERIFICATION")
                    & AuditLog.success
                )
                .count()
            )
            assert registered == 1 and used == device.usage_count
    database.close_all()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test's own, so stopping it disturbs nothing else."""
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    if server.running():
        server.stop()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_stopped_and_started_again(make_server, db_url, own_redis, mode):
    settings = settings_for(
        db_url, REDIS_URL=own_redis.url, RATE_LIMIT_DEFAULT="4/minute", RATE_LIMIT_ON_REDIS_ERROR=mode
    )
    server = make_server(settings)
    api = server.client
    assert [api.get("/api/v1/stats").status for _ in range(5)] == [200, 200, 200, 200, 429]  # shared counters
    own_redis.stop()
    during = [api.get("/api/v1/stats") for _ in range(3)]
    if mode == "open":  # availability first: counted in process, and the outage is counted in the metrics
        assert [r.status for r in during] == [200, 200, 200]
        metrics = api.get("/metrics").raw.decode()
        assert "otp_rate_limit_store_errors_total" in metrics and " 0.0" not in [
            line[line.rfind(" ") :]
            for line in metrics.splitlines()
            if line.startswith("otp_rate_limit_store_errors_total")
        ]
    else:  # refuse rather than serve unlimited
        assert all(r.status == 503 and r.body["error"]["code"] == "RATE_LIMITER_UNAVAILABLE" for r in during)
    own_redis.start()  # an empty Redis: the service reconnects and counts there again
    cool_down_passed(server.state.limiter.breaker)  # the failures opened its circuit breaker
    assert [api.get("/api/v1/stats").status for _ in range(5)] == [200, 200, 200, 200, 429]


def cool_down_passed(breaker) -> None:
    """The breaker's clock a whole cool-down ahead: its next request probes Redis."""
    breaker.clock = lambda: time.monotonic() + breaker.cool_down


@pytest.fixture
def stalling_proxy(own_redis):
    """The test's own Redis behind a proxy that can stall it (`tests/throwaway.py`)."""
    proxy = StallingProxy(own_redis.port)
    yield proxy
    proxy.close()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_stalled_redis_is_left_alone_until_a_probe_finds_it_back(
    make_server, db_url, own_redis, stalling_proxy, mode, caplog
):
    """A Redis that accepts but never answers costs every request its timeout. After a few failed round trips
    the limiter's breaker opens: requests get the policy (counted in process, or 503) and nothing reaches
    Redis; once Redis answers again one probe closes the breaker and Redis counts again. Whether Redis is
    reached is counted at the proxy in front of it, not timed."""
    proxy = stalling_proxy
    # an hour, not a minute: in-process windows are aligned to the clock, and a run crossing a minute boundary
    # let a fifth request through in process (CI, 1 run in 4)
    settings = settings_for(db_url, REDIS_URL=proxy.url, RATE_LIMIT_DEFAULT="4/hour", RATE_LIMIT_ON_REDIS_ERROR=mode)
    server = make_server(settings)
    api, registry = server.client, prometheus_client.REGISTRY
    opens = registry.get_sample_value("otp_rate_limit_breaker_opens_total") or 0
    assert [api.get("/api/v1/stats").status for _ in range(5)] == [200, 200, 200, 200, 429]  # through the proxy
    before = proxy.traffic()
    proxy.stalled = True
    statuses, traffic = [], []
    for _ in range(10):
        statuses.append(api.get("/api/v1/stats").status)
        traffic.append(proxy.traffic())
    # the policy, as without a breaker: counted in process (the same 4 a minute), or refused
    assert statuses == ([200] * 4 + [429] * 6 if mode == "open" else [503] * 10)
    assert traffic[0] > before  # the first requests tried Redis (three failed round trips open the breaker) …
    assert traffic[4:] == [traffic[4]] * 6  # … the later ones did not: no connection, not a byte
    breaker = server.state.limiter.breaker
    breaker.clock = clock = FakeClock(time.monotonic())  # from here on, time moves only when the test says
    assert breaker.state == "open"
    assert registry.get_sample_value("otp_rate_limit_breaker_open") == 1
    assert registry.get_sample_value("otp_rate_limit_breaker_opens_total") == opens + 1  # once per outage

    subprocess.run(["redis-cli", "-p", str(own_redis.port), "flushall"], check=True, capture_output=True)
    proxy.stalled = False  # Redis answers again, and has forgotten every count
    assert api.get("/api/v1/stats").status == (429 if mode == "open" else 503)  # still within the cool-down
    assert proxy.traffic() == traffic[-1]
    clock.advance(breaker.cool_down)  # the next request probes Redis, and finds it answering
    assert [api.get("/api/v1/stats").status for _ in range(5)] == [200, 200, 200, 200, 429]  # counted in Redis
    assert proxy.traffic() > traffic[-1] and breaker.state == "closed"
    assert registry.get_sample_value("otp_rate_limit_breaker_open") == 0
    said = [r.getMessage() for r in caplog.records if r.name == "otp_service.ratelimit" and "circuit" in r.getMessage()]
    assert [("circuit open" in line, "circuit closed" in line) for line in said] == [(True, False), (False, True)]
