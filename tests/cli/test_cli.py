"""The command line as an operator (and the Docker image) runs it: real processes, real signals."""

import os
import signal
from http.client import HTTPConnection
from pathlib import Path

import pytest

from tests.conftest import API_KEY
from tests.serving import (
    AUDIT_SIGNING_KEY,
    MASTER_SECRET,
    METRICS_TOKEN,
    free_port,
    http,
    output,
    run_cli,
    start_cli,
    wait_healthy,
)

PROD = {
    "ENVIRONMENT": "production",
    "MASTER_SECRET": MASTER_SECRET,
    "API_KEY": API_KEY,
    "METRICS_TOKEN": METRICS_TOKEN,
    "AUDIT_SIGNING_KEY": AUDIT_SIGNING_KEY,
}


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"ENVIRONMENT": "production", "API_KEY": API_KEY}, "MASTER_SECRET"),
        ({"ENVIRONMENT": "production", "MASTER_SECRET": MASTER_SECRET}, "API_KEY"),
        ({**PROD, "MASTER_SECRET": "short"}, "MASTER_SECRET"),
        ({**PROD, "DEBUG": "true"}, "DEBUG"),
        ({**PROD, "METRICS_TOKEN": ""}, "METRICS_TOKEN"),
        ({**PROD, "METRICS_TOKEN": "short-token"}, "METRICS_TOKEN"),
        ({**PROD, "AUDIT_SIGNING_KEY": ""}, "AUDIT_SIGNING_KEY"),
        ({**PROD, "AUDIT_SIGNING_KEY": "c2hvcnQ="}, "AUDIT_SIGNING_KEY"),
        ({**PROD, "MASTER_SECRET": "test-master-secret-0123456789abcdefghijklmnop"}, "MASTER_SECRET"),  # published
        ({**PROD, "METRICS_TOKEN": MASTER_SECRET}, "METRICS_TOKEN"),  # the master secret again
        ({"OTP_DIGITS": "9"}, "OTP_DIGITS"),
        ({"DATABASE_URL": "ftp://x"}, "DATABASE_URL"),
    ],
)
def test_serve_refuses_bad_configuration_with_one_line(tmp_path, env, variable):
    result = run_cli("serve", cwd=tmp_path, **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in result.stderr


def test_migrate_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path}/cli.db"
    first = run_cli("migrate", "--database-url", url, cwd=tmp_path)
    assert first.returncode == 0 and "0001_initial" in first.stdout
    again = run_cli("migrate", "--database-url", url, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_migrate_reports_an_unreachable_database(tmp_path):
    result = run_cli("migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/x", cwd=tmp_path, DB_TIMEOUT="2")
    assert result.returncode == 1 and "cannot reach the database" in result.stderr and "Traceback" not in result.stderr


def test_production_refuses_an_out_of_date_schema(tmp_path):
    url = f"sqlite:///{tmp_path}/prod.db"
    result = run_cli("serve", cwd=tmp_path, DATABASE_URL=url, **PROD)
    assert result.returncode == 1 and "out of date" in result.stderr and "migrate" in result.stderr


def test_development_serve_generates_keeps_and_prints_secrets(tmp_path):
    port = free_port()
    proc = start_cli("serve", cwd=tmp_path, PORT=str(port))
    try:
        wait_healthy(port, proc)
        secrets_file = (tmp_path / ".dev-secrets").read_text()
        key = dict(line.split("=", 1) for line in secrets_file.split())["API_KEY"]
        status, body = http(
            "POST",
            f"http://127.0.0.1:{port}/api/v1/devices/register",
            {"device_id": "D", "user_id": "u"},
            {"Authorization": f"Bearer {key}"},
        )
        assert status == 201 and body["data"]["derived_key"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert key in output(proc)[0]  # printed for the developer
    assert (tmp_path / "otp_service.db").exists() and (tmp_path / ".dev-secrets").stat().st_mode & 0o777 == 0o600
    # A restart reuses the same secrets, so registered devices keep working.
    assert (tmp_path / ".dev-secrets").read_text() == secrets_file


def test_the_banner_never_prints_a_key_or_password_the_operator_set(tmp_path):
    """A deploy that forgets ENVIRONMENT=production runs in development and prints the banner to the
    platform's logs: a key from the environment and the database password must not be in it."""
    port, key = free_port(), "operator-set-key-0123456789"
    url = f"sqlite:///{tmp_path}/banner.db"
    proc = start_cli("serve", cwd=tmp_path, PORT=str(port), API_KEY=key, DATABASE_URL=url)
    try:
        wait_healthy(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    stdout, stderr = output(proc)
    assert key not in stdout + stderr and "<your API_KEY>" in stdout and "from the environment" in stdout
    from otp_service.cli.common import masked_url

    assert masked_url("postgres://otp:s3cr3t-pw@db.internal:5432/otp") == "postgres://otp:***@db.internal:5432/otp"
    assert masked_url(url) == url


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_stops_every_process_cleanly(tmp_path, processes):
    url = f"sqlite:///{tmp_path}/serve.db"
    assert run_cli("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    port = free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**PROD, "TMPDIR": str(temp)}
    proc = start_cli("serve", "--processes", str(processes), cwd=tmp_path, DATABASE_URL=url, PORT=str(port), **env)
    wait_healthy(port, proc)
    children = _children(proc.pid)
    assert len(children) == (processes if processes > 1 else 0)
    assert len(list(temp.glob("otp-metrics-*"))) == (1 if processes > 1 else 0)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    for pid in children:  # no orphan keeps serving
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()
    assert not list(temp.glob("otp-metrics-*"))  # the metrics folder it made is gone with it


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(p) for p in Path(path).read_text().split()] if os.path.exists(path) else []


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_lets_a_slow_request_finish_and_health_turns_503(tmp_path, processes):
    """A registration held up by a database lock is still answered after SIGTERM; meanwhile a
    kept-alive connection sees /health answer 503, so a load balancer stops sending traffic."""
    import sqlite3
    import threading
    import time

    url = f"sqlite:///{tmp_path}/slow.db"
    assert run_cli("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    port = free_port()
    proc = start_cli(
        "serve",
        "--processes",
        str(processes),
        "--grace",
        "15",
        cwd=tmp_path,
        DATABASE_URL=url,
        PORT=str(port),
        DB_TIMEOUT="10",
        **PROD,
    )
    wait_healthy(port, proc)
    keepalive = HTTPConnection("127.0.0.1", port, timeout=10)
    keepalive.request("GET", "/health")
    first = keepalive.getresponse()
    assert first.status == 200 and first.read()

    lock = sqlite3.connect(tmp_path / "slow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    result = {}

    def slow_register():
        result["response"] = http(
            "POST",
            f"http://127.0.0.1:{port}/api/v1/devices/register",
            {"device_id": "SLOW", "user_id": "u"},
            {"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )

    client = threading.Thread(target=slow_register)
    client.start()
    time.sleep(0.8)  # the request is now waiting for the lock
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.8)
    if processes == 1:  # with several processes the kept-alive connection may belong to another child
        keepalive.request("GET", "/health")
        draining = keepalive.getresponse()
        assert draining.status == 503 and b'"draining"' in draining.read()
    assert proc.poll() is None  # still finishing the slow request
    lock.execute("ROLLBACK")
    client.join(30)
    status, body = result["response"]
    assert status == 201 and body["data"]["device_id"] == "SLOW"
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_metrics_are_aggregated_across_processes(tmp_path):
    url = f"sqlite:///{tmp_path}/metrics.db"
    assert run_cli("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    port = free_port()
    proc = start_cli("serve", "--processes", "2", cwd=tmp_path, DATABASE_URL=url, PORT=str(port), **PROD)
    try:
        wait_healthy(port, proc)
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert http("GET", f"http://127.0.0.1:{port}/openapi.json")[0] == 200
        import urllib.request

        for _ in range(4):  # whichever worker answers, it reports both workers' requests
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            )
            text = urllib.request.urlopen(req, timeout=10).read().decode()
            line = next(
                x
                for x in text.splitlines()
                if x.startswith('otp_http_requests_total{handler="OpenApiHandler",method="GET",status="200"}')
            )
            assert float(line.split()[-1]) == 40.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_cli_basics_version_help_and_one_line_errors(tmp_path):
    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("otp-service ")
    top = run_cli("--help", cwd=tmp_path).stdout
    assert all(command in top for command in ("serve", "migrate", "report", "scheduled-report", "demo-data"))
    for command in ("serve", "migrate", "report", "scheduled-report", "demo-data"):
        text = run_cli(command, "--help", cwd=tmp_path).stdout
        assert "(default: None)" not in text and text.count("--") >= 2, command
    assert "(default: 40)" in run_cli("demo-data", "--help", cwd=tmp_path).stdout
    # A bad date is exit 2 in every command, with one line.
    for argv in (("report", "audit", "--start", "2026-13-01", "--end", "2026-02-01"), ("demo-data", "--end", "x")):
        result = run_cli(*argv, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "YYYY-MM-DD" in result.stderr
    # A typo in a SQLite path creates nothing; a report against a missing file says so.
    missing = run_cli("migrate", "--database-url", "sqlite:///no/such/dir/x.db", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and not (tmp_path / "no").exists()
    report = run_cli(
        "report",
        "audit",
        "--start",
        "2026-02-01",
        "--end",
        "2026-02-02",
        "--database-url",
        "sqlite:///absent.db",
        cwd=tmp_path,
    )
    assert report.returncode == 1 and "there is no database" in report.stderr and not (tmp_path / "absent.db").exists()


def test_a_port_in_use_is_one_line_not_a_banner_and_a_traceback(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", cwd=tmp_path, PORT=str(port), timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Try:" not in result.stdout
    assert result.stderr.strip() == f"otp-service: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not (tmp_path / "otp_service.db").exists()  # nothing done before finding out


def test_clients_list_shows_each_clients_tenant(tmp_path):
    db = f"sqlite:///{tmp_path}/t.db"
    assert run_cli("migrate", "--database-url", db, cwd=tmp_path).returncode == 0
    assert run_cli("tenants", "create", "acme", "--database-url", db, cwd=tmp_path).returncode == 0
    made = run_cli(
        "clients", "create", "acme-login", "--scopes", "verify", "--tenant", "acme", "--database-url", db, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    run_cli("clients", "create", "helpdesk", "--scopes", "read", "--database-url", db, cwd=tmp_path)
    listed = run_cli("clients", "list", "--database-url", db, cwd=tmp_path)
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["TENANT", "NAME", "SCOPES"]
    assert [line.split()[:2] for line in lines[1:3]] == [["default", "helpdesk"], ["acme", "acme-login"]]


def test_actor_names_the_person_in_the_rows_each_command_writes(tmp_path):
    """--actor (issue 23): checked like X-Actor, recorded as `by` beside `command-line` in every row the
    command writes (a checkpoint: in its signed text); a bad one ends the command, exit 2, nothing written."""
    import json
    import sqlite3

    db = f"sqlite:///{tmp_path}/t.db"
    assert run_cli("migrate", "--database-url", db, cwd=tmp_path).returncode == 0

    def rows() -> list[tuple]:
        with sqlite3.connect(tmp_path / "t.db") as conn:
            found = conn.execute("SELECT action, actor, additional_data, user_id FROM audit_logs ORDER BY id")
            return [(a, actor, json.loads(d or "{}").get("by"), u) for a, actor, d, u in found]

    def ok(*args: str) -> None:
        done = run_cli(*args, "--database-url", db, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    ok("tenants", "create", "acme", "--actor", "Ｒita")  # NFKC: the one spelling
    ok("tenants", "set", "acme", "OTP_WINDOW=2", "--actor", "rita")
    ok("clients", "create", "ops", "--scopes", "manage", "--actor", "rita (CHG-88)")
    ok("clients", "rotate", "ops", "--actor", "sam")
    ok("clients", "revoke", "ops")  # none said: none recorded
    ok("users", "erase", "nobody@example.com", "--actor", "dpo@example.com")
    assert rows() == [
        ("TENANT_CHANGED", "command-line", "Rita", None),
        ("TENANT_CHANGED", "command-line", "rita", None),
        ("CLIENT_CREATED", "command-line", "rita (CHG-88)", None),
        ("CLIENT_ROTATED", "command-line", "sam", None),
        ("CLIENT_REVOKED", "command-line", None, None),
        ("USER_ERASED", "command-line", "dpo@example.com", None),
    ]
    ok("audit", "checkpoint", "--actor", "sam")
    with sqlite3.connect(tmp_path / "t.db") as conn:
        (payload,) = conn.execute("SELECT payload FROM audit_checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    assert json.loads(payload)["by"] == "sam"
    before = rows()
    for args in (
        ("clients", "create", "ops2", "--scopes", "read"),
        ("tenants", "create", "beta"),
        ("users", "erase", "x@example.com"),
        ("report", "audit", "--start", "2026-02-01", "--end", "2026-02-28"),
    ):
        for bad in ("", " sam", "a\u202eb", "x" * 129):
            refused = run_cli(*args, "--actor", bad, "--database-url", db, cwd=tmp_path)
            assert refused.returncode == 2 and "--actor must name a person or ticket" in refused.stderr, args
            assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert rows() == before
