"""The raw audit records behind a report, streamed as stored: the audit report writes those of the period,
the user report those of one user, each as audit_events.csv for a reader who wants to count again — and
re-link the chain: each row comes with every column its link hash covers (the personal fields as their keyed
digest `personal`, the user's pseudonym `subject`, the tenant) and the hash of the row before it in its chain
(`previous_hash`), so `entry_hash = SHA-256(previous_hash ‖ SHA-256(encoding))` can be checked row by row with
nothing but Python (`reports.relink`, which imports nothing of the service). Checked that way, an edited row
fails; the signed checkpoint (whose heads the report cites) is what says no row was cut or added.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pandas as pd
from peewee import JOIN

from ..audit.chain import GENESIS
from ..db.models import AuditChain, AuditLog
from . import sql

EVENT_COLUMNS = [
    *("id", "time", "action", "success", "reason", "device_id", "user_id", "ip_address", "user_agent"),
    *("client", "request_id", "data", "chain", "seq", "entry_hash"),
    *("previous_hash", "personal", "subject", "tenant_id"),  # what re-linking the chain needs besides
]


def audit_events(start: datetime, end: datetime, user_id: str | None = None) -> Iterator[tuple]:
    """The raw audit records of the period (of one user, if given), in the order they were written, as stored:
    what every summary is counted from, for a reader who wants to count again. A stream, not a frame: a
    month can hold millions of rows. The row before each in its chain is found by the (chain, seq) index;
    before a chain's first row comes GENESIS, before the first row kept after a prune the chain's floor."""
    before = AuditLog.alias("before")
    query = (
        AuditLog.select(
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
            before.entry_hash,
            AuditLog.personal,
            AuditLog.subject,
            AuditLog.tenant_id,
        )
        .join(before, JOIN.LEFT_OUTER, on=(before.chain == AuditLog.chain) & (before.seq == AuditLog.seq - 1))
        .where(sql.in_period(start, end))
    )
    if user_id is not None:
        query = query.where(sql.of_user(user_id))
    floors = {
        c: (s, h)
        for c, s, h in AuditChain.select(AuditChain.chain, AuditChain.floor_seq, AuditChain.floor_hash).tuples()
    }
    for row in query.order_by(AuditLog.id).tuples().iterator():
        previous = row[15]
        if previous is None and row[12] is not None:  # the first row of its chain, or the first after a prune
            floor_seq, floor_hash = floors.get(row[12], (0, GENESIS))
            previous = GENESIS if row[13] == 1 else floor_hash if row[13] == floor_seq + 1 else None
        yield (row[0], _iso(row[1]), row[2], bool(row[3]), *row[4:15], previous, *row[16:])


def _iso(value) -> str | None:
    """A timestamp as ISO 8601 UTC text to the microsecond: a raw record keeps the precision it was stored with."""
    if isinstance(value, datetime):  # what both databases give; pd.Timestamp per row cost more than the query
        return value.isoformat(timespec="microseconds") + "Z"
    return None if value is None else pd.Timestamp(value).isoformat(timespec="microseconds") + "Z"
