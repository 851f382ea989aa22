"""The scheduled reports over a production-sized audit table: 10,000,000 chained audit rows in PostgreSQL
(made as the service makes them, spread evenly over `days` days, 100,000 devices), then the daily audit
report and the monthly usage report exactly as the cron jobs run them (papermill, the kernel, nbconvert,
the seal and the verification of the period's rows, stored in the database). Reports wall time, peak
memory and the slowest notebook cells, so what to index (or partition) is read off the figures.

The database (`otp_bench_large`) is kept after the run: filling it takes minutes, and `--reuse` times the
reports again on it (after an index or a notebook changed)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from .audit import _env, fill
from .load import PG_ADMIN

DB = "otp_bench_large"
START = date(2026, 1, 1)
DEVICES = """
INSERT INTO devices (device_id, user_id, salt, key_version, derived_key_hash, digits, interval, algorithm,
                     is_active, created_at, usage_count, last_step, drift, failed_attempts, version)
SELECT 'D' || g, 'user' || (g % 8000) || '@example.com', md5(g::text), 1, md5('k' || g), 6, 30, 'SHA1',
       g % 10 <> 0, TIMESTAMP '2025-12-01' + (g || ' seconds')::interval, g % 200, 0, (g % 5) - 2, 0, 1
FROM generate_series(0, %(devices)s - 1) AS g;
ANALYZE devices;
"""


def _url() -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{DB}"


def prepare(rows: int, days: int, devices: int) -> float:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {DB}")
    admin.close()
    env = _env(_url())
    subprocess.run([sys.executable, "-m", "otp_service", "migrate"], env=env, check=True, capture_output=True)
    conn = psycopg2.connect(_url())
    conn.autocommit = True
    conn.cursor().execute(DEVICES.replace("%(devices)s", str(devices)))
    conn.close()
    return fill(_url(), rows, 16, spacing=days * 86400 / rows, devices=devices)


def _report(kind: str, start: date, end: date) -> dict:
    env = _env(_url())
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "otp_service", "report", kind, "--start", str(start), "--end", str(end)]
            + ["--output-dir", out],
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"report {kind} failed: {done.stdout}{done.stderr}")
        cells = []
        for notebook in Path(out).rglob("*.ipynb"):
            for cell in json.loads(notebook.read_text())["cells"]:
                took = cell.get("metadata", {}).get("papermill", {}).get("duration")
                if took:
                    cells.append((round(took, 2), "".join(cell.get("source", ""))[:60].replace("\n", " ")))
        started = time.perf_counter()
        verify = [sys.executable, "-m", "otp_service", "audit", "verify", "--start", str(start), "--end", str(end)]
        checked = subprocess.run(verify, env=env, capture_output=True, text=True)
        verify_seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "verify_seconds": round(verify_seconds, 1),
        "verify_output": (checked.stdout or checked.stderr).strip().splitlines()[0],
        "start": str(start),
        "end": str(end),
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "slowest_cells": sorted(cells, reverse=True)[:5],
    }


def rows_per_day() -> dict:
    import psycopg2

    conn = psycopg2.connect(_url())
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), min(timestamp), max(timestamp) FROM audit_logs")
        count, first, last = cur.fetchone()
    conn.close()
    return {"rows": count, "first": str(first), "last": str(last)}


def run(rows: int = 10_000_000, days: int = 180, devices: int = 100_000, reuse: bool = False) -> dict:
    fill_seconds = None if reuse else round(prepare(rows, days, devices), 1)
    shape = rows_per_day()
    last_day = START + timedelta(days=days - 1)
    day = last_day - timedelta(days=1)  # a full day inside the data
    month_end = date(last_day.year, last_day.month, 1) - timedelta(days=1)
    month_start = date(month_end.year, month_end.month, 1)
    return {
        **shape,
        "days": days,
        "fill_seconds": fill_seconds,
        "daily_audit": _report("audit", day, day),
        "monthly_usage": _report("usage", month_start, month_end),
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000), indent=2))
