"""Operability: the OpenAPI description, Swagger UI, metrics, stored reports over the API, JSON logs."""

import base64
import io
import json
import logging
import time
import zipfile
from datetime import datetime

import pytest

from otp_service.db.models import Report
from otp_service.http.app import route_table
from otp_service.http.logs import configure_logging
from otp_service.http.openapi import build_spec
from otp_service.http.routes import ROUTES, served
from tests.conftest import API_KEY, settings_for
from tests.helpers import audit_rows, code_at
from tests.openapi_check import check_response

METHODS = ("get", "head", "post", "put", "patch", "delete")


def test_every_route_is_described_and_every_description_routed(settings):
    spec = build_spec(served(debug=True))
    routed = {route.path: route.handler for route in ROUTES}
    assert set(routed) == set(spec["paths"])
    for template, handler in routed.items():
        own = [k for k in handler.__mro__ if k.__module__.startswith("otp_service")]
        implemented = {m for m in METHODS if any(m in vars(k) for k in own)}
        assert set(spec["paths"][template]) == implemented, template
    assert "/api/v1/debug/devices/{device_id}/otp" not in build_spec(served(debug=False))["paths"]
    assert [r.path for r in route_table(settings)] == [r.path for r in ROUTES if not r.debug]


def test_the_response_checker_rejects_what_the_spec_does_not_allow():
    good = {"success": True, "message": "m", "data": {"device_id": "D", "valid": False, "reason": "REPLAYED"}}
    check_response("POST", "/api/v1/otp/verify", 200, "application/json", good)
    bad = {"success": True, "message": "m", "data": {"device_id": "D", "valid": "no"}}
    with pytest.raises(AssertionError):
        check_response("POST", "/api/v1/otp/verify", 200, "application/json", bad)
    with pytest.raises(AssertionError):  # 418 is not a documented answer
        check_response("POST", "/api/v1/otp/verify", 418, "application/json", good)


