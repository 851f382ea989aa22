"""What every report query shares: the few SQL expressions that differ between SQLite and PostgreSQL
(`day`, `epoch`, `json_field`), the period condition, and turning a query's rows into a DataFrame.

Every figure of a report is aggregated by the database (GROUP BY) and only the summary comes back as a
small DataFrame, so a report over millions of audit rows stays fast and small; the same queries run on
SQLite and PostgreSQL alike, and the dialect differences stay here.

Periods are given as a start and an end instant, in naive UTC like the stored timestamps: a row counts
if start <= its time < end (a report of 1 to 28 February runs from 1 February 00:00 to 1 March 00:00;
`core.period.Period` converts the days a person gives).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timedelta

import pandas as pd
from peewee import SQL, ColumnBase, Expression, Model, NodeList, SelectBase, fn

from ..core.actions import Action
from ..core.transitions import DEFAULT_TENANT
from ..db.database import is_postgres
from ..db.models import AuditLog, UserSpelling, db

VERIFY = Action.OTP_VERIFICATION


def day(column: ColumnBase) -> ColumnBase:
    """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD' text."""
    if is_postgres(db.obj):
        return fn.to_char(column, "YYYY-MM-DD")
    return fn.substr(column, 1, 10)


def epoch(column: ColumnBase) -> ColumnBase:
    """Whole seconds since 1970 of a timestamp column, as an integer (truncated on both: a cast alone would
    round on PostgreSQL, putting a time late in a second into the next one)."""
    if is_postgres(db.obj):
        return fn.floor(fn.date_part("epoch", column)).cast("BIGINT")
    return fn.strftime("%s", column).cast("INTEGER")


def json_field(column: ColumnBase, key: str, sql_type: str) -> ColumnBase:
    """A top-level field of a JSON text column (an audit row's additional_data) as `sql_type` ("BIGINT" or
    "BOOLEAN"); NULL where the row has no such field."""
    if is_postgres(db.obj):
        return NodeList((column.cast("json"), SQL("->>"), key), parens=True).cast(sql_type)
    return fn.json_extract(column, f"$.{key}").cast(sql_type)


def frame(query: SelectBase, columns: list[str]) -> pd.DataFrame:
    """A query's rows as a DataFrame with these column names (an empty result still has the columns)."""
    return pd.DataFrame(list(query.tuples()), columns=columns)


# The tenant a report covers: `context.prepare` sets it once per notebook (a kernel runs one report), and every
# query keeps to it — through `in_period` for the audit rows, `of_tenant` for the devices.
TENANT: ContextVar[int] = ContextVar("report_tenant", default=DEFAULT_TENANT)


def of_tenant(model: type[Model]) -> Expression:
    """The rows of `model` (devices, audit rows) that belong to the report's tenant."""
    return model.tenant_id == TENANT.get()


def of_user(user_id: str) -> Expression:
    """The report's tenant's audit rows that name `user_id`, under any spelling it was stored with."""
    return AuditLog.user_id.in_(UserSpelling.of(TENANT.get(), user_id))


def in_period(start: datetime, end: datetime) -> Expression:
    """The report's tenant's audit rows written in [start, end): the condition every period's query starts from."""
    return (AuditLog.timestamp >= start) & (AuditLog.timestamp < end) & of_tenant(AuditLog)


def outcome_counts(where: Expression) -> Callable[..., int]:
    """The rows matching `where`, counted by action, success and reason in one query; returns
    `count(action, success=None, reason=None)`, the rows of an action (with that outcome, when given)."""
    counts = {
        (action, bool(success), reason): n
        for action, success, reason, n in AuditLog.select(
            AuditLog.action, AuditLog.success, AuditLog.reason, fn.COUNT(AuditLog.id)
        )
        .where(where)
        .group_by(AuditLog.action, AuditLog.success, AuditLog.reason)
        .tuples()
    }

    def count(action: str, success: bool | None = None, reason: str | None = None) -> int:
        return sum(
            n
            for (a, s, r), n in counts.items()
            if a == action and (success is None or s == success) and (reason is None or r == reason)
        )

    return count


def every_day(start: datetime, end: datetime) -> pd.Index:
    """Every UTC day that [start, end) touches, as 'YYYY-MM-DD': the rows of a daily table, days without an
    audit row included (`end` is exclusive: a period ending at midnight does not touch the day starting then)."""
    return pd.date_range(start.date(), (end - timedelta(microseconds=1)).date(), freq="D").strftime("%Y-%m-%d")


def stringify_times(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Timestamps as ISO text: SQLite returns strings and PostgreSQL datetimes, and reports should read the same."""
    for column in columns:
        frame[column] = [
            None if pd.isna(v) else str(pd.Timestamp(v).isoformat(timespec="seconds")) + "Z" for v in frame[column]
        ]
    return frame
