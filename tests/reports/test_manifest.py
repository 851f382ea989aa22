"""A report an auditor can check without re-running anything: the signed manifest over its files (verified by
`verify-report`, by OpenSSL and from the API's copies), and raw events that re-link the chain with the
standard library alone (`reports.relink`)."""

import csv
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import signing
from otp_service.core.actions import Action
from otp_service.reports import events, relink, sql
from otp_service.reports.demo import generate
from otp_service.reports.output import ReportOutput
from tests.reports.test_reports import DEMO_END, END, START, service_keys
from tests.serving import run_cli

RELINK = Path(relink.__file__)
NAME = "audit-2026-02-01_2026-02-28"


def export(database, path: Path, user_id: str | None = None) -> list[dict[str, str]]:
    with database.connection_context():
        token = sql.TENANT.set(1)
        try:
            found = events.audit_events(START, END, user_id)
            ReportOutput(path).rows("audit_events", events.EVENT_COLUMNS, found)
        finally:
            sql.TENANT.reset(token)
    with open(path / "audit_events.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)


def test_the_raw_events_relink_with_the_standard_library_alone(service, database, tmp_path):
    generate(service, devices=6, days=10, seed=3, end=DEMO_END)
    service.record(Action.DEVICE_REGISTERED, RequestContext(actor="'=tricky", request_id="r-1"), device_id="=SUM(A1)")
    service.erase_user(service.database.execute_sql("SELECT user_id FROM devices LIMIT 1").fetchone()[0])
    rows = export(database, tmp_path)
    assert len(rows) > 100 and {r["previous_hash"] for r in rows} - {""}
    assert relink.problems(rows) == []
    # one user's rows: another's lie between them in every chain, so each previous hash is looked up
    user = max({r["user_id"] for r in rows if r["user_id"]}, key=lambda u: sum(r["user_id"] == u for r in rows))
    mine = export(database, tmp_path / "one-user", user)
    assert 0 < len(mine) < len(rows) and relink.problems(mine) == []
    assert sum(a["previous_hash"] == b["entry_hash"] for a, b in zip(mine[1:], mine[:-1], strict=True)) < len(mine) - 1
    # run as an auditor would, apart from the service: -I ignores the environment and the current folder
    alone = subprocess.run([sys.executable, "-I", str(RELINK), str(tmp_path / "audit_events.csv")], capture_output=True)
    assert alone.returncode == 0 and b"every one links" in alone.stdout, alone.stdout + alone.stderr

    edited = [dict(r) for r in rows]
    victim = edited[len(edited) // 2]
    victim["action"] = "OTP_VERIFICATION" if victim["action"] != "OTP_VERIFICATION" else "DEVICE_REGISTERED"
    write(tmp_path / "edited.csv", edited)
    found = subprocess.run([sys.executable, "-I", str(RELINK), str(tmp_path / "edited.csv")], capture_output=True)
    assert found.returncode == 1 and f"row {victim['id']} (chain {victim['chain']}".encode() in found.stdout

    # a row rewritten with a matching hash breaks the link to the next row of its chain
    forged = [dict(r) for r in rows]
    index = next(
        i
        for i, r in enumerate(forged)
        if any(s["chain"] == r["chain"] and int(s["seq"]) == int(r["seq"]) + 1 for s in forged[i + 1 :])
    )
    forged[index]["reason"] = "FORGED"
    forged[index]["entry_hash"] = relink.entry_hash(relink.value(forged[index]["previous_hash"]), forged[index])
    assert any("does not follow" in line or "edited" in line for line in relink.problems(forged))

    # an edit hidden by blanking what would check it: a previous hash after a row of its chain is a failure, a
    # row put outside every chain is reported as not checked
    blanked = [dict(r) for r in rows]
    later = next(i for i, r in enumerate(blanked) if any(s["chain"] == r["chain"] for s in blanked[:i]))
    blanked[later] |= {"previous_hash": "", "success": "True" if blanked[later]["success"] == "False" else "False"}
    assert any("no previous hash after a row of its chain" in line for line in relink.problems(blanked))
    outside = [dict(r) for r in rows]
    outside[later]["chain"] = ""
    write(tmp_path / "outside.csv", outside)
    told = subprocess.run([sys.executable, "-I", str(RELINK), str(tmp_path / "outside.csv")], capture_output=True)
    assert b"1 not checked" in told.stdout and f"row {outside[later]['id']}: in no chain".encode() in told.stdout


def test_an_apostrophe_in_a_raw_cell_is_escaped_so_it_can_be_undone(tmp_path):
    out = ReportOutput(tmp_path)
    out.rows("t", ["a", "b", "c"], [("'=x", "=y", "plain")])
    line = (tmp_path / "t.csv").read_text().splitlines()[1]
    assert line == "''=x,'=y,plain"
    assert [relink.value(c) for c in line.split(",")] == ["'=x", "=y", "plain"]


def verify_report(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return run_cli("verify-report", *args, cwd=cwd, **env)


@pytest.mark.slow
def test_a_report_is_signed_and_verifies_from_its_folder_with_openssl_and_from_the_api(
    service, database, db_url, tmp_path, make_server, settings
):
    generate(service, devices=6, days=14, seed=5, end=DEMO_END)
    service.checkpoint()
    keys = service_keys(service)
    made = run_cli(
        *("report", "audit", "--start", "2026-02-01", "--end", "2026-02-28"),
        *("--database-url", db_url, "--output-dir", "out"),
        cwd=tmp_path,
        timeout=300,
        **keys,
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    manifest = out / f"{NAME}.manifest.json"
    body = json.loads(manifest.read_text())
    assert body["report"] | {"created_at": None} == body["report"] | {
        "kind": "audit",
        "first_day": "2026-02-01",
        "last_day": "2026-02-28",
        "tenant": "default",
        "audit_records_intact": True,
        "created_at": None,
    }
    assert {f"{NAME}.html", f"{NAME}.zip", f"{NAME}.zip/audit_events.csv", f"{NAME}.zip/SHA256SUMS"} <= set(
        body["files"]
    )
    fingerprint = signing.fingerprint(signing.signing_key(keys["AUDIT_SIGNING_KEY"]))
    assert body["signed_by"]["public_key_sha256"] == fingerprint

    page = (out / f"{NAME}.html").read_text()
    assert "verify-report &lt;name&gt;.manifest.json" in page or "verify-report <name>.manifest.json" in page
    assert "relink.py audit_events.csv" in page
    ok = verify_report(str(manifest), cwd=tmp_path, **keys)
    assert ok.returncode == 0 and "verified: " in ok.stdout and fingerprint in ok.stdout, ok.stderr
    # which report it is: a genuine manifest of another tenant's or period's report verifies too
    for field in ("kind: audit", "first_day: 2026-02-01", "last_day: 2026-02-28", "tenant: default", "id: 1"):
        assert f"  {field}\n" in ok.stdout, (field, ok.stdout)

    pem = run_cli("audit", "keys", "--pem", "--database-url", db_url, cwd=tmp_path, **keys)
    assert pem.returncode == 0 and pem.stdout.startswith("-----BEGIN PUBLIC KEY-----"), pem.stderr
    (tmp_path / "audit-key.pem").write_text(pem.stdout)
    # an auditor with only the published key (no service settings: the command's own keys would not match)
    alone = verify_report(str(manifest), "--public-key", "audit-key.pem", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    if shutil.which("openssl"):
        sig = out / f"{NAME}.manifest.sig"
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "audit-key.pem", "-rawin"]
        checked = subprocess.run(
            [*command, "-in", str(manifest), "-sigfile", str(sig)], cwd=tmp_path, capture_output=True
        )
        assert checked.returncode == 0 and b"Signature Verified Successfully" in checked.stdout, checked.stderr

    other = verify_report(
        str(manifest), "--public-key", signing.public_b64(signing.signing_key(signing.new_signing_seed())), cwd=tmp_path
    )
    assert other.returncode == 1 and "not valid for any key accepted here" in other.stderr

    # the same files, downloaded from the API, verify the same way
    api = make_server(settings).client
    [listed] = api.get("/api/v1/reports").body["data"]["reports"]
    assert listed["manifest_url"] == f"/api/v1/reports/{listed['id']}/manifest"
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for url, name in [
        (listed["html_url"], f"{NAME}.html"),
        (listed["data_url"], f"{NAME}.zip"),
        (listed["manifest_url"], f"{NAME}.manifest.json"),
        (listed["signature_url"], f"{NAME}.manifest.sig"),
        *([(listed["pdf_url"], f"{NAME}.pdf")] if listed["pdf_url"] else []),
    ]:
        got = api.get(url)
        assert got.status == 200, (url, got.status)
        disposition = got.headers["Content-Disposition"]  # what `curl -OJ` saves it as: the manifest's name
        assert disposition.endswith(f'filename="{name}"'), disposition
        (fetched / name).write_bytes(got.raw)
    assert json.loads((fetched / f"{NAME}.manifest.json").read_text())["report"]["id"] == listed["id"]
    assert (
        verify_report(str(fetched / f"{NAME}.manifest.json"), "--public-key", "audit-key.pem", cwd=tmp_path).returncode
        == 0
    )

    # a manifest no accepted key signed: nothing of it is read or shown (it could write to the terminal)
    forged = tmp_path / "forged"
    shutil.copytree(out, forged)
    text = (forged / f"{NAME}.manifest.json").read_text().replace('"kind": "audit"', '"kind": "\\u001b[2Kverified"')
    (forged / f"{NAME}.manifest.json").write_text(text)
    refused = verify_report(str(forged / f"{NAME}.manifest.json"), "--public-key", "audit-key.pem", cwd=tmp_path)
    assert refused.returncode == 1 and "not valid for any key accepted here" in refused.stderr
    assert "\x1b" not in refused.stdout + refused.stderr and "verified" not in refused.stdout
    # a zip member whose bytes were changed in place (its CRC no longer matches): named, not a traceback
    archive = forged / f"{NAME}.zip"
    (forged / f"{NAME}.manifest.json").write_bytes((out / f"{NAME}.manifest.json").read_bytes())
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as original:
        info = original.getinfo("SHA256SUMS")
    raw[info.header_offset + 30 + len(info.filename) + 2] ^= 1  # inside its data
    archive.write_bytes(bytes(raw))
    crc = verify_report(str(forged / f"{NAME}.manifest.json"), "--public-key", "audit-key.pem", cwd=tmp_path)
    assert crc.returncode == 1 and "Traceback" not in crc.stderr, crc.stderr
    assert f"{NAME}.zip/SHA256SUMS: missing or unreadable" in crc.stderr or "SHA256SUMS: differs" in crc.stderr

    # any change is found: a byte of the page, an event in the zip, a missing PDF
    html = out / f"{NAME}.html"
    html.write_bytes(html.read_bytes().replace(b"Intact", b"Intakt", 1))
    changed = verify_report(str(manifest), "--public-key", "audit-key.pem", cwd=tmp_path)
    assert changed.returncode == 1 and f"{NAME}.html: differs" in changed.stderr
    archive = out / f"{NAME}.zip"
    with zipfile.ZipFile(archive) as original:
        members = {n: original.read(n) for n in original.namelist()}
    members["audit_events.csv"] = members["audit_events.csv"].replace(b"OTP_VERIFICATION", b"OTP_VERIFICATIOn", 1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as rewritten:
        for name, content in members.items():
            rewritten.writestr(name, content)
    archive.write_bytes(buffer.getvalue())
    changed = verify_report(str(manifest), "--public-key", "audit-key.pem", cwd=tmp_path)
    assert f"{NAME}.zip/audit_events.csv: differs" in changed.stderr and changed.returncode == 1


def test_a_report_made_without_keys_has_no_manifest_and_the_api_says_so(api, database):
    from datetime import datetime

    from otp_service.db.models import Report

    with database.connection_context():
        made = dict(kind="audit", period_start=START, period_end=END, created_at=datetime(2026, 3, 1), html="<p>x</p>")
        report = Report.insert(**made, data_zip=b"").execute()
    [listed] = api.get("/api/v1/reports").body["data"]["reports"]
    assert listed["manifest_url"] is None and listed["signature_url"] is None
    for part in ("manifest", "signature"):
        got = api.get(f"/api/v1/reports/{report}/{part}")
        assert got.status == 404 and "without the service's audit key" in got.body["message"]


def test_a_tenants_report_downloads_under_the_name_the_report_command_gave_its_files(api, database):
    """The manifest lists the files as `report` names them on disk — a tenant's with the tenant first — so the
    API must send them under the same names, or a downloaded copy would not verify."""
    from datetime import datetime

    from otp_service.db.models import Report
    from otp_service.reports.runner import report_name
    from tests.scenarios.test_tenants import client_of, make_tenant

    acme = make_tenant(database, "acme")
    key = client_of(database, acme, "acme-auditor", "reports")
    with database.connection_context():
        made = dict(kind="audit", period_start=START, period_end=END, created_at=datetime(2026, 3, 1), html="<p>x</p>")
        report = Report.insert(**made, data_zip=b"PK", tenant_id=acme).execute()
    got = api.get(f"/api/v1/reports/{report}/data", auth=key)
    expected = report_name("audit", START.date(), datetime(2026, 2, 28).date(), tenant="acme")
    assert expected == "acme-audit-2026-02-01_2026-02-28"
    assert got.status == 200 and got.headers["Content-Disposition"] == f'attachment; filename="{expected}.zip"'
