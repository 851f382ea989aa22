"""The usage report's device figures are taken as they stood at the period's end: a report of a past month made
again after more activity (new devices, a deactivation, a confirmation, codes, a resync, a drift reset) gives the
same figures; and an empty period reads as empty."""

from datetime import UTC, date, datetime

from otp_service.audit.rows import RequestContext
from otp_service.core.period import Period
from otp_service.reports import context, usage_queries
from tests.helpers import code_at

CTX = RequestContext("198.51.100.7", "AcmeBank-iOS/5.2", None, "app")
END = datetime(2026, 3, 1)  # the end of February's report (exclusive)


def _t(day: int, month: int = 2, hour: int = 9) -> float:
    return datetime(2026, month, day, hour, tzinfo=UTC).timestamp()


def figures() -> dict:
    """Every device figure of the usage report for the period ending at END."""
    return {
        "states": usage_queries.device_states(END).to_dict("records"),
        "usage": usage_queries.usage_distribution(END).to_dict("records"),
        "drift": usage_queries.drift_distribution(END).to_dict("records"),
        "parameters": usage_queries.parameter_mix(END).to_dict("records"),
        "stale": usage_queries.stale_device_count(END, 14),
        "stale_list": usage_queries.stale_devices(END, 14).to_dict("records"),
    }


def test_a_past_period_gives_the_same_figures_after_more_activity(service, database):
    a = service.register("A", "alice", CTX, now=_t(2))
    for day in (3, 4):
        service.verify("A", code_at(a, _t(day)), CTX, now=_t(day))
    # in time order: an audit chain's time never goes back, so a row written "earlier" after a later one would
    # be recorded at the later time (chain.clamp) — as when two processes' clocks differ
    service.register("C", "carol", CTX, digits=8, now=_t(4))  # never used: stale at the end
    d = service.register("D", "dave", CTX, algorithm="SHA256", now=_t(5))
    service.verify("D", code_at(d, _t(6)), CTX, now=_t(6))  # last used 6 February: stale at the end
    service.verify("A", code_at(a, _t(20), offset_steps=1), CTX, now=_t(20))  # its clock a step ahead: drift 1
    b = service.register("B", "bob", CTX, confirm=True, now=_t(28, hour=23) + 3300)  # 23:55: pending at the end
    with database.connection_context():
        before = figures()
    assert before["states"] == [{"state": "active", "devices": 3}, {"state": "awaiting confirmation", "devices": 1}]
    assert before["usage"][:2] == [{"verifications": "0", "devices": 2}, {"verifications": "1-9", "devices": 2}]
    assert before["drift"] == [{"drift_steps": 0, "devices": 3}, {"drift_steps": 1, "devices": 1}]
    assert before["stale"] == 2 and [s["device_id"] for s in before["stale_list"]] == ["C", "D"]
    assert before["stale_list"][1]["last_used"] == "2026-02-06T09:00:00Z"

    # March: after the period, everything that could move a "now" figure moves.
    service.confirm("B", code_at(b, _t(1, 3, 0) + 60), CTX, now=_t(1, 3, 0) + 60)  # in its ten minutes
    service.register("E", "erin", CTX, algorithm="SHA512", now=_t(2, 3))
    service.verify("D", code_at(d, _t(2, 3)), CTX, now=_t(2, 3))
    service.deactivate("C", CTX, now=_t(3, 3))
    resynced = service.resync("A", code_at(a, _t(4, 3), 30), code_at(a, _t(4, 3), 31), CTX, now=_t(4, 3))
    assert resynced["resynced"] and resynced["drift"] == 31, resynced
    for n in range(12):
        service.verify("A", code_at(a, _t(5, 3) + 60 * n, 31), CTX, now=_t(5, 3) + 60 * n)
    service.reset_drift("D", CTX, now=_t(6, 3))
    with database.connection_context():
        after = figures()
        now = datetime(2026, 4, 1)
        moved = usage_queries.drift_distribution(now).to_dict("records"), usage_queries.device_states(now)
    assert after == before
    assert moved[0] != before["drift"] and len(moved[1]) and moved[1]["devices"].sum() == 5  # the activity is real


def test_an_empty_period_reads_as_empty_not_as_zero_records_in_zero_chains():
    period = Period(date(2025, 6, 1), date(2025, 6, 30))
    found = {"intact": True, "rows": 0, "chains": 0, "breaks": [], "checkpoint": None}
    report = context.ReportContext(None, period, None, "demo", "2026-12-04T00:00:00Z", found)
    text = report.integrity_markdown()
    assert "Empty period: no audit record is dated in it" in text
    assert "0 audit records" not in text and "0 hash chains" not in text
    found |= {"rows": 3, "chains": 2}
    assert "The 3 audit records written in this period were recomputed" in report.integrity_markdown()


def test_the_header_marks_the_period_and_generation_time_for_the_printed_footer():
    period = Period(date(2026, 2, 1), date(2026, 2, 28))
    header = context.ReportContext(None, period, None, "demo", "2026-03-01T00:30:00Z").header("Usage")
    assert f'<span class="report-period">{period.in_words()}</span>' in header
    assert '<span class="report-generated">2026-03-01T00:30:00Z</span>' in header
