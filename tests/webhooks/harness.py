"""What the delivery tests share: the receiver process, endpoint rows, each endpoint's secret, and the service
processes' environment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta

from otp_service.core.keys import Keyring, key_fingerprint
from otp_service.core.transitions import to_datetime
from otp_service.db.models import WebhookDelivery, WebhookEndpoint
from otp_service.webhooks import catalogue, secrets
from tests.conftest import API_KEY, MASTER_SECRET, settings_for
from tests.serving import ROOT, free_port, http


class Receiver:
    """`tests.webhooks.receiver` on a free loopback port."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.log_file = open(tmp_path / f"receiver-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.webhooks.receiver", str(self.port)],
            cwd=ROOT,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.log()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the receiver did not start")

    def url(self, path: str, plan: str = "200") -> str:
        return f"http://127.0.0.1:{self.port}{path}?plan={plan}"

    def trust(self, path: str, *shown: str) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_secrets{path}", data=json.dumps(list(shown)).encode(), method="PUT"
        )
        urllib.request.urlopen(request, timeout=5).read()

    def log(self, path: str | None = None) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_log", timeout=5) as resp:
            entries = json.loads(resp.read())
        return [e for e in entries if path is None or e["path"] == path]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log_file.close()


def keyring() -> Keyring:
    settings = settings_for("sqlite:///:memory:")
    return Keyring(settings.master_secrets, settings.master_secret_version)


def add_endpoint(database, url: str, tenant_id: int = 1, previous: bool = False, types=None) -> tuple[int, list[str]]:
    """An endpoint row (as the endpoints API makes one) and its secret(s) as shown to a receiver: the current one,
    and with `previous` the one a rotation replaced, still in its grace period."""
    salt, old, ring = secrets.new_salt(), secrets.new_salt(), keyring()
    fields = {"key_hash": key_fingerprint(secrets.signing_key(ring, salt, 1))}
    if previous:
        fields |= {
            "previous_salt": old,
            "previous_key_version": 1,
            "previous_valid_until": datetime.utcnow() + timedelta(hours=1),
            "previous_key_hash": key_fingerprint(secrets.signing_key(ring, old, 1)),
        }
    with database.connection_context():
        endpoint_id = WebhookEndpoint.insert(
            tenant_id=tenant_id,
            url=url,
            event_types=catalogue.normal_types(types),
            salt=salt,
            key_version=1,
            created_at=to_datetime(time.time()),
            **fields,
        ).execute()
    shown = [secrets.shown(secrets.signing_key(ring, s, 1)) for s in ([salt, old] if previous else [salt])]
    return endpoint_id, shown


def service_env(db_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "ENVIRONMENT": "test",
        "MASTER_SECRET": MASTER_SECRET,
        "API_KEY": API_KEY,
        "RATE_LIMIT_VERIFY": "1000000/minute",
        "RATE_LIMIT_DEFAULT": "1000000/minute",
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_TIMEOUT_SECONDS": "1",
        "WEBHOOK_RETRY_SCHEDULE": "1 2 4",
        "WEBHOOK_POLL_SECONDS": "1",
        **extra,
    }


def register(port: int, device_id: str, user_id: str = "alice") -> dict:
    status, body = http(
        "POST",
        f"http://127.0.0.1:{port}/api/v1/devices/register",
        {"device_id": device_id, "user_id": user_id},
        {"Authorization": f"Bearer {API_KEY}"},
    )
    assert status == 201, body
    return body["data"]


def deliveries(database, endpoint_id: int | None = None) -> list[dict]:
    with database.connection_context():
        query = WebhookDelivery.select().order_by(WebhookDelivery.id)
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        return list(query.dicts())


def wait_for(predicate, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not reached within {timeout} s")
