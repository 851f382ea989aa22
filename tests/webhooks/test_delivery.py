"""The delivery worker against a real receiver process (`receiver`), with the service as real `serve` and
`webhooks deliver` processes: signed (Standard Webhooks v1, checked by the library a receiver would use),
retried, at least once and — with two workers on one queue — exactly once when nothing fails."""

from __future__ import annotations

import json
import os
import secrets as random_secrets
import signal
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from otp_service.audit.rows import SYSTEM, audit_row
from otp_service.core.actions import Action
from otp_service.core.transitions import AuditEvent, to_datetime
from otp_service.db.models import AuditLog, WebhookDelivery, WebhookEndpoint
from otp_service.service import build_service
from tests.conftest import API_KEY, settings_for
from tests.helpers import code_at
from tests.serving import free_port, http, output, production_env, run_cli, start_cli, two_servers, wait_healthy
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
    procs = {}

    def start(*args: str, **env: str) -> int:
        port = free_port()
        proc = start_cli("serve", *args, cwd=tmp_path, PORT=str(port), **service_env(db_url, **env))
        procs[port] = proc
        wait_healthy(port, proc)
        return port

    start.procs = procs
    yield start
    for proc in procs.values():
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


def test_retried_after_a_500_then_delivered(receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/flaky", "500,500,200"))
    receiver.trust("/flaky", *shown)
    register(serve(), "dev-1")
    (row,) = wait_for(lambda: settled(database, endpoint, 1))
    assert (row["status"], row["attempts"], row["last_status"], row["last_error"]) == ("delivered", 3, 200, None)
    got = receiver.log("/flaky")
    assert [g["attempt"] for g in got] == [1, 2, 3] and len({g["id"] for g in got}) == 1  # one id for every retry
    assert all(g["verified"] == [True] for g in got)


def test_a_timeout_is_retried(receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/slow", "sleep:3,200"))  # WEBHOOK_TIMEOUT_SECONDS=1
    receiver.trust("/slow", *shown)
    register(serve(), "dev-1")
    (row,) = wait_for(lambda: settled(database, endpoint, 1))
    assert row["status"] == "delivered" and row["attempts"] == 2
    assert [g["step"] for g in receiver.log("/slow")] == ["sleep:3", "200"]


def test_delays_grow_and_exhausted_attempts_fail(receiver, serve, database):
    """WEBHOOK_RETRY_SCHEDULE "1 2 4": four attempts, the gaps about 1, 2 and 4 s (±20 %, plus a poll of 0.05 s)."""
    endpoint, shown = add_endpoint(database, receiver.url("/down", "503"))
    receiver.trust("/down", *shown)
    register(serve(WEBHOOK_POLL_SECONDS="0"), "dev-1")
    (row,) = wait_for(lambda: settled(database, endpoint, 1), timeout=40)
    assert (row["status"], row["attempts"], row["last_status"]) == ("failed", 4, 503)
    assert row["last_error"].startswith("HTTP 503") and "test receiver" in row["last_error"]
    arrived = [g["arrived"] for g in receiver.log("/down")]
    gaps = [b - a for a, b in zip(arrived, arrived[1:], strict=False)]
    assert len(gaps) == 3 and gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[0] >= 0.8 and gaps[2] >= 3.2, gaps


def test_retry_after_is_obeyed(receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/busy", "429:3,200"))
    receiver.trust("/busy", *shown)
    register(serve(), "dev-1")
    (row,) = wait_for(lambda: settled(database, endpoint, 1))
    assert row["status"] == "delivered" and row["attempts"] == 2
    first, second = receiver.log("/busy")
    assert second["arrived"] - first["arrived"] >= 2.9  # the schedule alone would have waited about 1 s


def test_410_disables_the_endpoint_cancels_its_queue_and_is_audited(tmp_path, db_url, receiver, serve, database):
    gone, _ = add_endpoint(database, receiver.url("/gone", "410"))
    other, shown = add_endpoint(database, receiver.url("/other"))
    receiver.trust("/other", *shown)
    port = serve(WEBHOOK_DELIVERY="false")  # queue first: several deliveries wait for the endpoint
    for n in range(5):
        register(port, f"dev-{n}")
    with database.connection_context():  # one is due only later: still queued when the 410 comes
        WebhookDelivery.update(next_attempt_at=datetime(2099, 1, 1)).where(
            WebhookDelivery.id == max(d["id"] for d in deliveries(database, gone))
        ).execute()
    deliver_once(tmp_path, db_url)
    rows = deliveries(database, gone)
    assert {r["status"] for r in rows} <= {"failed", "cancelled"} and "failed" in {r["status"] for r in rows}
    assert rows[-1]["status"] == "cancelled" and rows[-1]["attempts"] == 0
    assert all(r["last_status"] == 410 for r in rows if r["status"] == "failed")
    assert [r["status"] for r in deliveries(database, other)] == ["delivered"] * 5  # the other endpoint is unaffected
    with database.connection_context():
        endpoint = WebhookEndpoint.get_by_id(gone)
        assert endpoint.disabled_at is not None and endpoint.disabled_reason == "GONE"
        audited = list(AuditLog.select().where(AuditLog.action == Action.WEBHOOK_ENDPOINT_DISABLED).dicts())
    assert len(audited) == 1 and audited[0]["reason"] == "GONE" and audited[0]["success"]
    assert (
        json.loads(audited[0]["additional_data"])["endpoint"] == gone and "cancelled" in audited[0]["additional_data"]
    )
    register(port, "dev-later")  # a disabled endpoint is sent nothing more
    assert len(deliveries(database, gone)) == 5
    assert run_cli("audit", "verify", cwd=tmp_path, **service_env(db_url)).returncode == 0


def test_during_a_rotation_both_secrets_verify(receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/rotated"), previous=True)
    receiver.trust("/rotated", *shown)
    register(serve(), "dev-1")
    wait_for(lambda: settled(database, endpoint, 1))
    (got,) = receiver.log("/rotated")
    assert got["signatures"] == 2 and got["verified"] == [True, True]


def test_after_the_grace_period_only_the_new_secret_signs(receiver, serve, database):
    endpoint, (new, old) = add_endpoint(database, receiver.url("/rotated"), previous=True)
    with database.connection_context():
        WebhookEndpoint.update(previous_valid_until=datetime(2020, 1, 1)).where(
            WebhookEndpoint.id == endpoint
        ).execute()
    receiver.trust("/rotated", new, old)
    register(serve(), "dev-1")
    wait_for(lambda: settled(database, endpoint, 1))
    (got,) = receiver.log("/rotated")
    assert got["signatures"] == 1 and got["verified"] == [True, False]


def test_queued_with_no_worker_running_is_delivered_by_deliver_once(tmp_path, db_url, receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/later"))
    receiver.trust("/later", *shown)
    port = serve(WEBHOOK_DELIVERY="false")
    for n in range(3):
        register(port, f"dev-{n}")
    time.sleep(1.5)
    assert receiver.log("/later") == [] and {r["status"] for r in deliveries(database, endpoint)} == {"pending"}
    done = deliver_once(tmp_path, db_url)
    assert "webhook attempts made: 3" in done.stdout
    assert [r["status"] for r in deliveries(database, endpoint)] == ["delivered"] * 3
    assert sorted(g["id"] for g in receiver.log("/later")) == sorted(
        f"msg_{r['message_id']}" for r in deliveries(database, endpoint)
    )


def test_a_worker_killed_mid_delivery_leaves_it_to_be_delivered_after_the_lease(
    tmp_path, db_url, receiver, serve, database
):
    endpoint, shown = add_endpoint(database, receiver.url("/crash", "sleep:4,200"))
    receiver.trust("/crash", *shown)
    env = {"WEBHOOK_TIMEOUT_SECONDS": "10"}
    port = serve(**env)
    register(port, "dev-1")
    wait_for(lambda: receiver.log("/crash"))  # the receiver has it, and sleeps
    os.kill(serve.procs[port].pid, signal.SIGKILL)  # a single-process serve: that pid is the worker
    serve.procs[port].wait(10)
    (row,) = deliveries(database, endpoint)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert "webhook attempts made: 0" in deliver_once(tmp_path, db_url, **env).stdout  # leased: not sent twice
    with database.connection_context():  # the lease (timeout + 30 s) runs out
        WebhookDelivery.update(next_attempt_at=datetime(2000, 1, 1)).where(WebhookDelivery.id == row["id"]).execute()
    assert "webhook attempts made: 1" in deliver_once(tmp_path, db_url, **env).stdout
    (row,) = deliveries(database, endpoint)
    assert row["status"] == "delivered" and row["attempts"] == 2
    assert [g["step"] for g in receiver.log("/crash")] == ["sleep:4", "200"]


def queue_event(database, db_url: str) -> None:
    """An event (client.created) written as the service writes one, without a service process."""
    service = build_service(settings_for(db_url), database)
    event = AuditEvent(Action.CLIENT_CREATED, True, None, {"client": "x"})
    with database.connection_context(), database.atomic():
        service.journal.append([audit_row(event, to_datetime(time.time()), None, None, SYSTEM)])


def verify(port: int, device_id: str, registration: dict) -> int:
    status, body = http(
        "POST",
        f"http://127.0.0.1:{port}/api/v1/otp/verify",
        {"device_id": device_id, "otp": code_at(registration, time.time())},
        {"Authorization": f"Bearer {API_KEY}"},
    )
    return status


def test_two_workers_deliver_every_event_exactly_once_per_endpoint(tmp_path, db_url, receiver, database):
    """Two `serve` processes, both running the worker on one queue, under a burst of registrations and
    verifications on both: each event reaches each endpoint once, signed, with one id for both endpoints."""
    first, first_secret = add_endpoint(database, receiver.url("/a"))
    second, second_secret = add_endpoint(database, receiver.url("/b"))
    receiver.trust("/a", *first_secret)
    receiver.trust("/b", *second_secret)
    devices = 60
    servers = two_servers(tmp_path, service_env(db_url, WEBHOOK_POLL_SECONDS="0", DB_POOL_SIZE="8"))
    ports = next(servers)

    def burst(n: int) -> tuple[int, ...]:
        registration = register(ports[n % 2], f"burst-{n}")
        return tuple(verify(ports[(n + k) % 2], f"burst-{n}", registration) for k in range(3))

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(burst, range(devices)))
        assert all(status == 200 for statuses in answers for status in statuses)
        wait_for(lambda: settled(database, first, devices) and settled(database, second, devices), timeout=60)
    finally:
        servers.close()  # both stopped (SIGTERM) before the counts: nothing more can arrive
    for endpoint, path in ((first, "/a"), (second, "/b")):
        rows = deliveries(database, endpoint)
        assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 1)] * devices
        got = receiver.log(path)
        assert len(got) == devices and all(g["verified"] == [True] for g in got)
        assert set(Counter(g["id"] for g in got).values()) == {1}
        assert {g["type"] for g in got} == {"device.registered"}
    assert {g["id"] for g in receiver.log("/a")} == {g["id"] for g in receiver.log("/b")}  # the message's id


def test_a_private_address_is_refused_at_delivery_time(tmp_path, db_url, receiver, database):
    """WEBHOOK_ALLOW_PRIVATE=false: rows pointing at loopback (however spelled) are attempted, refused before any
    connection, and retried later like any failure; the receiver never hears of them."""
    port = receiver.port
    urls = [f"http://127.0.0.1:{port}/p", f"http://localhost:{port}/p", f"http://2130706433:{port}/p"]
    endpoints = [add_endpoint(database, url)[0] for url in urls]

    queue_event(database, db_url)
    done = deliver_once(tmp_path, db_url, WEBHOOK_ALLOW_PRIVATE="false")
    assert "webhook attempts made: 3" in done.stdout
    says = ["127.0.0.1", "127.0.0.1", "unusual spelling"]  # the decimal one is refused by its spelling alone
    for endpoint, said in zip(endpoints, says, strict=True):
        (row,) = deliveries(database, endpoint)
        assert row["status"] == "pending" and row["attempts"] == 1 and row["last_status"] is None
        assert row["last_error"].startswith("refused: ") and said in row["last_error"], row["last_error"]
    assert receiver.log() == []


def test_a_slow_receiver_does_not_hold_up_verifications(receiver, serve, database):
    """Every delivery takes the receiver 5 s; while they are in flight (16 at a time), verifications are answered
    — the worker's sends and database work never block the event loop that answers them."""
    endpoint, shown = add_endpoint(database, receiver.url("/sleepy", "sleep:5"))
    receiver.trust("/sleepy", *shown)
    port = serve(WEBHOOK_TIMEOUT_SECONDS="10")
    registrations = {f"dev-{n}": register(port, f"dev-{n}") for n in range(40)}
    wait_for(lambda: len(receiver.log("/sleepy")) >= 8, timeout=20)
    answered = [verify(port, device, reg) for device, reg in list(registrations.items()) * 2]
    assert answered == [200] * 80
    in_flight = [g for g in receiver.log("/sleepy") if g["answered"] is None]
    pending = [r for r in deliveries(database, endpoint) if r["status"] == "pending"]
    assert in_flight and pending  # the verifications were answered while deliveries were still being sent
    proc = serve.procs[port]
    proc.terminate()  # SIGTERM with sends in flight: they get the grace period, then the process exits cleanly
    assert proc.wait(30) == 0
    assert "Traceback" not in output(proc)[1]


def test_a_redirect_is_not_followed(receiver, serve, database):
    endpoint, shown = add_endpoint(database, receiver.url("/moved", "302,200"))
    receiver.trust("/moved", *shown)
    register(serve(), "dev-1")
    (row,) = wait_for(lambda: settled(database, endpoint, 1))
    assert row["status"] == "delivered" and row["attempts"] == 2  # the 302 was a failed attempt, retried
    assert [g["path"] for g in receiver.log()] == ["/moved", "/moved"]  # nothing went to /elsewhere


def test_metrics_count_deliveries_across_processes(receiver, serve, database):
    """`serve --processes 2` (multiprocess metrics): the outcomes, the attempt times and the queue's gauges."""
    endpoint, shown = add_endpoint(database, receiver.url("/m", "500,200"))
    receiver.trust("/m", *shown)
    token = "metrics-token-" + "0123456789" * 3
    port = serve("--processes", "2", METRICS_TOKEN=token)
    register(port, "dev-1")
    wait_for(lambda: settled(database, endpoint, 1))
    time.sleep(1.5)  # a poll after the delivery: the gauges read the emptied queue
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("otp_webhook"))
    assert float(samples['otp_webhook_deliveries_total{outcome="delivered"}']) == 1
    assert float(samples['otp_webhook_deliveries_total{outcome="retry"}']) == 1
    assert float(samples["otp_webhook_delivery_seconds_count"]) == 2
    assert float(samples["otp_webhook_queue_oldest_seconds"]) == 0
    assert float(samples["otp_webhook_endpoints_disabled"]) == 0


def test_the_queue_gauges_are_read_when_scraped_with_no_worker(receiver, serve, database):
    """The newcomer's review: with WEBHOOK_DELIVERY=false only workers refreshed the gauges, so the alert meant
    for "no worker is delivering" read 0. A scrape reads the queue itself."""
    endpoint, shown = add_endpoint(database, receiver.url("/idle"))
    receiver.trust("/idle", *shown)
    token = "metrics-token-" + "0123456789" * 3
    port = serve(WEBHOOK_DELIVERY="false", METRICS_TOKEN=token)
    register(port, "dev-1")
    time.sleep(2.2)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("otp_webhook"))
    assert float(samples["otp_webhook_queue_oldest_seconds"]) >= 2
    assert [r["status"] for r in deliveries(database, endpoint)] == ["pending"] and receiver.log("/idle") == []


