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
from peewee import Tuple

from ..audit.chain import GENESIS
from ..db.models import AuditChain, AuditLog
from . import sql

EVENT_COLUMNS = [
    *("id", "time", "action", "success", "reason", "device_id", "user_id", "ip_address", "user_agent"),
    *("client", "request_id", "data", "chain", "seq", "entry_hash"),
    *("previous_hash", "personal", "subject", "tenant_id"),  # what re-linking the chain needs besides
]


BATCH = 500  # rows whose previous hashes are looked up at once (2 parameters each: SQLite allows 32,766)
_MISSING = object()


def audit_events(start: datetime, end: datetime, user_id: str | None = None) -> Iterator[tuple]:
    """The raw audit records of the period (of one user, if given), in the order they were written, as stored:
    what every summary is counted from, for a reader who wants to count again. A stream, not a frame: a
    month can hold millions of rows. The hash of the row before each in its chain is, as a rule, the last one
    streamed of that chain; only where the export skips rows (its first of each chain, another tenant's or user's
    rows between) is it looked up, a batch at a time by the (chain, seq) index — a join for every row cost a
    third more. Before a chain's first row comes GENESIS, before the first row kept after a prune its floor."""
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
        AuditLog.personal,
        AuditLog.subject,
        AuditLog.tenant_id,
    ).where(sql.in_period(start, end))
    if user_id is not None:
        query = query.where(sql.of_user(user_id))
    floors = {
        c: (s, h)
        for c, s, h in AuditChain.select(AuditChain.chain, AuditChain.floor_seq, AuditChain.floor_hash).tuples()
    }
    last: dict[int, tuple[int, str]] = {}  # each chain's last row streamed: (seq, entry_hash)
    batch: list[tuple] = []
    for row in query.order_by(AuditLog.id).tuples().iterator():
        batch.append(row)
        if len(batch) == BATCH:
            yield from _linked(batch, last, floors)
            batch = []
    yield from _linked(batch, last, floors)


def _linked(rows: list[tuple], last: dict[int, tuple[int, str]], floors: dict[int, tuple[int, str]]) -> Iterator[tuple]:
    """`rows` as exported, each with the hash of the row before it in its chain (None: pruned, and not the floor;
    or written before the chains)."""
    previous: list = []
    wanted: set[tuple[int, int]] = set()
    for row in rows:
        chain, seq = row[12], row[13]
        if chain is None:
            previous.append(None)
            continue
        seen = last.get(chain)
        if seen is not None and seen[0] == seq - 1:
            previous.append(seen[1])
        elif seq == 1:
            previous.append(GENESIS)
        else:
            previous.append(_MISSING)
            wanted.add((chain, seq - 1))
        last[chain] = (seq, row[14])
    found = {}
    if wanted:
        pairs = Tuple(AuditLog.chain, AuditLog.seq).in_(sorted(wanted))
        found = {
            (c, s): h
            for c, s, h in AuditLog.select(AuditLog.chain, AuditLog.seq, AuditLog.entry_hash).where(pairs).tuples()
        }
    for row, before in zip(rows, previous, strict=True):
        if before is _MISSING:
            chain, seq = row[12], row[13]
            floor_seq, floor_hash = floors.get(chain, (0, GENESIS))
            before = found.get((chain, seq - 1)) or (floor_hash if seq == floor_seq + 1 else None)
        yield (row[0], _iso(row[1]), row[2], bool(row[3]), *row[4:15], before, *row[15:])


def _iso(value) -> str | None:
    """A timestamp as ISO 8601 UTC text to the microsecond: a raw record keeps the precision it was stored with."""
    if isinstance(value, datetime):  # what both databases give; pd.Timestamp per row cost more than the query
        return value.isoformat(timespec="microseconds") + "Z"
    return None if value is None else pd.Timestamp(value).isoformat(timespec="microseconds") + "Z"
