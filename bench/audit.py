"""`audit verify` over 1,000,000 chained audit rows in PostgreSQL: wall time and peak memory of the command
an operator (or the daily cron job) runs.

The rows are made the way the service makes them — `Journal.entry` and `integrity.link`, spread over
`AUDIT_CHAINS` chains — and loaded with COPY (writing them through the API would take an hour here).
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tempfile
import time

from .load import PG_ADMIN, ROOT

DB = "otp_bench_audit"
SECRET = "bench-master-secret-0123456789abcdefghijkl"
SIGNING_KEY = "YmVuY2gtYXVkaXQtc2lnbmluZy1rZXktMzItYnl0ZXM="
ACTIONS = ("OTP_VERIFICATION",) * 46 + ("DEVICE_REGISTERED", "AUTH_FAILED", "DEVICE_LOCKED", "RATE_LIMITED")


def _env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": url,
        "MASTER_SECRET": SECRET,
        "AUDIT_SIGNING_KEY": SIGNING_KEY,
        "ENVIRONMENT": "test",
    }


def fill(url: str, rows: int, chains: int, spacing: float = 2.592, devices: int = 10_000) -> float:
    """Chained rows `spacing` seconds apart from 2026-01-01 over `devices` devices, COPYed in; the chains'
    heads set and a checkpoint signed. Returns the seconds taken."""
    from datetime import datetime, timedelta

    import psycopg2

    sys.path.insert(0, str(ROOT))
    from otp_service.audit import chain as integrity
    from otp_service.config import Settings
    from otp_service.db.database import open_database
    from otp_service.service import build_service

    os.environ.update({k: v for k, v in _env(url).items() if k != "PYTHONPATH"})
    service = build_service(Settings.from_env(), open_database(url, 2, 30))
    journal = service.journal
    heads = [(0, integrity.GENESIS)] * chains
    start = datetime(2026, 1, 1)
    started = time.perf_counter()
    conn = psycopg2.connect(url)
    columns = (
        "timestamp, action, success, reason, device_id, user_id, ip_address, user_agent, request_id, "
        "additional_data, actor, chain, seq, entry_hash, personal, subject"
    )
    batch = io.StringIO()
    for n in range(rows):
        action = ACTIONS[n % len(ACTIONS)]
        ok = n % 9 != 0
        row = (
            start + timedelta(seconds=n * spacing),
            action,
            ok,
            None if ok else "INVALID_CODE",
            f"D{n % devices}",
            f"user{n % devices % 8000}@example.com",
            f"198.51.100.{n % 250}",
            "AcmeBank-iOS/5.2",
            f"{n:032x}",
            None if ok else '{"failed_attempts":1}',
            "login-frontend",
        )
        chain = n % chains
        seq, previous = heads[chain]
        entry = journal.entry(row)
        link = integrity.link(previous, entry)
        heads[chain] = (seq + 1, link)
        values = [*row, chain, seq + 1, link, entry.personal, entry.subject]
        batch.write("\t".join(_copy(v) for v in values) + "\n")
        if n % 50_000 == 49_999 or n == rows - 1:
            if n % 1_000_000 == 999_999:
                print(f"  {n + 1:,} rows", file=sys.stderr, flush=True)
            batch.seek(0)
            with conn.cursor() as cur:
                cur.copy_expert(f"COPY audit_logs ({columns}) FROM STDIN", batch)
            conn.commit()
            batch = io.StringIO()
    with conn.cursor() as cur:
        for chain, (seq, head) in enumerate(heads):
            cur.execute("UPDATE audit_chains SET seq = %s, head = %s WHERE chain = %s", (seq, head, chain))
        cur.execute("ANALYZE audit_logs")
    conn.commit()
    conn.close()
    service.checkpoint("on-demand")
    return time.perf_counter() - started


def _copy(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def run(rows: int = 1_000_000, chains: int = 16) -> dict:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {DB}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{DB}"
    env = _env(url)
    subprocess.run([sys.executable, "-m", "otp_service", "migrate"], env=env, check=True, capture_output=True)
    try:
        fill_seconds = fill(url, rows, chains)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "otp_service", "audit", "verify"], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with tempfile.TemporaryDirectory() as export:  # retention: half the rows exported, then removed
            started = time.perf_counter()
            pruned = subprocess.run(
                [sys.executable, "-m", "otp_service", "audit", "prune", "--before", _middle(rows), "--export", export],
                env=env,
                capture_output=True,
                text=True,
            )
            prune_seconds = time.perf_counter() - started
            prune_peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        after = subprocess.run(
            [sys.executable, "-m", "otp_service", "audit", "verify"], env=env, capture_output=True, text=True
        )
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.close()
    for name, done in (("audit verify", result), ("audit prune", pruned), ("audit verify after the prune", after)):
        if done.returncode != 0:
            raise SystemExit(f"{name} failed: {done.stdout}{done.stderr}")
    return {
        "rows": rows,
        "chains": chains,
        "fill_seconds": round(fill_seconds, 1),
        "verify_seconds": round(seconds, 1),
        "verify_peak_rss_mib": round(peak_mib),
        "output": result.stdout.strip().splitlines()[0],
        "prune_seconds": round(prune_seconds, 1),
        "prune_peak_rss_mib": round(max(prune_peak_mib, peak_mib)),
        "prune_output": pruned.stdout.strip(),
        "after_prune": after.stdout.strip().splitlines()[0],
    }


def _middle(rows: int) -> str:
    """The day half the rows were written before (they are 2.592 s apart from 2026-01-01)."""
    from datetime import date, timedelta

    return str(date(2026, 1, 1) + timedelta(days=int(rows * 2.592 / 2 / 86400) + 1))


if __name__ == "__main__":
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
