"""Who did what (issue 23): the X-Actor header of the administrative routes, recorded as `by` in the audit rows
the request writes beside the client; refused when invalid with nothing written; ignored elsewhere. And every
listing and download of a stored report is a row naming the client, the report and the file."""

import http.client
import json
from datetime import date, datetime

import pytest

from otp_service.audit.rows import RequestContext
from otp_service.core import validation
from otp_service.core.actions import Action
from otp_service.core.errors import InvalidActor
from otp_service.db.models import AuditLog, Report, Tenant
from otp_service.http.openapi import build_spec
from otp_service.http.routes import ROUTES
from tests.conftest import API_KEY
from tests.helpers import audit_rows, code_at, make_client


def data_of(row: AuditLog) -> dict:
    return json.loads(row.additional_data) if row.additional_data else {}


def count_rows(database) -> int:
    with database.connection_context():
        return AuditLog.select().count()


# -- the rule ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("alice@example.com", "alice@example.com"),
        ("INC-4711", "INC-4711"),
        ("José Núñez (ticket 12)", "José Núñez (ticket 12)"),
        ("Ａｌｉｃｅ", "Alice"),  # full-width: NFKC gives the one spelling
        ("e\u0301mile", "émile"),  # decomposed accent, composed
        ("x" * 128, "x" * 128),
        ("\u1ec7\u0301", "\u1ec7\u0301"),  # Vietnamese: a letter with two marks, and one more
    ],
)
def test_an_actor_is_kept_in_its_one_spelling(sent, kept):
    assert validation.actor(sent) == kept


@pytest.mark.parametrize(
    "sent",
    [
        *(
            "",
            " alice",
            "alice ",
            "ali\x00ce",
            "ali\nce",
            "ali\tce",
            "a\u202ebob",
            "a\u200bb",
            "x" * 129,
            None,
            7,
            ["a"],
        ),
        *("\u3164", "\u3164\u3164", "\u2800", "\uffa0"),  # letters that show nothing: a name that reads as no one
        "a\u0300\u0301\u0302\u0303\u0304",  # accents stacked over the text around them
    ],
)
def test_an_actor_that_is_not_one_name_is_refused(sent):
    with pytest.raises(InvalidActor) as refused:
        validation.actor(sent)
    assert refused.value.code == "INVALID_ACTOR" and refused.value.status == 400
    assert refused.value.details == {"field": "X-Actor"}


def test_the_administrative_routes_and_only_they_document_the_header():
    spec = build_spec(ROUTES)
    documented = {
        (path, method)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if any(p["name"] == "X-Actor" and p["in"] == "header" for p in op.get("parameters", []))
    }
    expected = {
        (r.path, op.method) for r in ROUTES for op in r.operations if r.scope in ("manage", "reports", "webhooks")
    }
    assert documented == expected and ("/api/v1/users/{user_id}/erase", "post") in documented
    assert ("/api/v1/otp/verify", "post") not in documented and ("/api/v1/reports", "get") in documented


# -- over HTTP -----------------------------------------------------------------------------------------------------


def test_the_person_is_recorded_beside_the_client_in_the_rows_the_request_writes(api, database, clock):
    reg = api.post("/api/v1/devices/register", {"device_id": "A1", "user_id": "u1@example.com"}).body["data"]
    done = api.post("/api/v1/devices/A1/deactivate", headers={"X-Actor": "alice@example.com (INC-4711)"})
    assert done.status == 200
    (row,) = audit_rows(database, action=Action.DEVICE_DEACTIVATED)
    assert row.actor == "env" and data_of(row)["by"] == "alice@example.com (INC-4711)"
    # UTF-8, as sent on the wire, and normalised
    api.post("/api/v1/devices/A1/unlock", headers={"X-Actor": "Ｊosé".encode()})
    (unlock,) = audit_rows(database, action=Action.DEVICE_UNLOCKED)
    assert data_of(unlock)["by"] == "José"
    # a verification takes no X-Actor: its row names no one
    api.post("/api/v1/otp/verify", {"device_id": "A1", "otp": code_at(reg, clock.now)}, headers={"X-Actor": "bob"})
    assert all("by" not in data_of(r) for r in audit_rows(database, action=Action.OTP_VERIFICATION))
    # an erasure: its USER_ERASED row names the person too (and the erased user nowhere)
    api.post("/api/v1/users/u1@example.com/erase", headers={"X-Actor": "dpo@example.com"})
    (erased,) = audit_rows(database, action=Action.USER_ERASED)
    assert data_of(erased)["by"] == "dpo@example.com" and erased.actor == "env"
    # no header: the row is as before
    api.post("/api/v1/devices/register", {"device_id": "A2", "user_id": "u2@example.com"})
    api.post("/api/v1/devices/A2/deactivate")
    assert "by" not in data_of(audit_rows(database, action=Action.DEVICE_DEACTIVATED)[-1])


@pytest.mark.parametrize(
    "sent", [b"", b" ", "a\u202eb".encode(), b"\xff\xfe", b"x" * 129]
)  # control bytes: Tornado drops them
def test_an_invalid_actor_is_refused_and_nothing_is_written(api, database, sent):
    api.post("/api/v1/devices/register", {"device_id": "B1", "user_id": "u@example.com"})
    before = count_rows(database)
    refused = api.post("/api/v1/devices/B1/deactivate", headers={"X-Actor": sent})
    assert refused.status == 400 and refused.body["success"] is False
    assert refused.body["error"]["code"] == "INVALID_ACTOR" and "X-Actor" in refused.body["message"]
    assert count_rows(database) == before
    assert api.get("/api/v1/devices/B1").body["data"]["is_active"] is True  # and nothing was done


