"""Who made, listed and fetched which report, in the audit trail. A report holds personal data (a user report
is one person's whole history; the others name devices, users and addresses), so making one and every look at
one is a row: `REPORT_GENERATED` per report the commands make, `REPORTS_LISTED` per listing and
`REPORT_DOWNLOADED` per file fetched through the API. The row of a download is written in the transaction that
reads the file, before a byte of it is sent: no file leaves without its row. A user report's subject is in the
row's `user_id` column — never in its additional data — so an erasure of that user empties it like any other."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from peewee import Database

from ..audit.rows import SYSTEM, RequestContext, audit_row
from ..core.actions import Action
from ..core.period import Period
from ..core.transitions import AuditEvent, to_datetime
from ..db.database import is_postgres
from ..db.models import Report
from ..persistence.store import Store
from . import queries


class ReportAccess:
    """Provided by `OtpService` (`blocking`)."""

    database: Database
    store: Store
    unit_of_work: Callable[..., AbstractContextManager[None]]
    _now: Callable[[float | None], float]

    def list_reports(self, limit: int = 50, before: int | None = None, ctx: RequestContext = SYSTEM) -> dict:
        """The tenant's stored reports, newest first, and a row naming the ones listed (by id: their subjects
        stay in the reports, which an erasure deletes)."""
        with self.unit_of_work(write=True):
            listed = queries.list_reports(ctx.tenant_id, limit, before)
            data = {"reports": [entry["id"] for entry in listed["reports"]], "limit": limit}
            if before is not None:
                data["before"] = before
            self._audit(Action.REPORTS_LISTED, ctx, data)
        return listed

    def report_content(self, report_id: int, part: str, ctx: RequestContext = SYSTEM) -> tuple[Report, bytes | str]:
        """One of the tenant's stored reports as a file (`part`: html, data, pdf, manifest, signature), and its row —
        naming the report, the file and, for a user report, its subject (`user_id`). A report that is not
        there, withdrawn or without that file writes nothing: nothing was handed out."""
        with self.unit_of_work(write=True):
            held = is_postgres(self.database)  # until the row is in: see `queries.report_content`
            report, content = queries.report_content(ctx.tenant_id, report_id, part, held)
            data = {"report": report.id, "file": part, "kind": report.kind}
            subject = report.subject if report.kind == "user" else None
            self._audit(Action.REPORT_DOWNLOADED, ctx, data, user_id=subject)
        return report, content

    def record_report_made(
        self,
        ctx: RequestContext,
        kind: str,
        first: date,
        last: date,
        *,
        report_id: int | None,
        subject: str | None = None,
        intact: bool | None = None,
        regenerated: bool = False,
    ) -> None:
        """A report the commands made (`ctx.tenant_id`: whose data it covers): its kind, first and last day,
        stored id (None: kept on disk only), whether its period's records verified (`intact`; reason ALTERED
        when they did not), and its subject in `user_id` for a user report."""
        data: dict[str, Any] = {"report": report_id, "kind": kind, "first_day": str(first), "last_day": str(last)}
        data |= {"intact": intact, "regenerated": regenerated}
        with self.unit_of_work(write=True):
            self._audit(
                Action.REPORT_GENERATED,
                ctx,
                data,
                user_id=subject,
                success=True,
                reason="ALTERED" if intact is False else None,
            )

    def record_reports_remade(self, ctx: RequestContext, made: Sequence[tuple[int, bool | None]]) -> None:
        """`report regenerate`'s reports (id, intact), each in its own tenant's trail."""
        ids = [report_id for report_id, _ in made]
        with self.unit_of_work():
            fields = (Report.id, Report.kind, Report.period_start, Report.period_end, Report.subject, Report.tenant_id)
            found = {r.id: r for r in Report.select(*fields).where(Report.id.in_(ids))} if ids else {}
        for report_id, intact in made:
            report = found.get(report_id)
            if report is None:  # erased again meanwhile: nothing of it is left to name
                continue
            span = Period.between(_as_datetime(report.period_start), _as_datetime(report.period_end))
            self.record_report_made(
                replace(ctx, tenant_id=report.tenant_id),
                report.kind,
                span.first,
                span.last,
                report_id=report_id,
                subject=report.subject if report.kind == "user" else None,
                intact=intact,
                regenerated=True,
            )

    def _audit(
        self,
        action: Action,
        ctx: RequestContext,
        data: dict[str, Any],
        *,
        user_id: str | None = None,
        success: bool = True,
        reason: str | None = None,
    ) -> None:
        """In the caller's unit of work (the read it records, when there is one)."""
        event = AuditEvent(action, success, reason, data)
        self.store.record([audit_row(event, to_datetime(self._now(None)), None, user_id, ctx)])


def _as_datetime(value: Any) -> datetime:
    """A stored time (SQLite may hand it over as text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
