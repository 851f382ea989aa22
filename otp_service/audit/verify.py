"""Verifying the audit trail: recompute every chain and check it against the signed checkpoints.

Streams each chain in `seq` order, a page at a time (bounded memory however long the trail), and names,
for each chain, the first break and its kind: a row edited, deleted, inserted or reordered; personal data
changed other than by a recorded erasure; rows cut from the tail; a chain rewritten since a checkpoint;
a checkpoint whose signature does not verify. `audit verify` prints this; every audit report states it
for the rows it covers; `/metrics` shows when the last verification passed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from peewee import Database, fn

from ..core import signing
from ..core.actions import Action
from ..db.database import is_postgres
from ..db.models import AuditChain, AuditCheckpoint, AuditLog
from . import chain as integrity
from .chain import Break, ChainCheck, Head
from .checkpoints import LEGACY, latest, stored
from .journal import MAX_CHAINS

PAGE = 5000
_COLUMNS = (
    AuditLog.id,
    AuditLog.seq,
    AuditLog.entry_hash,
    AuditLog.timestamp,
    AuditLog.action,
    AuditLog.success,
    AuditLog.reason,
    AuditLog.device_id,
    AuditLog.personal,
    AuditLog.subject,
    AuditLog.request_id,
    AuditLog.additional_data,
    AuditLog.actor,
    AuditLog.user_id,
    AuditLog.ip_address,
    AuditLog.user_agent,
    AuditLog.tenant_id,
)


@dataclass
class Result:
    rows: int = 0
    chains: int = 0
    legacy_rows: int = 0
    checkpoint: dict[str, Any] | None = None  # the latest checkpoint whose signature verified
    breaks: list[Break] = field(default_factory=list)
    period: tuple[datetime | None, datetime | None] = (None, None)
    held: list[tuple[int, str]] = field(default_factory=list)  # (id, sha256) of the --expect checkpoints found

    @property
    def intact(self) -> bool:
        return not self.breaks

    def summary(self) -> str:
        """One sentence a person can act on."""
        checked = f"{self.rows} rows in {self.chains} chains"
        if self.checkpoint is None:
            against = "no signed checkpoint yet"
        else:
            c = self.checkpoint
            against = f"checkpoint #{c['id']} of {c['at']}, signed by {', '.join(c['signed_by'])}"
        legacy = f"; {self.legacy_rows} older rows predate the chains" if self.legacy_rows else ""
        legacy += "".join(f"; the checkpoint you hold (#{n}, {digest[:16]}…) is there" for n, digest in self.held)
        if self.intact:
            return f"intact: {checked}, checked against {against}{legacy}"
        return f"BROKEN: {len(self.breaks)} chain(s) broken among {checked}, checked against {against}{legacy}"

    def lines(self) -> list[str]:
        """The summary, then each finding as reports state it too (`chain.findings`)."""
        return [self.summary(), *(f"  {line}" for line in integrity.findings(self.breaks))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "rows": self.rows,
            "chains": self.chains,
            "legacy_rows": self.legacy_rows,
            "checkpoint": self.checkpoint,
            "breaks": [b._asdict() for b in self.breaks],
            "summary": self.summary(),
        }


def verify(
    database: Database,
    public_keys: dict[str, Ed25519PublicKey],
    pseudonym_keys: Sequence[bytes],
    start: datetime | None = None,
    end: datetime | None = None,
    unsealed_before: datetime | None = None,
    expected: Sequence[str] = (),
) -> Result:
    """Check every chain (or, with start/end, the rows written in [start, end)) and the checkpoints.

    `unsealed_before`: rows written before this time must be covered by a signed checkpoint (the server
    signs one every few minutes): otherwise the newest checkpoints were removed — the one change the
    chain of checkpoints itself cannot show."""
    result = Result(period=(start, end))
    signed, legacy, floors, signed_timed = _checkpoints(database, public_keys, result, expected)
    erased = _erased_subjects(database)
    personal = _PersonalCheck(pseudonym_keys, erased)
    chains = {chain: Head(chain, seq, head) for chain, seq, head in _chain_rows(database)}
    timed: dict[int, int] = {}
    for chain, floor_seq, floor_hash, timed_from in (
        AuditChain.select(AuditChain.chain, AuditChain.floor_seq, AuditChain.floor_hash, AuditChain.timed_from)
        .where(AuditChain.chain >= 0)
        .tuples()
    ):
        if (floor_seq, floor_hash) != floors.get(chain, (0, integrity.GENESIS)):  # what prune trusts: signed?
            detail = "the chain's pruned floor differs from the one a checkpoint signed"
            result.breaks.append(Break(chain, "edited", floor_seq, None, detail))
        timed[chain] = timed_from if signed_timed is None else signed_timed.get(chain, 0)
        if timed_from != timed[chain]:  # moved to let a back-dated row pass
            detail = "the chain's start of monotonic time differs from the one a checkpoint signed"
            result.breaks.append(Break(chain, "edited", timed_from, None, detail))
    period = start is not None or end is not None
    places = _period_places(start, end) if period else {}
    for chain in sorted(set(chains) | set(signed)):  # a chain emptied by hand is still in its checkpoints
        floor = floors.get(chain, (0, integrity.GENESIS))
        head = chains[chain].seq if chain in chains else 0
        lo, hi = _range(chain, start, end, floor[0], head, places.get(chain))
        if hi is not None and hi < lo:
            continue  # nothing of this chain was written in the period
        result.chains += not period or chain in places  # not one read only for its rows beside the period
        previous, at = (floor[1], None) if lo == floor[0] + 1 else _row_at(chain, lo - 1)
        check = ChainCheck(chain, seq=lo - 1, hash=previous or integrity.GENESIS, at=at, timed_from=timed[chain])
        heads = [h for h in signed.get(chain, ()) if h.seq >= lo and (hi is None or h.seq <= hi)]
        _walk(database, check, personal, lo, hi, frozenset(h.seq for h in heads))
        # the rows the period holds (its neighbours are read, not counted), or all that were read
        result.rows += (places[chain][2] if chain in places else 0) if period else check.rows
        if hi is None:  # the chain's end was read: every later signed head must be there too
            heads = [h for h in signed.get(chain, ()) if h.seq >= lo]
        broken = check.finish(heads, chains.get(chain) if hi is None else None, floor[0], hi)
        if broken is not None:
            result.breaks.append(broken)
        below = AuditLog.select(fn.COUNT(AuditLog.id)).where((AuditLog.chain == chain) & (AuditLog.seq <= floor[0]))
        if floor[0] and below.scalar():
            result.breaks.append(Break(chain, "inserted", None, None, "rows below the pruned part of the chain"))
    _unchained(database, result, legacy)
    if unsealed_before is not None:
        _unsealed(database, result, signed, unsealed_before)
    return result


def _walk(
    database: Database, check: ChainCheck, personal: _PersonalCheck, lo: int, hi: int | None, watch: frozenset[int]
) -> None:
    """Feed the chain's rows from place `lo` (to `hi`) to `check`, and check each row's personal fields."""
    chain = check.chain
    for row in chain_rows_between(database, chain, lo, hi):
        entry = integrity.Entry(*row[3:13], row[16])
        before = check.first_break
        check.feed(row[0], row[1], row[2], entry, watch)
        moved = before is None and check.first_break is not None and check.first_break.kind == "edited"
        if moved and _linked_nearby(chain, row[1], row[2], entry):  # consistent, but not where it belongs
            check.first_break = check.first_break._replace(kind="reordered")
        if check.first_break is None and before is None and not personal.ok(row[13:16], row[8], row[9]):
            check.first_break = Break(chain, "personal-data-edited", row[1], row[0], personal.detail)


def since_last_checkpoint(
    database: Database,
    public_keys: dict[str, Ed25519PublicKey],
    pseudonym_keys: Sequence[bytes],
    snapshot: Sequence[Head],
) -> list[Break]:
    """The breaks among the rows a checkpoint of `snapshot` would seal: those after the last checkpoint's heads
    (links, hashes, monotonic time, personal data, every row there), and that checkpoint's own signature. Only
    those rows: what the last checkpoint sealed, `verify` checks — a periodic checkpoint must stay cheap."""
    stored_last = latest(database)
    breaks: list[Break] = []
    sealed: dict[int, Head] = {}
    if stored_last is not None:
        try:
            checkpoint = stored(stored_last)
            sealed = {h.chain: h for h in checkpoint.heads}
            valid = signing.valid_signers(checkpoint.text, checkpoint.signatures, public_keys)
        except (ValueError, TypeError, KeyError, AttributeError):
            valid = []
        if not valid:
            detail = f"checkpoint #{stored_last.id}: no valid signature by a known key"
            return [Break(-1, "forged-checkpoint", None, None, detail)]
    chains = AuditChain.select(AuditChain.chain, AuditChain.floor_seq, AuditChain.floor_hash, AuditChain.timed_from)
    known = {chain: (floor_seq, floor_hash, timed) for chain, floor_seq, floor_hash, timed in chains.tuples()}
    personal = _PersonalCheck(pseudonym_keys, _erased_subjects(database))
    for head in snapshot:
        floor_seq, floor_hash, timed = known.get(head.chain, (0, integrity.GENESIS, 0))
        start = sealed.get(head.chain, Head(head.chain, floor_seq, floor_hash))
        if head.seq <= start.seq:
            continue  # nothing new in this chain
        at = _row_at(head.chain, start.seq)[1] if start.seq > floor_seq else None
        check = ChainCheck(head.chain, seq=start.seq, hash=start.hash, at=at, timed_from=timed)
        _walk(database, check, personal, start.seq + 1, head.seq, frozenset((head.seq,)))
        broken = check.finish([head], None, floor_seq, head.seq)
        if broken is not None:
            breaks.append(broken)
    return breaks


def _unsealed(database: Database, result: Result, signed: dict[int, list[Head]], before: datetime) -> None:
    for (chain,) in AuditChain.select(AuditChain.chain).where(AuditChain.chain >= 0).tuples():
        covered = max((h.seq for h in signed.get(chain, ())), default=0)
        oldest = (
            AuditLog.select(fn.COUNT(AuditLog.id))
            .where((AuditLog.chain == chain) & (AuditLog.seq > covered) & (AuditLog.timestamp < before))
            .scalar()
        )
        if oldest:
            detail = (
                f"{oldest} row(s) written before {before:%Y-%m-%d %H:%M} UTC are covered by no signed checkpoint: "
                "the newest checkpoints were removed, or the service has not been signing them"
            )
            result.breaks.append(Break(chain, "unsealed", covered + 1, None, detail))


def _checkpoints(
    database: Database, public_keys: dict[str, Ed25519PublicKey], result: Result, expected: Sequence[str] = ()
) -> tuple[dict[int, list[Head]], int | None, dict[int, tuple[int, str]], dict[int, int] | None]:
    """Every validly signed head by chain; the count of rows from before the chains the first checkpoint
    signed; each chain's pruned floor (place, hash); each chain's place up to which rows predate monotonic
    time, as the last checkpoint that says signed it."""
    signed: dict[int, list[Head]] = {}
    legacy: int | None = None
    floors: dict[int, tuple[int, str]] = {}
    timed: dict[int, int] | None = None  # None: no checkpoint has signed the places yet
    previous = None
    seen: dict[str, int] = {}  # sha256 of each validly signed checkpoint → its id
    for row in AuditCheckpoint.select().order_by(AuditCheckpoint.id):
        try:
            checkpoint = stored(row)
            checkpoint.payload["at"], checkpoint.payload["reason"], checkpoint.heads  # noqa: B018 - well-formed?
            if not isinstance(checkpoint.signatures, dict):
                raise TypeError("signatures")
        except (ValueError, TypeError, KeyError, AttributeError):
            detail = f"checkpoint #{row.id} is not a checkpoint (unreadable payload or signatures)"
            result.breaks.append(Break(-1, "forged-checkpoint", None, None, detail))
            previous = None
            continue
        before, previous = previous, hashlib.sha256(row.payload.encode("utf-8")).hexdigest()
        if checkpoint.payload.get("previous") != before:  # each checkpoint names the one before it
            detail = f"checkpoint #{row.id} does not follow the one before it: checkpoints were removed or edited"
            result.breaks.append(Break(-1, "deleted-checkpoint", None, None, detail))
        signers = signing.valid_signers(checkpoint.text, checkpoint.signatures, public_keys)
        if not signers:
            detail = f"checkpoint #{row.id}: no valid signature by a known key"
            result.breaks.append(Break(-1, "forged-checkpoint", None, None, detail))
            continue
        payload = checkpoint.payload
        for head in checkpoint.heads:
            signed.setdefault(head.chain, []).append(head)
        legacy = payload.get("legacy_rows", 0) if legacy is None else legacy
        for chain, (seq, hash_) in payload.get("floors", {}).items():
            floors[int(chain)] = (seq, hash_)
        if isinstance(payload.get("timed_from"), dict):
            timed = {int(chain): seq for chain, seq in payload["timed_from"].items()}
        result.checkpoint = {"id": row.id, "at": payload["at"], "reason": payload["reason"], "signed_by": signers}
        result.checkpoint["sha256"] = previous
        seen[previous] = row.id
    for digest in expected:  # checkpoints the operator holds outside the database (logs, reports)
        if digest.lower() in seen:
            result.held.append((seen[digest.lower()], digest.lower()))
        else:
            detail = f"the checkpoint with SHA-256 {digest[:16]}… you hold is not in the database"
            result.breaks.append(Break(-1, "deleted-checkpoint", None, None, detail))
    return signed, legacy, floors, timed


def _erased_subjects(database: Database) -> set[str]:
    rows = AuditLog.select(AuditLog.additional_data).where(
        (AuditLog.action == Action.USER_ERASED) & AuditLog.chain.between(0, MAX_CHAINS - 1) & (AuditLog.seq > 0)
    )  # only rows the walk verifies: one slipped in elsewhere vouches for nothing
    subjects: set[str] = set()
    for (data,) in rows.tuples():
        try:
            recorded = json.loads(data) if data else {}
            found = recorded.get("subjects", [recorded.get("subject")]) if isinstance(recorded, dict) else []
        except ValueError:
            found = []
        subjects.update(s for s in found if isinstance(s, str))
    return subjects


def _chain_rows(database: Database) -> list[tuple]:
    """The chains to walk: those with a head, or with rows (one index probe each, not a scan of the table)."""
    query = AuditChain.select(AuditChain.chain, AuditChain.seq, AuditChain.head).where(AuditChain.chain >= 0)
    return [row for row in query.tuples() if row[1] > 0 or _has_rows(AuditLog.chain == row[0])]


def _has_rows(condition) -> bool:
    return AuditLog.select(AuditLog.id).where(condition).limit(1).scalar() is not None


def _period_places(start: datetime | None, end: datetime | None) -> dict[int, tuple[int, int, int]]:
    """Each chain's first and last place among the rows written in the period, and their number: one pass
    over the period's rows by the timestamp index, however far back the period lies."""
    when = AuditLog.chain.between(0, MAX_CHAINS - 1) & (AuditLog.seq > 0)
    if start is not None:
        when &= AuditLog.timestamp >= start
    if end is not None:
        when &= AuditLog.timestamp < end
    query = AuditLog.select(AuditLog.chain, fn.MIN(AuditLog.seq), fn.MAX(AuditLog.seq), fn.COUNT(AuditLog.id))
    return {chain: (first, last, n) for chain, first, last, n in query.where(when).group_by(AuditLog.chain).tuples()}


