"""The integrity statement (issue 23): a report cites a checkpoint signed before it began and never one it
signed itself; no checkpoint is signed over rows that do not verify — at a report, an erasure, a prune or
on demand; a report over an altered trail exits 3 and states each finding in the words `audit verify`
prints; its header names the environment and the signing key's full public-key fingerprint."""

import base64
import hashlib
import html
import re
import sqlite3

import pytest

from otp_service.audit import checkpoints
from otp_service.core import errors
from otp_service.core.period import Period
from otp_service.core.transitions import to_datetime
from otp_service.db.models import AuditCheckpoint
from otp_service.reports import runner
from tests.audit.test_audit_integrity import CTX, OPS, _exec, history
from tests.helpers import audit_rows, code_at
from tests.serving import run_cli


def signed(database) -> list[tuple[int, str]]:
    with database.connection_context():
        return [(c.id, c.reason) for c in AuditCheckpoint.select().order_by(AuditCheckpoint.id)]


def the_days(clock) -> Period:
    day = to_datetime(clock.now).date()
    return Period(day, day)


@pytest.fixture
def tampered(service, database, clock):
    """A sealed history, then rows after the checkpoint, one of them edited: the rows the next checkpoint
    would seal do not verify."""
    history(service, clock)
    service.checkpoint()
    reg = service.register("LATE", "user9", CTX)
    service.verify("LATE", code_at(reg, clock.now), CTX)
    last = audit_rows(database)[-1]
    _exec(database, "UPDATE audit_logs SET reason = 'FORGED' WHERE id = %s", (last.id,))
    return service


def test_no_checkpoint_is_signed_over_a_tampered_trail(tampered, database, clock, tmp_path):
    before = signed(database)
    with pytest.raises(checkpoints.Unverified):  # on demand (`audit checkpoint`), and after `audit verify`
        tampered.checkpoint("on-demand")
    assert not tampered.verify_audit().intact
    erased = tampered.erase_user("user0", OPS)  # the erasure is done (a legal duty), but not sealed
    assert erased["checkpoint"] is None and erased["devices"] == 2
    with pytest.raises(errors.AuditBroken):
        tampered.prune_audit(to_datetime(clock.now + 86400), tmp_path / "export")
    statement = runner._integrity(tampered.settings, database, the_days(clock), "audit")
    assert not statement["intact"] and statement["findings"]
    assert signed(database) == before  # nothing signed, by anyone


def test_the_report_cites_a_checkpoint_signed_before_it_began(service, database, clock):
    history(service, clock)
    cited = service.checkpoint("on-demand")
    statement = runner._integrity(service.settings, database, the_days(clock), "audit")
    assert statement["intact"] and statement["checkpoint"]["id"] == cited
    assert signed(database)[-1][1] == "report" and signed(database)[-1][0] > cited  # signed after, not cited
    assert statement["checked_at"] and statement["environment"] == "test"
    key = service.audit_keys.signing.public_key()
    fingerprint = hashlib.sha256(_raw(key)).hexdigest()  # of the raw 32-byte key
    assert statement["signing_key"] == {"key_id": service.audit_keys.key_id, "fingerprint": fingerprint}


def _raw(key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _findings(page: str) -> list[str]:
    """The findings the report's integrity statement lists, as text."""
    section = page.split("Integrity of these records", 1)[1].split("<h2", 1)[0]
    return [
        html.unescape(re.sub(r"<[^>]+>", "", item)).strip() for item in re.findall(r"<li>(.*?)</li>", section, re.S)
    ]


@pytest.mark.slow
def test_a_report_over_a_tampered_copy_exits_3_and_says_what_audit_verify_says(tmp_path):
    url = f"sqlite:///{tmp_path}/copy.db"
    assert run_cli("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    made = run_cli("demo-data", "--devices", "6", "--days", "2", "--database-url", url, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    with sqlite3.connect(tmp_path / "copy.db") as db:  # a tail of 2 rows cut from one chain, a row edited in another
        (cut,) = db.execute("SELECT chain FROM audit_logs WHERE id = (SELECT MAX(id) FROM audit_logs)").fetchone()
        db.execute(
            "DELETE FROM audit_logs WHERE chain = ? AND seq > (SELECT MAX(seq) - 2 FROM audit_logs WHERE chain = ?)",
            (cut, cut),
        )
        (edited,) = db.execute(
            "SELECT MIN(id) FROM audit_logs WHERE chain IS NOT NULL AND chain != ? AND timestamp >= '2026-02-28'",
            (cut,),
        ).fetchone()
        db.execute("UPDATE audit_logs SET reason = 'X' WHERE id = ?", (edited,))
        before = db.execute("SELECT COUNT(*) FROM audit_checkpoints").fetchone()[0]
    days = ("--start", "2026-02-27", "--end", "2026-03-01")
    report = run_cli("report", "audit", *days, "--database-url", url, "--output-dir", "out", cwd=tmp_path, timeout=300)
    assert report.returncode == 3, report.stderr
    assert "ALTERED" in report.stderr and "wrote " in report.stdout  # written all the same
    page = (tmp_path / "out" / "audit-2026-02-27_2026-03-01.html").read_text()
    assert "<strong>ALTERED.</strong>" in page
    said = run_cli("audit", "verify", *days, "--database-url", url, cwd=tmp_path)
    assert said.returncode == 1
    lines = [line.strip() for line in said.stdout.splitlines()[1:]]
    assert _findings(page) == lines
    assert f"chain {cut}: tail-cut at place" in said.stdout and ": 2 row(s)" in said.stdout
    assert f"row id {edited}:" in said.stdout  # the edited row, by its id
    whole = run_cli("audit", "verify", "--database-url", url, cwd=tmp_path)  # the whole trail says the same
    assert [line.strip() for line in whole.stdout.splitlines()[1:]] == lines
    with sqlite3.connect(tmp_path / "copy.db") as db:
        assert db.execute("SELECT COUNT(*) FROM audit_checkpoints").fetchone()[0] == before  # the report signed nothing
    # the header: the environment, and the signing key's whole public-key fingerprint (as `audit keys` lists it)
    keys = run_cli("audit", "keys", "--database-url", url, cwd=tmp_path).stdout
    public = next(line.split()[1] for line in keys.splitlines() if "(signing)" in line)
    assert hashlib.sha256(base64.b64decode(public)).hexdigest() in page
    assert "<td>Environment</td>" in page and "development" in page
    # a report an erasure withdrew, made again over the same copy: written, and the cron job fails the same way
    with sqlite3.connect(tmp_path / "copy.db") as db:
        (stored,) = db.execute("SELECT MAX(id) FROM reports").fetchone()
        db.execute("UPDATE reports SET withdrawn_at = '2026-03-02 00:00:00' WHERE id = ?", (stored,))
    again = run_cli("report", "regenerate", "--database-url", url, "--output-dir", "out", cwd=tmp_path, timeout=300)
    assert again.returncode == 3 and f"made again: report {stored}" in again.stdout, again.stdout + again.stderr
    assert f"report {stored} do not verify" in again.stderr
