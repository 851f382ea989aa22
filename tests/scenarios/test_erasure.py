"""An erasure erases everything that names the user (issue 25): their rows' personal fields, the routes of
refused requests (audited as templates), the access log (route templates), stored reports (withdrawn, then
made again without them) — and it is atomic against traffic: no request deciding on the user's old state
writes a row naming them after the erasure."""

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from otp_service.core.actions import Action
from otp_service.db.models import AuditLog, Report
from otp_service.http.logs import configure_logging
from tests.conftest import API_KEY, PG_URL
from tests.helpers import audit_rows, code_at, make_client, wrong_code
from tests.serving import http, production_env, run_cli, two_servers

VICTIM = "victim@example.com"


def rows_naming(database, text: str) -> list:
    """Every audit row that holds `text` in any column."""
    with database.connection_context():
        return [r for r in AuditLog.select() if text in json.dumps(list(r.__data__.values()), default=str)]


def a_report(database, kind="audit", html="<p>…</p>"):
    with database.connection_context():
        return Report.insert(
            kind=kind,
            period_start=datetime(2025, 11, 24),
            period_end=datetime(2025, 11, 25),
            created_at=datetime(2025, 11, 25),
            html=html,
            data_zip=b"PK",
            pdf=b"%PDF",
            subject=VICTIM if kind == "user" else None,
        ).execute()


def test_after_an_erasure_no_row_log_line_or_report_names_the_user(make_server, settings, database, clock):
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        api = make_server(settings).client
        reader = make_client(database, "helpdesk", "verify")  # refused the read routes: ACCESS_DENIED rows
        reg = api.post("/api/v1/devices/register", {"device_id": "V1", "user_id": VICTIM}).body["data"]
        api.post("/api/v1/otp/verify", {"device_id": "V1", "otp": code_at(reg, clock.now)})
        assert api.get(f"/api/v1/users/{VICTIM}/devices", auth=reader).status == 403
        assert api.get(f"/api/v1/users/{VICTIM}/audit", auth=reader).status == 403
        report = a_report(database, html=f"<td>{VICTIM}</td>")
        own = a_report(database, kind="user", html=f"<h1>{VICTIM}</h1>")
        assert api.get(f"/api/v1/reports/{own}/data", headers={"X-Actor": "auditor"}).status == 200
        assert api.get("/api/v1/reports").status == 200
        (download,) = audit_rows(database, action=Action.REPORT_DOWNLOADED)
        assert download.user_id == VICTIM  # a user report's download names its subject, until the erasure
        erased = api.post(f"/api/v1/users/{VICTIM}/erase").body["data"]
        assert erased["reports_withdrawn"] == 1 and erased["user_reports"] == 1
        assert api.get(f"/api/v1/users/{VICTIM}/devices").body["data"]["devices"] == []
    finally:
        logging.getLogger().handlers.clear()
    assert rows_naming(database, VICTIM) == []
    (download,) = audit_rows(database, action=Action.REPORT_DOWNLOADED)  # kept, naming no one
    assert download.user_id is None and json.loads(download.additional_data)["report"] == own
    assert len(audit_rows(database, action=Action.REPORTS_LISTED)) == 1
    assert VICTIM not in stream.getvalue() and "victim%40example.com" not in stream.getvalue()
    assert '"path": "/api/v1/users/{user_id}/erase"' in stream.getvalue()  # the access log keeps the template
    with database.connection_context():
        withdrawn = Report.get_by_id(report)
        assert withdrawn.withdrawn_at is not None and VICTIM not in withdrawn.html and withdrawn.pdf is None
        assert bytes(withdrawn.data_zip) == b"" and not Report.select().where(Report.id == own).exists()
    gone = api.get(f"/api/v1/reports/{report}")
    assert gone.status == 410 and gone.body["error"]["code"] == "REPORT_WITHDRAWN"
    listed = api.get("/api/v1/reports").body["data"]["reports"]
    assert [(r["id"], r["withdrawn"]) for r in listed] == [(report, True)]