def _range(
    chain: int, start: datetime | None, end: datetime | None, floor: int, head: int, places: tuple | None
) -> tuple[int | None, int | None]:
    """The places in `chain` to check: all after the floor; or for a period, its rows and the row on either
    side of them (a deletion at either edge is a gap; a row whose time was moved out of the period is still
    read); or, when none of the chain's rows is in the period, from the last row written before `start` to
    the first written at or after `end` — so a period whose rows were all deleted is a gap, not an empty
    period, and a row moved out of it is read as one of the two."""
    if start is None and end is None:
        return floor + 1, None
    if places is not None:
        first, last, _ = places
        lo = floor + 1 if start is None else max(floor + 1, first - 1)
        # the row after the period's last, unless the chain ends there: then read to the end, so rows cut from the
        # tail are a tail cut (against the head and the checkpoints), as when the whole trail is verified
        beyond = last + 1 <= head and _has_rows((AuditLog.chain == chain) & (AuditLog.seq > last))
        return lo, last + 1 if end is not None and beyond else None
    mine = (AuditLog.chain == chain) & (AuditLog.seq > floor)
    lo = floor + 1
    if start is not None:
        before = AuditLog.select(fn.MAX(AuditLog.seq)).where(mine & (AuditLog.timestamp < start)).scalar()
        lo = before if before is not None else lo
    hi = None
    if end is not None:
        after = AuditLog.select(fn.MIN(AuditLog.seq)).where(mine & (AuditLog.seq >= lo) & (AuditLog.timestamp >= end))
        hi = after.scalar()
    return lo, hi


