"""HTTP scenarios under load from wrk (a separate process), as ratios against the baseline handler
measured in the same run: verify (valid, fresh devices), verify (wrong code), register, health."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("wrk_script.lua")
# fresh each run: the service runs as production, which refuses a secret written down in the repository
API_KEY = secrets.token_urlsafe(24)
METRICS_TOKEN = secrets.token_urlsafe(32)
MASTER_SECRET = secrets.token_urlsafe(32)
AUDIT_SIGNING_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DB = "otp_bench"
ROUTE_SCOPES = ("verify", "enroll", "manage", "read", "reports", "metrics", "webhooks")  # every limit out of the way


@dataclass
class Config:
    database: str  # sqlite | postgres
    processes: int
    limiter: str  # memory | redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, path: str = "/health", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def database_url(config: Config, workdir: Path) -> str:
    if config.database == "sqlite":
        return f"sqlite:///{workdir}/bench.db"
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {PG_DB}")
    admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{PG_DB}"


def seed_devices(url: str, count: int) -> list[tuple[str, bytes]]:
    """Devices inserted in bulk, derived exactly as registration derives them; returns (id, key)."""
    sys.path.insert(0, str(ROOT))
    from otp_service.core.keys import Keyring, key_fingerprint
    from otp_service.core.transitions import to_datetime
    from otp_service.db.database import migrate, open_database
    from otp_service.db.models import Device

    database = open_database(url, 1)
    migrate(database)
    keyring = Keyring({1: MASTER_SECRET}, 1)
    devices, rows = [], []
    created = to_datetime(time.time() - 3600)
    for i in range(count):
        device_id = f"B{i:07d}"
        key, salt, version = keyring.new_device_key(device_id)
        devices.append((device_id, key))
        rows.append(
            {
                "device_id": device_id,
                "user_id": f"user{i % 5000}@bench.example",
                "salt": salt.hex(),
                "key_version": version,
                "derived_key_hash": key_fingerprint(key),
                "digits": 6,
                "interval": 30,
                "algorithm": "SHA1",
                "is_active": True,
                "created_at": created,
                "usage_count": 0,
                "last_step": -1,
                "drift": 0,
                "failed_attempts": 0,
            }
        )
    with database.connection_context():
        for start in range(0, len(rows), 2000):
            with database.atomic():
                Device.insert_many(rows[start : start + 2000]).execute()
        if config_is_postgres(url):
            database.execute_sql("VACUUM ANALYZE devices")
    database.close_all()
    return devices


def config_is_postgres(url: str) -> bool:
    return url.startswith("postgres")


def start_service(config: Config, url: str, port: int, workdir: Path, extra: dict | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": url,
        "MASTER_SECRET": MASTER_SECRET,
        "API_KEY": API_KEY,
        "METRICS_TOKEN": METRICS_TOKEN,
        "AUDIT_SIGNING_KEY": AUDIT_SIGNING_KEY,
        "ENVIRONMENT": "production",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "RATE_LIMIT_VERIFY": "1000000000/minute",
        "RATE_LIMIT_DEFAULT": "1000000000/minute",
        "RATE_LIMIT_PER_CLIENT": " ".join(f"{scope}=1000000000/minute" for scope in ROUTE_SCOPES),
        "RATE_LIMIT_PER_TENANT": " ".join(f"{scope}=1000000000/minute" for scope in ROUTE_SCOPES),
        "OTP_MAX_FAILURES": "100",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
        "ACCESS_LOG": os.environ.get("BENCH_ACCESS_LOG", "true"),
        "DB_POOL_SIZE": os.environ.get("BENCH_DB_POOL_SIZE", "8"),
    }
    env.update(extra or {})
    env.pop("REDIS_URL", None)
    if config.limiter == "redis":
        env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "otp_service", "serve", "--processes", str(config.processes)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(port, proc)
    return proc


def start_baseline(processes: int, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("baseline.py")), str(port), str(processes)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(port, proc, "/")
    return proc


def wrk(port: int, bodies: Path | None, method: str, route: str, duration: float, connections: int) -> dict:
    threads = 2
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}",
            "--",
            str(bodies) if bodies else "-",
            method,
            route,
            str(threads),
            API_KEY,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


class Bodies:
    """Request bodies for one run, written to a file wrk reads."""

    def __init__(self, workdir: Path, devices: list[tuple[str, bytes]]):
        self.workdir, self.devices, self.cursor, self.serial = workdir, devices, 0, 0

    def _write(self, lines: list[str]) -> Path:
        self.serial += 1
        path = self.workdir / f"bodies-{self.serial}.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    def valid_codes(self, count: int) -> Path:
        """Codes for the current step, each for a device that has not been used yet (so none is a replay)."""
        sys.path.insert(0, str(ROOT))
        from otp_service.core import totp

        now = time.time()
        if self.cursor + count > len(self.devices):
            raise RuntimeError("not enough fresh devices; seed more with --devices")
        chosen = self.devices[self.cursor : self.cursor + count]
        self.cursor += count
        return self._write([json.dumps({"device_id": d, "otp": totp.totp(k, now)}) for d, k in chosen])

    def wrong_codes(self, count: int) -> Path:
        pool = self.devices[-min(len(self.devices), 5000) :]
        return self._write([json.dumps({"device_id": pool[i % len(pool)][0], "otp": "000000"}) for i in range(count)])

    def wrong_codes_for_all(self) -> Path:
        """One wrong code per device, in a shuffled order (wrk cycles through the file)."""
        import random

        order = list(range(len(self.devices)))
        random.Random(7).shuffle(order)
        return self._write([json.dumps({"device_id": self.devices[i][0], "otp": "000000"}) for i in order])

    def registrations(self, count: int) -> Path:
        return self._write(
            [json.dumps({"device_id": f"R{self.serial}-{i}", "user_id": "new@bench.example"}) for i in range(count)]
        )

    def echo(self) -> Path:
        # One line per wrk thread at least: each thread keeps only its share of the lines.
        return self._write([json.dumps({"device_id": "B0000000", "otp": "123456"})] * 64)


SCENARIOS = {  # name: (method, route, bodies)
    "baseline": ("POST", "/", lambda b, n: b.echo()),
    "verify_valid": ("POST", "/api/v1/otp/verify", lambda b, n: b.valid_codes(n)),
    "verify_wrong": ("POST", "/api/v1/otp/verify", lambda b, n: b.wrong_codes(n)),
    "register": ("POST", "/api/v1/devices/register", lambda b, n: b.registrations(n)),
    "health": ("GET", "/health", lambda b, n: None),
}


def run_config(
    config: Config,
    scenarios: list[str],
    duration: float,
    runs: int,
    warmup: float,
    connections: int,
    devices: int,
    expected_rps: int = 4000,
) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="otp-bench-"))
    try:
        url = database_url(config, workdir)
        pool = seed_devices(url, devices)
        bodies = Bodies(workdir, pool)
        service_port, baseline_port = free_port(), free_port()
        service = start_service(config, url, service_port, workdir)
        baseline = start_baseline(config.processes, baseline_port)
        results = {}
        try:
            for name in ["baseline", *scenarios]:
                method, route, make = SCENARIOS[name]
                port = baseline_port if name == "baseline" else service_port
                per_run = int(expected_rps * (duration + 2))
                if warmup:
                    wrk(port, make(bodies, int(expected_rps * (warmup + 1))), method, route, warmup, connections)
                before = audit_counts(url), batch_stats(service_port)
                samples = [wrk(port, make(bodies, per_run), method, route, duration, connections) for _ in range(runs)]
                time.sleep(0.5)  # requests wrk abandoned at its deadline finish
                after = audit_counts(url), batch_stats(service_port)
                results[name] = {
                    **summary(samples),
                    **checks(name, sum(s["requests"] for s in samples), before, after),
                }
            results["rss_mib"] = worker_rss(service.pid)
        finally:
            stop(service)
            stop(baseline)
        base = results["baseline"]["rps"]
        for name in scenarios:
            results[name]["ratio"] = results[name]["rps"] / base
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def audit_counts(url: str) -> dict[tuple[str, bool], int]:
    """Audit rows by (action, success): what the service durably recorded, to check against what wrk saw."""
    query = "SELECT action, success, count(*) FROM audit_logs GROUP BY action, success"
    if config_is_postgres(url):
        import psycopg2

        conn = psycopg2.connect(url)
    else:
        import sqlite3

        conn = sqlite3.connect(url.split("///", 1)[1])
    try:
        cursor = conn.cursor()
        cursor.execute(query)
        return {(action, bool(success)): n for action, success, n in cursor.fetchall()}
    finally:
        conn.close()


def batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the group-commit batch-size histogram, over every worker."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    total = count = 0.0
    for line in urllib.request.urlopen(request, timeout=5).read().decode().splitlines():
        if line.startswith("otp_apply_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("otp_apply_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


AUDITED_ACTION = {
    "verify_valid": "OTP_VERIFICATION",
    "verify_wrong": "OTP_VERIFICATION",
    "register": "DEVICE_REGISTERED",
}


def checks(name: str, requests: int, before: tuple, after: tuple) -> dict:
    """Proof that the throughput was real work: audit rows per answered request (each request writes one;
    a few more when wrk abandons requests at its deadline), the share of valid codes actually accepted,
    and the mean group-commit batch size."""
    action = AUDITED_ACTION.get(name)
    if action is None or not requests:
        return {}
    (rows_before, (sum_before, n_before)), (rows_after, (sum_after, n_after)) = before, after
    written = {k: rows_after.get(k, 0) - rows_before.get(k, 0) for k in rows_after}
    audited = sum(n for (a, _), n in written.items() if a == action)
    result = {"audit_rows_per_request": round(audited / requests, 3)}
    if name == "verify_valid":
        result["accepted_share"] = round(written.get((action, True), 0) / requests, 3)
    if n_after > n_before:
        result["mean_batch"] = round((sum_after - sum_before) / (n_after - n_before), 1)
    return result


def worker_rss(pid: int) -> list[float]:
    """Resident memory of the serving processes (the children when there are several), MiB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    pids = [int(c) for c in children] or [pid]
    sizes = []
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(round(int(line.split()[1]) / 1024, 1))
    return sizes


