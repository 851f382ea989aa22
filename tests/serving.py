"""Start `python -m otp_service …` as a real child process, the way the Docker image does."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Production refuses a secret written down in the repository: the production instances tests start get fresh
# ones each run (the same in every process of the run).
MASTER_SECRET = secrets.token_urlsafe(32)
METRICS_TOKEN = secrets.token_urlsafe(32)
AUDIT_SIGNING_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**env: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_SECRET", "API_KEY", "DATABASE_URL", "ENVIRONMENT", "DEBUG", "REDIS_URL")
    }
    base["PYTHONPATH"] = str(ROOT)
    base.update(env)
    return base


def production_env(database_url: str, api_key: str, **extra: str) -> dict[str, str]:
    """What a production instance on `database_url` needs, with limits high enough for load tests."""
    return {
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "production",
        "MASTER_SECRET": MASTER_SECRET,
        "API_KEY": api_key,
        "METRICS_TOKEN": METRICS_TOKEN,
        "AUDIT_SIGNING_KEY": AUDIT_SIGNING_KEY,
        "RATE_LIMIT_VERIFY": "1000000/minute",
        "RATE_LIMIT_DEFAULT": "1000000/minute",
        **extra,
    }


def run_cli(*args: str, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "otp_service", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, cwd: Path, **env: str) -> subprocess.Popen:
    """The server's output goes to files, not pipes: an unread pipe fills up and blocks the server's
    logging, which would look exactly like a hung server."""
    stamp = f"{os.getpid()}-{time.monotonic_ns()}"
    out_path, err_path = Path(cwd) / f"server-{stamp}.out", Path(cwd) / f"server-{stamp}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otp_service", *args], cwd=cwd, env=cli_env(**env), stdout=out, stderr=err, text=True
        )
    proc.out_path, proc.err_path = out_path, err_path
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    return proc.out_path.read_text(), proc.err_path.read_text()


def http(method: str, url: str, body=None, headers=None, timeout: float = 10) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {output(proc)[1][-2000:]}")
        try:
            if http("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def two_servers(tmp_path, env: dict[str, str], *serve_args: str):
    """Two `serve` commands on their own ports against `env`'s database; yields the ports."""
    assert run_cli("migrate", cwd=tmp_path, **env).returncode == 0
    ports = [free_port(), free_port()]
    procs = [start_cli("serve", *serve_args, cwd=tmp_path, PORT=str(port), **env) for port in ports]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_healthy(port, proc)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=30)
