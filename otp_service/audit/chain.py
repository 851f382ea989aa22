"""Tamper evidence for the audit trail, as pure functions: no database, no clock.

Every audit row belongs to one of K chains and carries its place in it (`seq`) and
`entry_hash = SHA-256(previous entry_hash ‖ SHA-256(canonical encoding of the row))`. The encoding is the
row's columns in a fixed order, each length-prefixed (unambiguous: no separator can be forged into a value),
with the personal fields — user id, client address, User-Agent — replaced by a keyed digest
(`personal_digest`, HMAC under a key derived from the master secret). So the personal fields can be erased
(GDPR art. 17) and the chain still verifies: while they are present, verification checks them against the
digest; once erased, the row's `subject` (a keyed pseudonym of the user) must be one an erasure recorded.

A chain's first row follows `GENESIS`, or, once older rows were pruned, the last pruned row's hash (the
chain's floor, in a signed checkpoint).
Signed checkpoints (Ed25519) bind every chain's head and length at a time, so rewriting a chain, or cutting
its tail, is caught even by someone who can rewrite every row and the head table.

`ChainCheck` walks one chain's rows in `seq` order and names the first break: edited, deleted, inserted,
reordered, backdated (a row's time earlier than the row's before it: time within a chain never goes back),
or tail cut.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from ..core.transitions import DEFAULT_TENANT

GENESIS = "0" * 64  # the hash before a chain's first row
PURPOSE = "audit-pseudonyms"  # the keyring purpose of the pseudonym key
NO_PERSONAL_DATA = (None, None, None)


_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode  # made once


def _encode(value: Any) -> bytes:
    return _CANONICAL(value).encode("utf-8")


def timestamp_text(value: datetime | str) -> str:
    """One text form for a timestamp however the database returned it (SQLite: text; PostgreSQL: datetime)."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":  # already "YYYY-MM-DD HH:MM:SS.ffffff" (as read from PostgreSQL)
            return value
        value = datetime.fromisoformat(value)
    return value.isoformat(" ", "microseconds")


def personal_digest(key: bytes, user_id: str | None, ip_address: str | None, user_agent: str | None) -> str:
    """What the chain hashes in place of the personal fields."""
    return hmac.digest(key, b"personal\x00" + _encode([user_id, ip_address, user_agent]), "sha256").hex()


def subject(key: bytes, user_id: str | None, tenant_id: int | None = DEFAULT_TENANT) -> str | None:
    """A user's pseudonym: the same for every row of the user, useless without the key. A user id names a user
    within a tenant, so the pseudonym does too (the default tenant's are those written before tenants)."""
    if user_id is None:
        return None
    within = b"" if tenant_id in (None, DEFAULT_TENANT) else f"{tenant_id}\x00".encode()
    return hmac.digest(key, b"subject\x00" + within + user_id.encode("utf-8"), "sha256").hex()


class Entry(NamedTuple):
    """What the chain covers of one audit row (personal fields as their digest)."""

    timestamp: datetime | str
    action: str
    success: bool
    reason: str | None
    device_id: str | None
    personal: str  # personal_digest
    subject: str | None
    request_id: str | None
    additional_data: str | None
    actor: str | None
    tenant_id: int | None = DEFAULT_TENANT

    def content_hash(self) -> bytes:
        return _sha256(encode_entry(self).encode("utf-8")).digest()


def encode_entry(entry: Entry) -> str:
    """The row's canonical text: each field length-prefixed (`5:hello`), `~` for none, `T`/`F` for success, and
    last the tenant, unless it is the default one (so every row written before tenants keeps its hash) —
    unambiguous (no value can pass for two), and about three times cheaper than JSON, which matters at a
    million rows per verification."""
    timestamp = timestamp_text(entry.timestamp)
    return f"{len(timestamp)}:{timestamp}{encode_rest(entry)}"


def encode_rest(entry: Entry) -> str:
    """`encode_entry` after the timestamp: what PostgreSQL's `APPLY` hashes after the time it writes, which
    may be later than the one asked for (a chain's time never goes back: `clamp`)."""
    action = entry.action
    success = "~" if entry.success is None else ("T" if entry.success else "F")
    parts = [f"{len(action)}:{action}", success]
    for value in entry[3:10]:
        parts.append("~" if value is None else f"{len(value)}:{value}")
    if entry.tenant_id not in (None, DEFAULT_TENANT):  # a row of the default tenant encodes as before tenants
        tenant = str(entry.tenant_id)
        parts.append(f"{len(tenant)}:{tenant}")
    return "".join(parts)


def clamp(at: datetime, latest: datetime | None) -> datetime:
    """The time a writer gives a row: the time asked for, or the chain's last time if that is later. Clocks
    step back (NTP) and differ between processes, and a row that looks back-dated is a break (`backdated`):
    honest rows must never be one, and a row's order in its chain is what it records."""
    return at if latest is None or at >= latest else latest


def link(previous: str, entry: Entry) -> str:
    """The entry hash of `entry` after `previous` (hex)."""
    return _sha256(bytes.fromhex(previous) + entry.content_hash()).hexdigest()


_sha256 = hashlib.sha256


class Head(NamedTuple):
    chain: int
    seq: int  # the last row's place (0: empty)
    hash: str  # the last row's entry hash (GENESIS: empty)


