"""Unauthenticated requests are audited without a chained row each (issue 25: ~175 rows a minute per
address): the first few of a window in full, the rest as one row that says how many — and reports count them
all."""

import asyncio
import json
from datetime import datetime

from otp_service.http.refusals import FULL_ROWS
from otp_service.reports import audit_queries
from tests.conftest import settings_for
from tests.helpers import audit_rows


def test_a_flood_of_wrong_keys_is_one_row_and_a_count(make_server, db_url, database):
    server = make_server(settings_for(db_url, TRUSTED_PROXY_HOPS="1"))
    for n in range(30):
        assert (
            server.client.get("/api/v1/stats", auth=f"wrong-{n}", headers={"X-Forwarded-For": "203.0.113.9"}).status
            == 401
        )
    assert server.client.get("/api/v1/stats", auth="wrong", headers={"X-Forwarded-For": "203.0.113.10"}).status == 401
    rows = audit_rows(database, action="AUTH_FAILED")
    assert [(r.ip_address, r.reason) for r in rows] == [("203.0.113.9", None)] * FULL_ROWS + [("203.0.113.10", None)]
    state = server.state
    written = asyncio.run_coroutine_threadsafe(state.refusals.flush(state.service.record, everything=True), server.loop)
    assert written.result(10) == 1  # the other address sent one: nothing repeated to write
    rows = audit_rows(database, action="AUTH_FAILED")
    summary = rows[-1]
    assert (summary.ip_address, summary.reason) == ("203.0.113.9", "REPEATED")
    assert json.loads(summary.additional_data)["repeated"] == 30 - FULL_ROWS
    with database.connection_context():
        totals = audit_queries.audit_totals(datetime(2000, 1, 1), datetime(2100, 1, 1))
        refused = audit_queries.refused_requests(datetime(2000, 1, 1), datetime(2100, 1, 1))
    assert totals["authentication_failures"] == 31
    assert dict(zip(refused["client address"], refused["requests"], strict=True)) == {
        "203.0.113.9": 30,
        "203.0.113.10": 1,
    }
