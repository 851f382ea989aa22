"""What webhooks cost the hot paths (issue 22): one service, one database, runs alternating between no endpoint
and one endpoint subscribed to every event (its receiver a separate process on this machine, answering 204), so
the two arms share the machine's drift. Each arm's median throughput per scenario, and the ratio subscribed / none:
the outbox (a message and a delivery written in the audit row's transaction) and the delivery worker (in every
`serve` process, sending while the load runs) together must cost at most 10 %.

The service runs with ENVIRONMENT=test, as only outside production may an endpoint point at this machine
(WEBHOOK_ALLOW_PRIVATE); both arms run so.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from .load import SCENARIOS, Bodies, Config, database_url, free_port, seed_devices, start_service, stop, wait_ready, wrk

RECEIVER = Path(__file__).with_name("receiver.py")
ARMS = ("none", "subscribed")


def run(
    scenarios: list[str], duration: float, runs: int, warmup: float, connections: int, devices: int, processes: int = 2
) -> dict:
    config = Config("postgres", processes, "memory")
    workdir = Path(tempfile.mkdtemp(prefix="otp-webhooks-"))
    try:
        url = database_url(config, workdir)
        bodies = Bodies(workdir, seed_devices(url, devices))
        receiver_port, port = free_port(), free_port()
        receiver = subprocess.Popen([sys.executable, str(RECEIVER), str(receiver_port)], stdout=subprocess.DEVNULL)
        wait_ready(receiver_port, receiver, "/count")
        extra = {"ENVIRONMENT": "test", "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_DELIVERY": "true"}
        service = start_service(config, url, port, workdir, extra)
        samples: dict[str, dict[str, list[dict]]] = {s: {arm: [] for arm in ARMS} for s in scenarios}
        try:
            for name in scenarios:
                method, route, make = SCENARIOS[name]
                per_run = int(2000 * (duration + 2))  # valid codes need a fresh device each: ~1,000 req/s here
                if warmup:
                    wrk(port, make(bodies, int(2000 * (warmup + 1))), method, route, warmup, connections)
                for n in range(runs):
                    for arm in ARMS if n % 2 == 0 else ARMS[::-1]:  # ABBA: neither arm always goes first
                        _set_endpoint(url, f"http://127.0.0.1:{receiver_port}/hook" if arm == "subscribed" else None)
                        samples[name][arm].append(
                            wrk(port, make(bodies, per_run), method, route, duration, connections)
                        )
            time.sleep(3)  # the worker sends what is still queued
            queued, delivered = _deliveries(url)
            received = int(urllib.request.urlopen(f"http://127.0.0.1:{receiver_port}/count", timeout=5).read())
        finally:
            stop(service)
            stop(receiver)
        result: dict = {"processes": processes, "scenarios": {}}
        for name in scenarios:
            arms = {arm: statistics.median(s["rps"] for s in samples[name][arm]) for arm in ARMS}
            errors = sum(s["non_2xx"] + s["socket_errors"] for arm in ARMS for s in samples[name][arm])
            result["scenarios"][name] = {
                "none_rps": arms["none"],
                "subscribed_rps": arms["subscribed"],
                "ratio": arms["subscribed"] / arms["none"],
                "runs": {arm: [round(s["rps"]) for s in samples[name][arm]] for arm in ARMS},
                "errors": errors,
            }
        result |= {"deliveries_queued": queued, "deliveries_delivered": delivered, "receiver_got": received}
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _set_endpoint(url: str, receiver: str | None) -> None:
    """One endpoint taking every event (`receiver`), or none: deleted endpoints take nothing more."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from otp_service.db.database import open_database
    from otp_service.db.models import WebhookEndpoint, db
    from otp_service.webhooks.secrets import new_salt

    database = open_database(url, 1)
    db.initialize(database)
    with database.connection_context(), database.atomic():
        WebhookEndpoint.update(disabled_at=WebhookEndpoint.created_at, disabled_reason="DISABLED").where(
            WebhookEndpoint.disabled_at.is_null()
        ).execute()
        if receiver:
            WebhookEndpoint.create(
                tenant_id=1,
                url=receiver,
                salt=new_salt(),
                key_version=1,
                created_at=datetime.now(UTC).replace(tzinfo=None),
            )
    database.close_all()


def _deliveries(url: str) -> tuple[int, int]:
    from otp_service.db.database import open_database
    from otp_service.db.models import WebhookDelivery, db

    database = open_database(url, 1)
    db.initialize(database)
    with database.connection_context():
        queued = WebhookDelivery.select().count()
        delivered = WebhookDelivery.select().where(WebhookDelivery.status == "delivered").count()
    database.close_all()
    return queued, delivered


def table(result: dict) -> list[str]:
    lines = [
        "| scenario | no endpoint req/s | one endpoint, every event req/s | ratio | runs (none / subscribed) "
        "| non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["scenarios"].items():
        lines.append(
            f"| {name} | {r['none_rps']:.0f} | {r['subscribed_rps']:.0f} | **{r['ratio']:.0%}** | "
            f"{r['runs']['none']} / {r['runs']['subscribed']} | {r['errors']} |"
        )
    return lines
