"""The audit report's "Clients and scopes" and its admin-actions table (issue 23): every client of the tenant as
it stood at the period's end, and the person beside the client in every administrative action."""

from datetime import UTC, datetime, timedelta

from otp_service.audit.rows import RequestContext
from otp_service.core.actions import Action
from otp_service.reports import audit_queries
from otp_service.service import clients
from tests.helpers import journal_for

START, END = datetime(2026, 2, 1), datetime(2026, 3, 1)


def ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def test_every_client_is_listed_with_its_scopes_and_state_at_the_periods_end(service, database):
    journal = journal_for(database)

    def change(fn, *args) -> None:
        with database.connection_context(), database.atomic():
            fn(journal, *args)

    def request(client: str, day: str) -> None:
        service.record(Action.ACCESS_DENIED, RequestContext("192.0.2.1", actor=client), now=ts(day))

    # in time order: the trail's times only move forward (a row is never dated before the one before it)
    change(clients.create, "alpha", ("enroll", "verify"), ts("2026-01-05"))
    change(clients.create, "beta", ("manage", "read"), ts("2026-01-06"))
    change(clients.create, "delta", ("read",), ts("2026-01-07"), datetime(2026, 2, 15))  # its last day: 02-14
    change(clients.create, "eps", ("reports",), ts("2026-01-08"))
    change(clients.rotate, "beta", ts("2026-02-10T09:00"), timedelta(hours=24))
    request("alpha", "2026-02-12T08:30")
    request("env", "2026-02-13")
    change(clients.revoke, "beta", ts("2026-02-20T12:00"))
    request("alpha", "2026-03-02")  # after the period
    change(clients.revoke, "eps", ts("2026-03-03"))
    change(clients.create, "gamma", ("verify",), ts("2026-03-05"))
    with database.connection_context():
        frame = audit_queries.clients_and_scopes(START, END)
    rows = {r["client"]: r for r in frame.to_dict("records")}
    assert list(frame.columns) == audit_queries.CLIENT_COLUMNS
    assert set(rows) == {"alpha", "beta", "delta", "eps", "gamma", "env"}
    assert rows["alpha"]["scopes"] == "enroll, verify" and rows["alpha"]["at the period's end"] == "active"
    assert rows["alpha"]["last record"] == "2026-02-12T08:30:00Z" and rows["alpha"]["records in the period"] == 1
    assert rows["beta"]["at the period's end"] == "revoked 2026-02-20T12:00:00Z"
    assert rows["beta"]["key rotations"] == "1, the last 2026-02-10T09:00:00Z"
    assert rows["delta"]["at the period's end"] == "expired 2026-02-15T00:00:00Z"
    assert rows["eps"]["at the period's end"] == "active; revoked 2026-03-03T00:00:00Z, after the period"
    assert rows["gamma"]["at the period's end"].startswith("not yet created (created 2026-03-05")
    assert rows["gamma"]["last record"] == "never" and rows["gamma"]["records in the period"] == 0
    assert rows["env"]["scopes"] == "admin, operator (a key in API_KEY)" and rows["env"]["records in the period"] == 1


def test_admin_actions_name_the_person_and_drop_columns_that_say_nothing(service, database):
    by = RequestContext("192.0.2.9", actor="ops", by="maria (INC-7)")
    service.register("D1", "u@example.com", now=ts("2026-02-02"))
    service.deactivate("D1", by, now=ts("2026-02-03"))
    with database.connection_context():
        frame = audit_queries.admin_actions(START, END)
    assert "reason" not in frame.columns and "details" not in frame.columns  # no row has one: they'd be empty
    assert frame[["client", "person", "action", "result"]].values.tolist() == [
        ["ops", "maria (INC-7)", "DEVICE_DEACTIVATED", "done"]
    ]
    service.unlock("D1", RequestContext(actor="ops"), now=ts("2026-02-04"))
    service.record(
        Action.ACCESS_DENIED, RequestContext(actor="helpdesk"), reason="INSUFFICIENT_SCOPE", now=ts("2026-02-05")
    )
    service.record(
        Action.REPORT_DOWNLOADED,
        RequestContext(actor="auditor", by="eve"),
        success=True,
        data={"report": 4, "file": "pdf", "kind": "audit"},
        now=ts("2026-02-06"),
    )
    with database.connection_context():
        frame = audit_queries.admin_actions(START, END)
    assert frame["person"].tolist() == ["maria (INC-7)", "(not said)", "(not said)", "eve"]
    assert frame["reason"].tolist() == ["", "", "INSUFFICIENT_SCOPE", ""]
    assert frame["details"].tolist()[-1] == "report 4 (audit), its PDF"