def canonical(payload: dict[str, Any]) -> str:
    """The exact text a checkpoint signs: compact JSON with sorted keys."""
    return _encode(payload).decode("utf-8")


@dataclass(frozen=True)
class Checkpoint:
    """Every chain's head at a time, as stored: the signed text, and what it says."""

    id: int
    text: str
    signatures: dict[str, str]

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.text)

    @property
    def heads(self) -> tuple[Head, ...]:
        return tuple(Head(*h) for h in self.payload["heads"])


# -- verification ----------------------------------------------------------------------------------------


def backdated(at: str, before: str | None, seq: int, timed_from: int = 0) -> bool:
    """Whether a row's time (text, as the hash covers it: ordered as text) is earlier than the row's before
    it. A correctly linked row appended at a chain's end with an earlier time would otherwise pass, and once
    a checkpoint sealed it, stay: writers never write one (`clamp`). Rows up to `timed_from` were written
    before writers clamped (a migrated database) and keep the times they have."""
    return before is not None and seq > timed_from and at < before


class Break(NamedTuple):
    chain: int
    kind: str  # edited, deleted, inserted, reordered, backdated, tail-cut, personal-data-edited, rewritten
    seq: int | None
    row_id: int | None
    detail: str


def describe(b: Break) -> str:
    """One finding in words — where (chain, place, row id) and what — the same in `audit verify`'s output and
    in every report's integrity statement, so an auditor comparing the two reads one text, not two accounts
    of the same break."""
    if b.chain < 0:  # not a chain's break: the checkpoints', or rows outside every chain
        what = "checkpoints" if b.kind.endswith("checkpoint") else "outside the chains"
        return f"{what}: {b.kind}: {b.detail}"
    where = f"place {b.seq}" if b.seq is not None else "the chain"
    row = f", row id {b.row_id}" if b.row_id is not None else ""
    return f"chain {b.chain}: {b.kind} at {where}{row}: {b.detail}"


def findings(breaks: Sequence[Break | dict[str, Any]]) -> list[str]:
    """Every finding, one line each (`describe`); a break may come as its dict (a report's JSON statement)."""
    return [describe(b if isinstance(b, Break) else Break(**b)) for b in breaks]


@dataclass
class ChainCheck:
    """Walks one chain's rows in `seq` order (then row id) and keeps the first break."""

    chain: int
    seq: int = 0  # the last row seen (0 before the first)
    hash: str = GENESIS
    last_id: int = 0
    rows: int = 0
    first_break: Break | None = None
    hashes_at: dict[int, str] = field(default_factory=dict)  # seq -> hash, for the checkpoints' seqs
    at: str | None = None  # the last row's time, as the hash covers it (None: the row before was not read)
    timed_from: int = 0  # rows up to this place predate monotonic time (written before the check: kept)

    def feed(self, row_id: int, seq: int, stored_hash: str, entry: Entry, watch: frozenset[int] = frozenset()) -> None:
        self.rows += 1
        if self.first_break is not None:
            return
        if seq == self.seq:
            self._break("inserted", seq, row_id, f"a second row with place {seq} in the chain")
        elif seq > self.seq + 1:
            missing = seq - self.seq - 1
            self._break("deleted", self.seq + 1, row_id, f"{missing} row(s) missing before place {seq}")
        elif link(self.hash, entry) != stored_hash:
            kind = "reordered" if row_id < self.last_id else "edited"
            self._break(kind, seq, row_id, "the row's content does not match its hash in the chain")
        at = timestamp_text(entry.timestamp)
        if self.first_break is None and backdated(at, self.at, seq, self.timed_from):
            detail = f"the row's time {at} is earlier than the time of the row before it in the chain ({self.at})"
            self._break("backdated", seq, row_id, detail)
        if self.first_break is None:
            self.seq, self.hash, self.last_id, self.at = seq, stored_hash, row_id, at
            if seq in watch:
                self.hashes_at[seq] = stored_hash

    def _break(self, kind: str, seq: int | None, row_id: int | None, detail: str) -> None:
        self.first_break = Break(self.chain, kind, seq, row_id, detail)

    def finish(
        self, signed: Sequence[Head], current: Head | None, floor: int = 0, last: int | None = None
    ) -> Break | None:
        """Compare the chain with every signed checkpoint's head for it (each must be in the chain, with its
        hash) and with the live head row (`current`: None when only part of the chain was read); `last`: the
        place the part read must reach (the row before the next part's first)."""
        if self.first_break is None and last is not None and self.seq < last:
            self._break("deleted", self.seq + 1, None, f"{last - self.seq} row(s) missing before place {last + 1}")
        for head in sorted(signed, key=lambda h: h.seq):
            if self.first_break is not None or head.seq <= floor:
                continue
            if self.seq < head.seq:
                missing = head.seq - self.seq
                self._break("tail-cut", self.seq + 1, None, f"{missing} row(s) signed in a checkpoint are gone")
            elif self.hashes_at.get(head.seq) != head.hash:
                self._break("rewritten", head.seq, None, "the chain differs from a signed checkpoint")
        if self.first_break is None and current is not None and self.seq < current.seq:
            missing = current.seq - self.seq
            self._break("tail-cut", self.seq + 1, None, f"{missing} row(s) after the last checkpoint were removed")
        return self.first_break
