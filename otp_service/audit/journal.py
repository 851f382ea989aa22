"""Writing audit rows into their chains, in the transaction of the change they record.

A row goes to one of `chains` chains (AUDIT_CHAINS): whichever is free. Extending a chain takes its head
row's lock until the transaction commits, so K chains let K writers append at once; on PostgreSQL a writer
takes a chain no one holds (SKIP LOCKED) and waits only when all K are busy. The hot path does the same in
SQL, inside the one statement that applies a batch of transitions (`store.APPLY`): Python computes each
row's encoding but its time; the statement gives each row its time — never earlier than its chain's last
(`chain.clamp`) — hashes it and links it to the chain's head with `sha256()`.

What else must happen in the rows' transaction is told to the journal when it is made (`then`): the webhook
outbox (`webhooks.outbox.enqueue`) queues the events the rows are. The journal does not know of webhooks — the
trail is below them — but no journal is made without saying what follows its rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache, partial

from peewee import Database

from ..db.database import is_postgres
from ..db.models import AuditChain, AuditLog
from . import chain as integrity
from .rows import AUDIT_COLUMNS

MAX_CHAINS = 64  # the migration creates this many chains; AUDIT_CHAINS uses the first K
CHAIN_COLUMNS = ("chain", "seq", "entry_hash", "personal", "subject")
_USER, _IP, _AGENT = (AUDIT_COLUMNS.index(c) for c in ("user_id", "ip_address", "user_agent"))


Appended = Callable[[list[Sequence], list[str | None]], object]  # rows written (AUDIT_COLUMNS order), subjects


class Journal:
    """The audit trail's writer: pseudonymises the personal fields and links rows into the chains."""

    def __init__(self, database: Database, pseudonym_key: bytes, chains: int, *, then: Sequence[Appended]):
        if not 1 <= chains <= MAX_CHAINS:
            raise ValueError(f"chains must be 1-{MAX_CHAINS}")
        self.database, self.key, self.chains, self.then = database, pseudonym_key, chains, tuple(then)
        # the same user, address and app come back request after request: two HMACs saved per row
        self._personal = lru_cache(maxsize=4096)(partial(integrity.personal_digest, pseudonym_key))
        self._subject = lru_cache(maxsize=4096)(partial(integrity.subject, pseudonym_key))

    def forget_people(self) -> None:
        """Drop the remembered digests (keyed by user ids, addresses and User-Agents): after an erasure, this
        process keeps none of the erased user's personal data, not even as a cache key."""
        self._personal.cache_clear()
        self._subject.cache_clear()

    def entry(self, row: Sequence) -> integrity.Entry:
        """What the chain covers of a row (AUDIT_COLUMNS order)."""
        personal = self._personal(row[_USER], row[_IP], row[_AGENT])
        timestamp, action, success, reason, device_id, _, _, _, request_id, data, actor, tenant_id = row
        subject = self._subject(row[_USER], tenant_id)
        return integrity.Entry(
            timestamp, action, success, reason, device_id, personal, subject, request_id, data, actor, tenant_id
        )

    def append(self, rows: Sequence[Sequence]) -> None:
        """Insert `rows` (AUDIT_COLUMNS order) at the end of a chain. Call inside a transaction."""
        if not rows:
            return
        chain, seq, head, head_at = self._take_chain()
        latest = last_time(chain, seq, head_at)
        linked = []
        for row in rows:
            latest = integrity.clamp(row[0], latest)  # never before the chain's last row
            row = (latest, *row[1:])
            entry = self.entry(row)
            head = integrity.link(head, entry)
            seq += 1
            linked.append((*row, chain, seq, head, entry.personal, entry.subject))
        fields = [getattr(AuditLog, c) for c in (*AUDIT_COLUMNS, *CHAIN_COLUMNS)]
        AuditLog.insert_many(linked, fields=fields).execute()
        AuditChain.update(seq=seq, head=head, head_at=latest).where(AuditChain.chain == chain).execute()
        written, subjects = [row[: len(AUDIT_COLUMNS)] for row in linked], [row[-1] for row in linked]
        for step in self.then:  # in the same transaction
            step(written, subjects)

    def _take_chain(self) -> tuple[int, int, str, datetime | None]:
        """A chain's (id, seq, head, last time), locked until the transaction ends: a free one when there is one."""
        select = AuditChain.select(AuditChain.chain, AuditChain.seq, AuditChain.head, AuditChain.head_at)
        if is_postgres(self.database):
            free = select.where(AuditChain.chain.between(0, self.chains - 1)).order_by(AuditChain.chain)
            free = free.for_update("FOR UPDATE SKIP LOCKED")
            # start at a random chain so concurrent writers spread out
            start = random.randrange(self.chains)
            row = free.where(AuditChain.chain >= start).limit(1).tuples().first() or free.limit(1).tuples().first()
            if row is not None:
                return row
            select = select.for_update()  # all busy: wait for one
        row = select.where(AuditChain.chain == random.randrange(self.chains)).tuples().first()
        if row is None:
            raise RuntimeError("the audit chains are missing: run `python -m otp_service migrate`")
        return row

    def sql_columns(self, row: Sequence) -> tuple[str, str | None, str]:
        """For `store.APPLY`: (personal digest, subject, encoding after the time) of a row; the statement gives
        it its time (no earlier than its chain's last), hashes it and links it."""
        entry = self.entry(row)
        return entry.personal, entry.subject, integrity.encode_rest(entry)


def last_time(chain: int, seq: int, head_at: datetime | None) -> datetime | None:
    """The chain's last time: the later of the one kept with its head and its head row's (rows written by a
    process from before `head_at` existed leave it behind)."""
    query = AuditLog.select(AuditLog.timestamp).where((AuditLog.chain == chain) & (AuditLog.seq == seq))
    row_at = query.scalar() if seq else None
    return max((t for t in (head_at, row_at) if t is not None), default=None)
