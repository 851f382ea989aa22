"""A user id has one spelling (issue 25): `Ａｌｉｃｅ` (full-width), `Alice` and a decomposed `é` are one user
in every route and command — enrolment, recovery codes, reads, erasure — and data written before ids were
normalised is brought to that spelling or, for audit rows, erased under every spelling. Case is kept."""

import importlib
import json
from datetime import datetime
from urllib.parse import quote

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.db.models import AuditLog, Device, UserSpelling
from otp_service.reports import user_queries
from tests.helpers import audit_rows
from tests.serving import run_cli

PLAIN, WIDE = "Alice", "Ａｌｉｃｅ"  # U+FF21 …: what a phone keyboard in full-width mode sends
NFC, NFD = "jos\u00e9", "jose\u0301"


def users(path: str) -> str:
    return f"/api/v1/users/{quote(path, safe='')}"


def register(api, device_id: str, user_id: str) -> dict:
    resp = api.post("/api/v1/devices/register", {"device_id": device_id, "user_id": user_id})
    assert resp.status == 201, resp.body
    return resp.body["data"]


def test_every_spelling_of_an_id_is_one_user(api, database):
    assert register(api, "W1", WIDE)["user_id"] == PLAIN
    register(api, "W2", PLAIN)
    register(api, "J1", NFD)
    devices = api.get(users(WIDE) + "/devices").body["data"]["devices"]
    assert sorted(d["device_id"] for d in devices) == ["W1", "W2"]
    assert [d["device_id"] for d in api.get(users(NFC) + "/devices").body["data"]["devices"]] == ["J1"]
    with database.connection_context():
        assert {d.user_id for d in Device.select()} == {PLAIN, NFC}
    # one set of recovery codes per user: the second spelling's set replaces the first's
    first = api.post(users(PLAIN) + "/recovery-codes").body["data"]["codes"]
    api.post(users(WIDE) + "/recovery-codes")
    used = api.post(users(PLAIN) + "/recovery-codes/verify", {"code": first[0]})
    assert used.status == 200 and used.body["data"]["valid"] is False
    erased = api.post(users(WIDE) + "/erase").body["data"]
    assert erased["devices"] == 2 and erased["recovery_codes"] == 1
    assert not [r for r in audit_rows(database) if r.user_id in (PLAIN, WIDE)]


def test_case_is_kept_ids_are_the_applications_own(api):
    register(api, "C1", "alice")
    register(api, "C2", "Alice")
    assert [d["device_id"] for d in api.get(users("alice") + "/devices").body["data"]["devices"]] == ["C1"]


@pytest.mark.slow
def test_the_command_line_reads_ids_the_same_way(api, db_url, tmp_path):
    register(api, "L1", PLAIN)
    out = run_cli("users", "erase", WIDE, "--database-url", db_url, cwd=tmp_path)
    assert out.returncode == 0 and "1 device(s)" in out.stdout, out.stdout + out.stderr
    assert api.get(users(PLAIN) + "/devices").body["data"]["devices"] == []


def test_data_from_before_normalisation_is_found_under_the_one_spelling(api, service, database):
    """Rows written by a release that kept ids as sent: the migration renames devices and lists the old
    spelling, the user's trail and report read its audit rows, an erasure reaches them — and the trail
    still verifies."""
    ctx = RequestContext(ip_address="192.0.2.7", user_agent="old-app/1.0")
    service.register("OLD-1", WIDE, ctx)  # the service itself takes ids as given: as an old release wrote them
    with database.connection_context():
        assert Device.get(Device.device_id == "OLD-1").user_id == WIDE
        database.execute_sql("DROP TABLE user_spellings")  # as before the migration
        importlib.import_module("otp_service.db.migrations.0011_user_id_spelling").up(None, database)
        assert Device.get(Device.device_id == "OLD-1").user_id == PLAIN
        assert UserSpelling.of(1, PLAIN) == [PLAIN, WIDE]
        activity = user_queries.user_activity(PLAIN, datetime(2000, 1, 1), datetime(2100, 1, 1))  # default tenant
        assert activity["records"].sum() == 1
    assert [d["device_id"] for d in api.get(users(PLAIN) + "/devices").body["data"]["devices"]] == ["OLD-1"]
    trail = api.get(users(NFD.replace("jose", "x")) + "/audit")  # another user: nothing
    assert trail.status == 200 and trail.body["data"]["entries"] == []
    entries = api.get(users(PLAIN) + "/audit").body["data"]["entries"]
    assert [e["action"] for e in entries] == ["DEVICE_REGISTERED"]
    erased = api.post(users(PLAIN) + "/erase").body["data"]
    assert erased["devices"] == 1 and erased["audit_rows"] >= 1
    with database.connection_context():
        left = [r for r in AuditLog.select() if WIDE in json.dumps(list(r.__data__.values()), default=str)]
    assert left == []
    with database.connection_context():
        assert UserSpelling.of(1, PLAIN) == [PLAIN]  # the list named the user too
    assert service.verify_audit(record=False).intact