def _linked_nearby(chain: int, seq: int, stored_hash: str, entry: integrity.Entry, reach: int = 16) -> bool:
    """Whether the row follows, unaltered, a row a few places away: it was moved, not edited."""
    nearby = AuditLog.select(AuditLog.entry_hash).where(
        (AuditLog.chain == chain) & (AuditLog.seq.between(seq - reach, seq + reach))
    )
    candidates = [integrity.GENESIS, *(h for (h,) in nearby.tuples() if h)]
    return any(integrity.link(h, entry) == stored_hash for h in candidates)


def _row_at(chain: int, seq: int) -> tuple[str | None, str | None]:
    """(entry hash, time as the hash covers it) of the row at a place: where a partial walk starts from."""
    query = AuditLog.select(AuditLog.entry_hash, AuditLog.timestamp).where(
        (AuditLog.chain == chain) & (AuditLog.seq == seq)
    )
    found = query.tuples().first()
    return (None, None) if found is None else (found[0], integrity.timestamp_text(found[1]))


def chain_rows_between(database: Database, chain: int, lo: int, hi: int | None) -> Iterator[tuple]:
    """The chain's rows from place `lo` (to `hi`), in order, a page at a time (keyset on place and id).
    Plain SQL, not the model: a million rows through peewee's row conversion would double the time."""
    postgres = is_postgres(database)
    mark = "%s" if postgres else "?"
    columns = ", ".join(c.column_name for c in _COLUMNS)
    if postgres:  # the timestamp as the text the hash covers: no datetime made and formatted per row
        columns = columns.replace("timestamp", "to_char(timestamp, 'YYYY-MM-DD HH24:MI:SS.US')", 1)
    sql = (
        f"SELECT {columns} FROM audit_logs WHERE chain = {mark} AND seq >= {mark} AND seq <= {mark} "
        f"AND NOT (seq = {mark} AND id <= {mark}) ORDER BY seq, id LIMIT {PAGE}"
    )
    after, last = (lo - 1, 2**62), hi if hi is not None else 2**62  # strictly after place lo - 1
    while True:
        page = database.execute_sql(sql, (chain, after[0], last, after[0], after[1])).fetchall()
        yield from page
        if len(page) < PAGE:
            return
        after = (page[-1][1], page[-1][0])