def test_two_actor_headers_are_refused(api, database):
    api.post("/api/v1/devices/register", {"device_id": "B2", "user_id": "u@example.com"})
    before = count_rows(database)
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.putrequest("POST", "/api/v1/devices/B2/deactivate")
    conn.putheader("Authorization", f"Bearer {API_KEY}")
    conn.putheader("X-Actor", "alice")
    conn.putheader("X-Actor", "mallory")
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 400 and body["error"]["code"] == "INVALID_ACTOR"
    assert count_rows(database) == before


def test_a_refused_request_records_no_one_it_claims_to_be(api, database):
    """An unauthenticated or unauthorised request's refusal names no person: the header is read only after."""
    reader = make_client(database, "helpdesk", "read")
    assert api.post("/api/v1/devices/X/deactivate", auth="wrong-key", headers={"X-Actor": "ceo"}).status == 401
    assert api.post("/api/v1/devices/X/deactivate", auth=reader, headers={"X-Actor": "ceo"}).status == 403
    refusals = audit_rows(database, action=Action.AUTH_FAILED) + audit_rows(database, action=Action.ACCESS_DENIED)
    assert len(refusals) == 2 and all("by" not in data_of(r) for r in refusals)


# -- reports: listing and downloads --------------------------------------------------------------------------------


def stored(database, kind="audit", subject=None, pdf=b"%PDF-1.7 x"):
    with database.connection_context():
        return Report.insert(
            kind=kind,
            period_start=datetime(2026, 2, 1),
            period_end=datetime(2026, 3, 1),
            created_at=datetime(2026, 3, 1),
            html="<p>report</p>",
            data_zip=b"PK\x05\x06" + b"\0" * 18,
            pdf=pdf,
            subject=subject,
        ).execute()


def test_every_listing_and_download_is_a_row_naming_the_client_report_and_file(api, database):
    audit = stored(database)
    mine = stored(database, kind="user", subject="carol@example.com", pdf=None)
    auditor = make_client(database, "auditor", "reports")
    listed = api.get("/api/v1/reports?limit=5", auth=auditor, headers={"X-Actor": "eve (audit 2026)"})
    assert listed.status == 200
    (row,) = audit_rows(database, action=Action.REPORTS_LISTED)
    assert row.actor == "auditor" and row.success and row.user_id is None
    assert data_of(row) == {"reports": [mine, audit], "limit": 5, "by": "eve (audit 2026)"}
    for path in ("", "/data", "/pdf"):
        assert api.get(f"/api/v1/reports/{audit}{path}", auth=auditor).status == 200
    assert api.get(f"/api/v1/reports/{mine}/data", auth=auditor, headers={"X-Actor": "eve"}).status == 200
    downloads = audit_rows(database, action=Action.REPORT_DOWNLOADED)
    assert [(r.actor, data_of(r)["report"], data_of(r)["file"], r.user_id) for r in downloads] == [
        ("auditor", audit, "html", None),
        ("auditor", audit, "data", None),
        ("auditor", audit, "pdf", None),
        ("auditor", mine, "data", "carol@example.com"),  # a user report's download names its subject
    ]
    assert data_of(downloads[-1])["by"] == "eve" and data_of(downloads[-1])["kind"] == "user"
    # nothing handed out, nothing recorded: an unknown report, a missing PDF, another tenant's client refused
    before = count_rows(database)
    assert api.get("/api/v1/reports/99999", auth=auditor).status == 404
    assert api.get(f"/api/v1/reports/{mine}/pdf", auth=auditor).status == 404
    assert count_rows(database) == before


def test_a_withdrawn_report_is_not_recorded_as_downloaded(api, database):
    report = stored(database)
    with database.connection_context():
        Report.update(withdrawn_at=datetime(2026, 3, 2)).where(Report.id == report).execute()
    assert api.get(f"/api/v1/reports/{report}").status == 410
    assert audit_rows(database, action=Action.REPORT_DOWNLOADED) == []


# -- report generation, as the commands record it --------------------------------------------------------------------


def test_a_report_made_is_a_row_with_its_kind_days_id_verdict_and_subject(service, database):
    ctx = RequestContext(user_agent="otp-service report (command line)", actor="command-line", by="dora")
    service.record_report_made(
        ctx, "user", date(2026, 2, 1), date(2026, 2, 28), report_id=7, subject="carol@example.com", intact=False
    )
    service.record_report_made(ctx, "audit", date(2026, 2, 1), date(2026, 2, 28), report_id=None, intact=True)
    user_row, audit_row = audit_rows(database, action=Action.REPORT_GENERATED)
    assert user_row.user_id == "carol@example.com" and user_row.reason == "ALTERED" and user_row.success
    assert data_of(user_row) == {
        "report": 7,
        "kind": "user",
        "first_day": "2026-02-01",
        "last_day": "2026-02-28",
        "intact": False,
        "regenerated": False,
        "by": "dora",
    }
    assert audit_row.user_id is None and audit_row.reason is None and data_of(audit_row)["report"] is None
    assert audit_row.actor == "command-line" and audit_row.tenant_id == 1


def test_reports_made_again_are_recorded_in_their_own_tenants_trail(service, database):
    with database.connection_context():
        other = Tenant.insert(name="acme", created_at=datetime(2026, 1, 1)).execute()
    report = stored(database, kind="usage")
    with database.connection_context():
        Report.update(tenant_id=other).where(Report.id == report).execute()
    service.record_reports_remade(RequestContext(actor="command-line"), [(report, True), (99999, None)])
    (row,) = audit_rows(database, action=Action.REPORT_GENERATED)
    assert row.tenant_id == other and data_of(row)["regenerated"] is True and data_of(row)["kind"] == "usage"
    assert (data_of(row)["first_day"], data_of(row)["last_day"]) == ("2026-02-01", "2026-02-28")