def test_openapi_document_is_served(api):
    resp = api.get("/openapi.json", auth=None)
    assert resp.status == 200 and resp.body["openapi"].startswith("3.0")
    assert resp.body["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "/api/v1/debug/devices/{device_id}/otp" not in resp.body["paths"]


def test_swagger_ui_only_with_debug_and_from_the_package(api, make_server, db_url):
    assert api.get("/docs", auth=None).status == 404
    debug = make_server(settings_for(db_url, DEBUG="true")).client
    page = debug.get("/docs", auth=None)
    assert page.status == 200 and b"/docs/static/swagger-ui-bundle.js" in page.raw and b"https://" not in page.raw
    asset = debug.get("/docs/static/swagger-ui-bundle.js", auth=None)
    assert asset.status == 200 and len(asset.raw) > 100_000


def test_metrics_cannot_be_used_to_test_keys(make_server, db_url, database):
    """/metrics is rate limited and audited like /api: 30 wrong tokens in a row get 5 answers, then 429s."""
    api = make_server(
        # an hour, not a minute: in-process windows are aligned to the clock, and the library's sliding window
        # lets one more through just after a boundary (5 × 59.9/60 counts as 4) — a run crossing a minute failed
        settings_for(db_url, METRICS_TOKEN="metrics-token-0123456789", RATE_LIMIT_DEFAULT="5/hour")
    ).client
    statuses = [api.get("/metrics", auth=f"guess-{n:04d}").status for n in range(30)]
    assert statuses == [401] * 5 + [429] * 25
    failed = audit_rows(database, action="AUTH_FAILED")
    assert len(failed) == 5 and all(r.ip_address == "127.0.0.1" for r in failed)
    assert len(audit_rows(database, action="RATE_LIMITED")) == 1  # once per client and window


def test_metrics_need_a_token_and_count_what_happens(make_server, db_url, clock):
    api = make_server(settings_for(db_url, METRICS_TOKEN="metrics-token-0123456789")).client
    reg = api.post("/api/v1/devices/register", {"device_id": "M1", "user_id": "u"}).body["data"]
    api.post("/api/v1/otp/verify", {"device_id": "M1", "otp": code_at(reg, clock.now)})
    assert api.get("/metrics", auth=None).status == 401
    assert api.get("/metrics").status == 401  # the API key is not the metrics token when one is set
    resp = api.get("/metrics", auth="metrics-token-0123456789")
    text = resp.raw.decode()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert 'otp_verifications_total{outcome="valid",reason=""}' in text
    assert 'otp_registrations_total{result="created"}' in text
    assert 'otp_http_requests_total{handler="RegisterHandler",method="POST",status="201"}' in text
    assert "otp_http_request_duration_seconds_bucket" in text and "otp_db_pool_connections_in_use" in text
    assert reg["derived_key"] not in text and API_KEY not in text


def metric(api, series: str) -> float:
    """A sample's value from /metrics (0 if absent); counters are per test process, so tests compare deltas."""
    for line in api.get("/metrics").raw.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_invented_methods_do_not_create_metric_series(api):
    other = 'otp_http_requests_total{handler="HealthHandler",method="OTHER",status="405"}'
    before = metric(api, other)
    for i in range(30):
        assert api.request(f"BREW{i}", "/health", auth=None).status == 405
    assert metric(api, other) == before + 30
    assert "BREW" not in api.get("/metrics").raw.decode()


def test_group_commit_batches_are_measured_on_postgresql(api, backend, clock):
    series = "otp_apply_batch_size_count"
    before = metric(api, series)
    reg = api.post("/api/v1/devices/register", {"device_id": "B1", "user_id": "u"}).body["data"]
    assert api.post("/api/v1/otp/verify", {"device_id": "B1", "otp": code_at(reg, clock.now)}).body["data"]["valid"]
    expected = 2.0 if backend == "postgres" else 0.0  # SQLite writes on the thread pool, one at a time
    assert metric(api, series) - before == expected


def test_access_log_can_be_turned_off_and_metrics_still_count(make_server, db_url):
    health = 'otp_http_requests_total{handler="HealthHandler",method="GET",status="200"}'
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        quiet = make_server(settings_for(db_url, ACCESS_LOG="false")).client
        before = metric(quiet, health)
        quiet.get("/health", auth=None, headers={"X-Request-ID": "quiet-1"})
        loud = make_server(settings_for(db_url)).client
        loud.get("/health", auth=None, headers={"X-Request-ID": "loud-1"})
        deadline = time.monotonic() + 5  # a request is counted on the server's thread just after its answer
        while (after := metric(quiet, health)) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logging.getLogger().handlers.clear()
    ids = [json.loads(line).get("request_id") for line in stream.getvalue().splitlines()]
    assert "loud-1" in ids and "quiet-1" not in ids
    assert after == before + 2


def test_metrics_accept_an_api_key_without_a_token(api):
    assert api.get("/metrics").status == 200


def test_stored_reports_are_listed_and_served(api, database):
    with database.connection_context():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("summary.csv", "measure,value\nverifications,3\n")
        report_id = Report.insert(
            kind="audit",
            period_start=datetime(2026, 2, 1),
            period_end=datetime(2026, 2, 2),
            created_at=datetime(2026, 2, 2, 1),
            html="<html><body>audit</body></html>",
            data_zip=buffer.getvalue(),
            pdf=b"%PDF-1.7 audit",
        ).execute()
        user_report = Report.insert(
            kind="user",
            subject="alice@example.com",
            period_start=datetime(2026, 1, 1),
            period_end=datetime(2026, 3, 1),
            created_at=datetime(2026, 2, 28, 9),
            html="<html><body>alice</body></html>",
            data_zip=buffer.getvalue(),
        ).execute()
    listing = api.get("/api/v1/reports")
    assert listing.status == 200
    user_entry, entry = listing.body["data"]["reports"]
    # one convention for the end of a period everywhere: the last day, included (stored half-open)
    assert (entry["id"], entry["kind"], entry["user_id"]) == (report_id, "audit", None)
    assert (entry["period_start"], entry["period_end"]) == ("2026-02-01", "2026-02-01")
    assert entry["pdf_url"] == f"/api/v1/reports/{report_id}/pdf"
    assert (user_entry["kind"], user_entry["user_id"], user_entry["pdf_url"]) == ("user", "alice@example.com", None)
    assert (user_entry["period_start"], user_entry["period_end"]) == ("2026-01-01", "2026-02-28")
    pdf = api.get(f"/api/v1/reports/{report_id}/pdf")
    assert pdf.status == 200 and pdf.raw == b"%PDF-1.7 audit" and pdf.headers["Content-Type"] == "application/pdf"
    assert pdf.headers["Content-Disposition"] == 'attachment; filename="audit-2026-02-01_2026-02-01.pdf"'
    missing_pdf = api.get(f"/api/v1/reports/{user_report}/pdf")
    assert missing_pdf.status == 404 and missing_pdf.body["error"]["code"] == "NOT_FOUND"
    named = api.get(f"/api/v1/reports/{user_report}/data")
    assert named.headers["Content-Disposition"] == (
        'attachment; filename="user-alice@example.com-2026-01-01_2026-02-28.zip"'
    )
    page = api.get(f"/api/v1/reports/{report_id}")
    assert page.status == 200 and page.raw == b"<html><body>audit</body></html>"
    assert page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    data = api.get(f"/api/v1/reports/{report_id}/data")
    assert data.status == 200 and data.headers["Content-Type"] == "application/zip"
    # named by its inclusive days, like the files the report command writes (the period is stored half-open)
    assert data.headers["Content-Disposition"] == 'attachment; filename="audit-2026-02-01_2026-02-01.zip"'
    assert zipfile.ZipFile(io.BytesIO(data.raw)).read("summary.csv").startswith(b"measure")
    for missing in ("9999", "abc", "1x"):
        assert api.get(f"/api/v1/reports/{missing}").status == 404
    assert api.get(f"/api/v1/reports/{report_id}", auth=None).status == 401


def test_logs_are_json_lines_without_secrets(make_server, settings, clock):
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        api = make_server(settings).client
        reg = api.post(
            "/api/v1/devices/register", {"device_id": "L1", "user_id": "u"}, headers={"X-Request-ID": "log-test-1"}
        ).body["data"]
        code = code_at(reg, clock.now)
        api.post("/api/v1/otp/verify", {"device_id": "L1", "otp": code})
        api.post("/api/v1/otp/verify", {"device_id": "L1", "otp": "000000"})
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "otp_service.access"]
    first = next(line for line in access if line["request_id"] == "log-test-1")
    assert (first["method"], first["status"], first["handler"]) == ("POST", 201, "RegisterHandler")
    assert first["duration_ms"] >= 0 and first["client_ip"] == "127.0.0.1" and "time" in first
    text = stream.getvalue()
    for secret in (reg["derived_key"], reg["secret_base32"], code, API_KEY, settings.master_secret):
        assert secret not in text