def _unchained(database: Database, result: Result, signed_legacy: int | None) -> None:
    """Rows outside every chain: those before the chains existed are counted (and must match the signed
    count); any other was put there by hand."""
    boundary = AuditChain.select(AuditChain.seq).where(AuditChain.chain == LEGACY).scalar() or 0

    def count(condition) -> int:
        return AuditLog.select(fn.COUNT(AuditLog.id)).where(condition).scalar()

    # Each condition leads with the chain, so each count is a range of the (chain, seq) index, not a scan.
    legacy = count(AuditLog.chain.is_null() & (AuditLog.id <= boundary))
    forged = count(AuditLog.chain.is_null() & (AuditLog.id > boundary))
    forged += count(AuditLog.chain < 0) + count(AuditLog.chain >= MAX_CHAINS)
    for chain in range(MAX_CHAINS):
        forged += count((AuditLog.chain == chain) & (AuditLog.seq.is_null() | (AuditLog.seq <= 0)))
    result.legacy_rows = legacy
    if forged:
        result.breaks.append(Break(-1, "inserted", None, None, f"{forged} row(s) outside every chain"))
    if signed_legacy is not None and legacy != signed_legacy:
        detail = f"{legacy} rows from before the chains, the checkpoint signed {signed_legacy}"
        result.breaks.append(Break(-1, "edited", None, None, detail))


class _PersonalCheck:
    """Personal fields against the digest the chain covers, under any of the pseudonym keys (one per master
    secret version); the answers for a (user, address, agent) are remembered, since they repeat."""

    detail = "the user id, address or User-Agent differs from what the chain recorded"

    def __init__(self, keys: Sequence[bytes], erased: set[str]):
        self.keys, self.erased = list(keys), erased
        self.known: dict[tuple, frozenset[str]] = {}

    def ok(self, fields: Sequence[Any], digest: str | None, subject: str | None) -> bool:
        fields = tuple(fields)
        if fields == integrity.NO_PERSONAL_DATA and subject is not None and subject in self.erased:
            return True
        digests = self.known.get(fields)
        if digests is None:
            digests = frozenset(integrity.personal_digest(key, *fields) for key in self.keys)
            if len(self.known) < 100_000:
                self.known[fields] = digests
        return digest in digests
