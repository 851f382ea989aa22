"""The audit report over 1,000,000 audit rows in PostgreSQL: wall time and peak memory of
`python -m otp_service report audit` (papermill, the kernel, nbconvert: everything a cron job runs)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .load import PG_ADMIN, ROOT

DB = "otp_bench_report"

FILL = """
INSERT INTO devices (device_id, user_id, salt, key_version, derived_key_hash, digits, interval, algorithm,
                     is_active, created_at, usage_count, last_step, drift, failed_attempts)
SELECT 'D' || g, 'user' || (g % 8000) || '@example.com', md5(g::text), 1 + (g % 2), md5('k' || g), 6, 30, 'SHA1',
       g % 10 <> 0, TIMESTAMP '2026-01-01' + (g || ' minutes')::interval, g % 200, 0, (g % 5) - 2, 0
FROM generate_series(1, 10000) AS g;
INSERT INTO audit_logs (timestamp, action, success, reason, device_id, user_id, ip_address, user_agent, request_id)
SELECT TIMESTAMP '2026-02-01' + (g * 2.592 || ' seconds')::interval,
       CASE WHEN g % 50 = 0 THEN 'DEVICE_REGISTERED' WHEN g % 97 = 0 THEN 'AUTH_FAILED'
            WHEN g % 331 = 0 THEN 'DEVICE_LOCKED' ELSE 'OTP_VERIFICATION' END,
       g % 9 <> 0,
       CASE WHEN g % 9 = 0 THEN (ARRAY['INVALID_CODE', 'REPLAYED', 'DEVICE_LOCKED', 'DEVICE_INACTIVE'])[1 + g % 4] END,
       'D' || (1 + g % 10000), 'user' || (g % 8000) || '@example.com',
       '198.51.100.' || (g % 250), 'bench', md5(g::text)
FROM generate_series(1, %(rows)s) AS g;
ANALYZE;
"""


def run(rows: int = 1_000_000) -> dict:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.cursor().execute(f"CREATE DATABASE {DB}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{DB}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "otp_service", "migrate", "--database-url", url],
        env=env,
        check=True,
        capture_output=True,
    )
    conn = psycopg2.connect(url)
    conn.autocommit = True
    started = time.perf_counter()
    conn.cursor().execute(FILL.replace("%(rows)s", str(int(rows))))
    fill_seconds = time.perf_counter() - started
    conn.close()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "otp_service",
                "report",
                "audit",
                "--start",
                "2026-02-01",
                "--end",
                "2026-02-28",
                "--database-url",
                url,
                "--output-dir",
                out,
                "--no-store",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        html_kib = sum(p.stat().st_size for p in Path(out).glob("*.html")) / 1024
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.close()
    return {
        "audit_rows": rows,
        "fill_seconds": round(fill_seconds, 1),
        "report_seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "html_kib": round(html_kib, 1),
    }