def test_the_secrets_scan_finds_what_it_looks_for():
    from tests import conftest

    conftest.remember_registration(
        {
            "derived_key": base64.b64encode(b"k" * 32).decode(),
            "secret_base32": base64.b32encode(b"k" * 32).decode().rstrip("="),
        }
    )
    conftest.remember_code("042917")
    assert conftest.find_secrets(f'{{"note": "{(b"k" * 32).hex()}"}}')
    assert conftest.find_secrets("otp=042917;") and not conftest.find_secrets("otp=0429170")
    assert not conftest.find_secrets("otp=042917", codes=False)


def test_the_secrets_scan_learns_resync_codes(api, clock):
    from tests import conftest

    reg = api.post("/api/v1/devices/register", {"device_id": "SCAN-R", "user_id": "u"}).body["data"]
    first, second = code_at(reg, clock.now, 20), code_at(reg, clock.now, 21)
    assert api.post("/api/v1/devices/SCAN-R/resync", {"otp1": first, "otp2": second}).body["data"]["resynced"]
    assert {first, second} <= conftest.ISSUED_CODES
    assert conftest.find_secrets(f'{{"note": "{second}"}}')


def test_the_table_scan_is_skipped_only_where_a_fault_test_took_the_database_away(tmp_path):
    import peewee

    from otp_service.db.database import open_database
    from tests import conftest

    unreadable = open_database(f"sqlite:///{tmp_path}/empty.db")  # no tables: every SELECT fails
    with pytest.raises(peewee.OperationalError):
        conftest.scan_tables_for_secrets(unreadable)
    conftest.scan_tables_for_secrets(unreadable, database_taken_away=True)
    unreadable.close_all()