def test_a_report_that_began_before_the_user_did_is_kept(api, database, clock):
    """Only reports whose period ends after the user's first record can name them."""
    with database.connection_context():
        older = Report.insert(
            kind="usage",
            period_start=datetime(2020, 1, 1),
            period_end=datetime(2020, 1, 2),
            created_at=datetime(2020, 1, 2),
            html="<p>January 2020</p>",
            data_zip=b"PK",
        ).execute()
    api.post("/api/v1/devices/register", {"device_id": "V2", "user_id": VICTIM})
    assert api.post(f"/api/v1/users/{VICTIM}/erase").body["data"]["reports_withdrawn"] == 0
    assert api.get(f"/api/v1/reports/{older}").status == 200


@pytest.mark.slow
def test_report_regenerate_makes_withdrawn_reports_again_without_the_user(tmp_path):
    db = f"sqlite:///{tmp_path}/demo.db"
    assert run_cli("demo-data", "--database-url", db, cwd=tmp_path).returncode == 0
    period = ("--start", "2026-02-01", "--end", "2026-02-28")
    made = run_cli("report", "audit", *period, "--database-url", db, "--actor", "rita (CHG-88)", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    victim = "user016@example.com"  # the demo's attacked user: named in the audit report
    from otp_service.db.database import open_database

    database = open_database(db)
    with database.connection_context():
        before = Report.get(Report.kind == "audit").html
    assert victim in before
    erased = run_cli("users", "erase", victim, "--database-url", db, cwd=tmp_path)
    assert erased.returncode == 0 and "1 stored report(s)" in erased.stdout, erased.stdout + erased.stderr
    again = run_cli("report", "regenerate", "--database-url", db, cwd=tmp_path)
    assert again.returncode == 0 and "made again: report 1" in again.stdout, again.stdout + again.stderr
    with database.connection_context():
        after = Report.get(Report.kind == "audit")
    assert after.withdrawn_at is None and victim not in after.html and "Intact" in after.html
    assert victim.encode() not in bytes(after.data_zip) and after.pdf is not None
    # each report made is a row: the first with the person its --actor named, the second made again
    with database.connection_context():
        generated = list(AuditLog.select().where(AuditLog.action == Action.REPORT_GENERATED).order_by(AuditLog.id))
    facts = [json.loads(r.additional_data) for r in generated]
    assert [(f["report"], f["kind"], f["regenerated"], f["intact"], f.get("by")) for f in facts] == [
        (after.id, "audit", False, True, "rita (CHG-88)"),
        (after.id, "audit", True, True, None),
    ]
    assert all(r.actor == "command-line" and r.user_id is None for r in generated)
    assert (facts[0]["first_day"], facts[0]["last_day"]) == ("2026-02-01", "2026-02-28")
    database.close_all()


@pytest.fixture
def two_processes(tmp_path, database):
    yield from two_servers(tmp_path, production_env(PG_URL, API_KEY, DB_POOL_SIZE="8", OTP_MAX_FAILURES="3"))


@pytest.fixture
def two_unlimited(tmp_path, database):
    """Two processes whose report downloads are not rate limited (the counters live in the shared Redis, so
    each trial's hundreds of downloads would otherwise meet the last trial's as 429s)."""
    limits = {"RATE_LIMIT_PER_CLIENT": "reports=1000000/minute", "RATE_LIMIT_PER_TENANT": "reports=1000000/minute"}
    yield from two_servers(tmp_path, production_env(PG_URL, API_KEY, DB_POOL_SIZE="8", **limits))


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_an_erasure_during_traffic_leaves_no_row_naming_the_user(two_processes, database, trial):
    """The attack review's race: a burst of codes at the user's devices (wrong ones, then refusals while
    locked) and of wrong recovery codes, across two processes, while the user is erased. Refusals were
    recorded without holding their row, so rows committed after the erasure's UPDATE escaped it (4-22 rows
    in 5 of 5 trials); a recovery attempt that waited on the set's row while the erasure deleted it recorded
    "no recovery codes" naming the user (30 rows in each of 2 trials of the second review)."""
    first, second = two_processes
    headers = {"Authorization": f"Bearer {API_KEY}"}
    regs = []
    for n in range(4):
        body = {"device_id": f"R{trial}-{n}", "user_id": VICTIM}
        status, reg = http("POST", f"http://127.0.0.1:{first}/api/v1/devices/register", body, headers)
        assert status == 201
        regs.append(reg["data"])
    status, _ = http("POST", f"http://127.0.0.1:{first}/api/v1/users/{VICTIM}/recovery-codes", None, headers)
    assert status == 201
    stop = threading.Event()

    def hammer(n: int) -> None:
        reg, port = regs[n % len(regs)], (first, second)[n % 2]
        while not stop.is_set() and n >= 6:  # two threads at the recovery codes
            body = {"code": f"{n}{n}{n}{n}-3333-4444"}  # well-formed, wrong
            http("POST", f"http://127.0.0.1:{port}/api/v1/users/{VICTIM}/recovery-codes/verify", body, headers)
        while not stop.is_set():
            body = {"device_id": reg["device_id"], "otp": wrong_code(reg, datetime.now().timestamp())}
            http("POST", f"http://127.0.0.1:{port}/api/v1/otp/verify", body, headers)

    with ThreadPoolExecutor(8) as pool:
        for n in range(8):
            pool.submit(hammer, n)
        threading.Event().wait(0.5)
        status, erased = http("POST", f"http://127.0.0.1:{second}/api/v1/users/{VICTIM}/erase", None, headers)
        threading.Event().wait(0.5)  # the burst goes on after the erasure: those rows name nobody
        stop.set()
    assert status == 200 and erased["data"]["devices"] == 4 and erased["data"]["recovery_codes"] == 1
    assert rows_naming(database, VICTIM) == []


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_downloads_of_a_user_report_during_its_erasure_leave_no_row_naming_the_user(two_unlimited, database, trial):
    """A download's row names a user report's subject (issue 23). Downloads in flight while the user is erased
    either commit their row before the erasure deletes the report (which waits on the row they hold) — and the
    erasure empties it — or find the report gone (404): no row naming the user survives."""
    first, second = two_unlimited
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Actor": "auditor"}
    status, _ = http(
        "POST",
        f"http://127.0.0.1:{first}/api/v1/devices/register",
        {"device_id": f"U{trial}", "user_id": VICTIM},
        headers,
    )
    assert status == 201
    own = a_report(database, kind="user", html=f"<h1>{VICTIM}</h1>")
    stop = threading.Event()
    started = []  # (when a download began, its status), in the order they finished

    def download(n: int) -> None:
        port = (first, second)[n % 2]
        while not stop.is_set():
            began = time.monotonic()
            started.append((began, fetched(f"http://127.0.0.1:{port}/api/v1/reports/{own}/data", headers)))

    with ThreadPoolExecutor(6) as pool:
        for n in range(6):
            pool.submit(download, n)
        threading.Event().wait(0.4)
        status, _ = http("POST", f"http://127.0.0.1:{second}/api/v1/users/{VICTIM}/erase", None, headers)
        erased_at = time.monotonic()
        deadline = erased_at + 20  # a loaded machine's downloads may take a while: wait for six begun after it
        while sum(began > erased_at for began, _ in started) < 6 and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        stop.set()
    served = [code for _, code in started]
    after = [code for began, code in started if began > erased_at]
    assert status == 200 and 200 in served and len(after) >= 6 and set(after) == {404}, (status, after)
    assert rows_naming(database, VICTIM) == []
    with database.connection_context():
        downloads = AuditLog.select().where(AuditLog.action == Action.REPORT_DOWNLOADED).count()
    assert downloads == served.count(200)  # every file handed out has its row


def fetched(url: str, headers: dict) -> int:
    """The status of a GET whose body is a file, not JSON."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