def test_a_worker_with_another_master_secret_sends_nothing(tmp_path, db_url, receiver, database):
    """The newcomer's review: `webhooks deliver` run with another master secret (another folder's .dev-secrets, a
    misconfigured instance) signed every delivery with a key no receiver had, and a receiver that did not check
    took them. The endpoint keeps its key's SHA-256; a worker whose key differs sends nothing and says why."""
    endpoint, _ = add_endpoint(database, receiver.url("/wrong"))
    queue_event(database, db_url)
    done = deliver_once(tmp_path, db_url, MASTER_SECRET=random_secrets.token_urlsafe(32))
    assert "webhook attempts made: 1" in done.stdout and "is not the endpoint's" in done.stderr
    (row,) = deliveries(database, endpoint)
    assert row["status"] == "pending" and row["last_error"].startswith("not sent: this worker's master secret")
    assert receiver.log("/wrong") == []


def test_production_sends_only_over_https(tmp_path, db_url, receiver, database):
    """An http:// row (say, made before production) is refused at delivery in production, before any lookup."""
    endpoint, _ = add_endpoint(database, receiver.url("/plain"))
    queue_event(database, db_url)
    done = run_cli("webhooks", "deliver", "--once", cwd=tmp_path, **production_env(db_url, API_KEY))
    assert done.returncode == 0, done.stderr
    (row,) = deliveries(database, endpoint)
    assert row["status"] == "pending" and row["last_error"] == "refused: the URL must use https in production"
    assert receiver.log() == []
