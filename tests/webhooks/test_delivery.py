"""The delivery worker against a real receiver process (`receiver`), with the service as real `serve` and
`webhooks deliver` processes: signed (Standard Webhooks v1, checked by the library a receiver would use),
retried, at least once and — with two workers on one queue — exactly once when nothing fails."""

from __future__ import annotations

import time

import pytest

from tests.serving import free_port, run_cli, start_cli, wait_healthy
from tests.webhooks.harness import Receiver, add_endpoint, deliveries, register, service_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def serve(tmp_path, db_url, database):
    """`serve` processes on the test's database (migrated by the `database` fixture); stopped after the test."""
    procs = []

    def start(**env: str) -> int:
        port = free_port()
        proc = start_cli("serve", cwd=tmp_path, PORT=str(port), **service_env(db_url, **env))
        procs.append(proc)
        wait_healthy(port, proc)
        return port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def deliver_once(tmp_path, db_url, **env):
    done = run_cli("webhooks", "deliver", "--once", cwd=tmp_path, timeout=60, **service_env(db_url, **env))
    assert done.returncode == 0, done.stderr
    return done


def settled(database, endpoint_id, count):
    rows = deliveries(database, endpoint_id)
    return rows if len(rows) == count and all(r["status"] != "pending" for r in rows) else None


def test_delivered_signed_with_the_standard_headers(receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/in"))
    receiver.trust("/in", *shown)
    port = serve()
    register(port, "dev-1")
    rows = wait_for(lambda: settled(database, endpoint, 1))
    assert rows[0]["status"] == "delivered" and rows[0]["attempts"] == 1 and rows[0]["last_status"] == 200
    (got,) = receiver.log("/in")
    assert got["verified"] == [True] and got["signatures"] == 1
    assert got["id"] == f"msg_{rows[0]['message_id']}" and got["type"] == "device.registered"
    assert abs(int(got["timestamp"]) - time.time()) < 60
    assert got["content_type"] == "application/json" and got["user_agent"].startswith("otp-service-webhooks/")
