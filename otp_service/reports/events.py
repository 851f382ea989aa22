"""The raw audit records behind a report, streamed as stored: the audit report writes those of the period,
the user report those of one user, each as audit_events.csv for a reader who wants to count again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pandas as pd

from ..db.models import AuditLog
from . import sql

EVENT_COLUMNS = [
    *("id", "time", "action", "success", "reason", "device_id", "user_id", "ip_address", "user_agent"),
    *("client", "request_id", "data", "chain", "seq", "entry_hash"),
]


def audit_events(start: datetime, end: datetime, user_id: str | None = None) -> Iterator[tuple]:
    """The raw audit records of the period (of one user, if given), in the order they were written, as stored:
    what every summary is counted from, for a reader who wants to count again. A stream, not a frame: a
    month can hold millions of rows."""
    query = AuditLog.select(
        AuditLog.id,
        AuditLog.timestamp,
        AuditLog.action,
        AuditLog.success,
        AuditLog.reason,
        AuditLog.device_id,
        AuditLog.user_id,
        AuditLog.ip_address,
        AuditLog.user_agent,
        AuditLog.actor,
        AuditLog.request_id,
        AuditLog.additional_data,
        AuditLog.chain,
        AuditLog.seq,
        AuditLog.entry_hash,
    ).where(sql.in_period(start, end))
    if user_id is not None:
        query = query.where(sql.of_user(user_id))
    for row in query.order_by(AuditLog.id).tuples().iterator():
        yield (row[0], _iso(row[1]), *row[2:3], bool(row[3]), *row[4:])


def _iso(value) -> str | None:
    """A timestamp as ISO 8601 UTC text to the microsecond: a raw record keeps the precision it was stored with."""
    if isinstance(value, datetime):  # what both databases give; pd.Timestamp per row cost more than the query
        return value.isoformat(timespec="microseconds") + "Z"
    return None if value is None else pd.Timestamp(value).isoformat(timespec="microseconds") + "Z"