def run_soak(verifications: int, devices: int, connections: int, chunk_seconds: float = 30.0) -> dict:
    """Resident memory of each serving process while `verifications` verifications go through (PostgreSQL,
    2 processes): wrong codes cycling over more devices than the device cache holds, so every cache
    fills and evicts, and every request writes its audit row. RSS is read after every chunk."""
    config = Config("postgres", 2, "memory")
    workdir = Path(tempfile.mkdtemp(prefix="otp-soak-"))
    try:
        url = database_url(config, workdir)
        pool = seed_devices(url, devices)
        bodies = Bodies(workdir, pool).wrong_codes_for_all()
        port = free_port()
        # Every wrk chunk starts again at the head of the file, so its first devices are hit once a chunk:
        # the most failures a device may take before it locks (a locked device answers 429).
        service = start_service(config, url, port, workdir, {"OTP_MAX_FAILURES": "100"})
        done, samples, non_2xx, started = 0, [], 0, time.monotonic()
        try:
            samples.append({"verifications": 0, "rss_mib": worker_rss(service.pid)})
            while done < verifications:
                result = wrk(port, bodies, "POST", "/api/v1/otp/verify", chunk_seconds, connections)
                done += result["requests"]
                non_2xx += result["non_2xx"] + result["socket_errors"]
                samples.append({"verifications": done, "rss_mib": worker_rss(service.pid)})
                print(f"  soak: {done:,} verifications, RSS {samples[-1]['rss_mib']} MiB", file=sys.stderr, flush=True)
        finally:
            stop(service)
        return {
            "verifications": done,
            "devices": devices,
            "seconds": round(time.monotonic() - started),
            "non_2xx": non_2xx,
            "samples": samples,
            "peak_rss_mib": max(max(s["rss_mib"]) for s in samples),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summary(samples: list[dict]) -> dict:
    """Several wrk runs of one scenario: medians of throughput and latency, errors summed."""
    return {
        "rps": statistics.median(s["rps"] for s in samples),
        "p50_ms": statistics.median(s["p50_us"] for s in samples) / 1000,
        "p99_ms": statistics.median(s["p99_us"] for s in samples) / 1000,
        "non_2xx": sum(s["non_2xx"] for s in samples),
        "socket_errors": sum(s["socket_errors"] for s in samples),
        "runs": [round(s["rps"]) for s in samples],
    }


def _median_run(port: int, bodies: Path, duration: float, runs: int, connections: int) -> dict:
    return summary([wrk(port, bodies, "POST", "/api/v1/otp/verify", duration, connections) for _ in range(runs)])


def run_population(devices: int, limiter: str, duration: float, runs: int, connections: int) -> dict:
    """A production-sized population, processes started cold: wrong codes (each writes its failure and audit
    row) for every one of `devices` devices in a shuffled order, so almost every request is for a device the
    process has not seen (the device cache holds 32,768); a 2-second warm-up on 2,000 other devices opens the
    connections first. Ratio against the empty handler of the same run;
    resident memory of each process at the end."""
    config = Config("postgres", 2, limiter)
    workdir = Path(tempfile.mkdtemp(prefix="otp-population-"))
    try:
        url = database_url(config, workdir)
        pool = seed_devices(url, devices + 2000)
        bodies = Bodies(workdir, pool[:devices])
        shuffled, echo = bodies.wrong_codes_for_all(), bodies.echo()
        warm = Bodies(workdir, pool[devices:]).wrong_codes_for_all()  # devices the measured run never asks for
        baseline_port, port = free_port(), free_port()
        baseline = start_baseline(2, baseline_port)
        try:
            wrk(baseline_port, echo, "POST", "/", 2, connections)
            base = _median_run(baseline_port, echo, duration, runs, connections)
        finally:
            stop(baseline)
        service = start_service(config, url, port, workdir)  # cold: none of the measured devices is known
        try:
            started_rss = worker_rss(service.pid)
            wrk(port, warm, "POST", "/api/v1/otp/verify", 2, connections)  # connections opened, code paths run
            result = _median_run(port, shuffled, duration, runs, connections)
            result["rss_mib_start"], result["rss_mib"] = started_rss, worker_rss(service.pid)
        finally:
            stop(service)
        result["ratio"] = result["rps"] / base["rps"]
        return {"devices": devices, "limiter": limiter, "baseline": base, "verify_wrong_shuffled": result}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_instances(devices: int, duration: float, runs: int, connections: int) -> dict:
    """Two service instances (two `serve` commands on their own ports, one process each) sharing one
    PostgreSQL and one Redis, loaded at once by two wrk processes with valid codes for fresh devices: the
    combined throughput against the empty handler (2 processes) in the same run, and the audit check."""
    config = Config("postgres", 1, "redis")
    workdir = Path(tempfile.mkdtemp(prefix="otp-instances-"))
    try:
        url = database_url(config, workdir)
        bodies = Bodies(workdir, seed_devices(url, devices))
        baseline_port = free_port()
        baseline = start_baseline(2, baseline_port)
        try:
            echo = bodies.echo()
            wrk(baseline_port, echo, "POST", "/", 2, connections)
            base = _median_run(baseline_port, echo, duration, runs, connections)
        finally:
            stop(baseline)
        ports = [free_port(), free_port()]
        services = [start_service(config, url, port, workdir) for port in ports]
        try:
            per_run = int(2500 * (duration + 2))
            combined, before = [], audit_counts(url)
            for _ in range(runs + 1):  # the first is the warm-up
                files = [bodies.valid_codes(per_run // 2) for _ in ports]
                with ThreadPoolExecutor(2) as threads:
                    results = list(
                        threads.map(
                            lambda pf: wrk(pf[0], pf[1], "POST", "/api/v1/otp/verify", duration, connections // 2),
                            zip(ports, files, strict=True),
                        )
                    )
                combined.append(results)
            measured = combined[1:]
            time.sleep(0.5)
            after = audit_counts(url)
        finally:
            for service in services:
                stop(service)
        totals = [sum(r["rps"] for r in results) for results in measured]
        requests = sum(r["requests"] for results in combined for r in results)
        accepted = after.get(("OTP_VERIFICATION", True), 0) - before.get(("OTP_VERIFICATION", True), 0)
        rps = statistics.median(totals)
        return {
            "baseline": base,
            "combined_rps": rps,
            "ratio": rps / base["rps"],
            "per_instance_rps": [round(statistics.median(r[i]["rps"] for r in measured)) for i in range(2)],
            "p99_ms": statistics.median(max(r["p99_us"] for r in results) for results in measured) / 1000,
            "non_2xx": sum(r["non_2xx"] + r["socket_errors"] for results in combined for r in results),
            "accepted_share": round(accepted / requests, 3) if requests else 0,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
