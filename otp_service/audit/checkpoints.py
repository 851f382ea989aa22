"""Signed checkpoints of the audit chains: taking them (periodically, at reports, on demand, at a key
rotation, a prune or an erasure), storing them, and the keys that sign and verify them.

A checkpoint is every chain's head (place and hash) read in one statement — one consistent snapshot —
signed with Ed25519 (`AUDIT_SIGNING_KEY`). The first checkpoint after the signing key changed is signed by
the previous key too (`AUDIT_PREVIOUS_SIGNING_KEY`), so the new key's first signature is vouched for by the
old one. Public keys are served at `GET /api/v1/audit/keys`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from peewee import Database, fn

from ..config import Settings
from ..core import signing
from ..core.transitions import isoformat
from ..db.database import is_postgres
from ..db.models import AuditChain, AuditCheckpoint, AuditLog
from . import chain as integrity
from .chain import Checkpoint, Head

CHECKPOINT_LOCK = 0x6F74_7063  # a PostgreSQL advisory lock: one process takes the periodic checkpoint


@dataclass(frozen=True)
class Keys:
    """The signing key (and at a rotation the previous one), and every public key verification accepts."""

    key_id: str
    signing: Ed25519PrivateKey
    previous: dict[str, Ed25519PrivateKey]
    public: dict[str, Ed25519PublicKey]

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        current = signing.signing_key(settings.audit_signing_key)
        key_id = settings.audit_signing_key_id or signing.key_id(current)
        previous = {name: signing.signing_key(seed) for name, seed in settings.audit_previous_signing_key.items()}
        public = {name: signing.public_key(key) for name, key in settings.audit_verify_keys.items()}
        public |= {name: key.public_key() for name, key in previous.items()}
        public[key_id] = current.public_key()
        return cls(key_id, current, previous, public)

    def fingerprints(self) -> dict[str, str]:
        """Every known key's full public-key fingerprint (SHA-256 of the raw key, hex), by key id."""
        return {name: signing.fingerprint(key) for name, key in sorted(self.public.items())}

    def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "key_id": name,
                "public_key": signing.public_b64(key),
                "public_key_pem": signing.public_pem(key),
                "fingerprint": signing.fingerprint(key),
                "current": name == self.key_id,
            }
            for name, key in sorted(self.public.items())
        ]


def heads(database: Database) -> tuple[Head, ...]:
    """Every chain that has ever had a row: its place and hash, in one statement (a consistent snapshot)."""
    query = (
        AuditChain.select(AuditChain.chain, AuditChain.seq, AuditChain.head)
        .where((AuditChain.chain >= 0) & (AuditChain.seq > 0))
        .order_by(AuditChain.chain)
    )
    return tuple(Head(*row) for row in query.tuples())


def stored(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(row.id, row.payload, json.loads(row.signatures))


def timed_from(database: Database) -> dict[str, int]:
    """Each chain's place up to which rows predate monotonic time (the migration's), where not 0: signed in
    every checkpoint, so moving it to cover a back-dated row is caught."""
    query = AuditChain.select(AuditChain.chain, AuditChain.timed_from).where(
        (AuditChain.chain >= 0) & (AuditChain.timed_from > 0)
    )
    return {str(chain): seq for chain, seq in query.tuples()}


def latest(database: Database) -> AuditCheckpoint | None:
    """The last checkpoint stored (signed or not: the caller checks)."""
    return AuditCheckpoint.select().order_by(AuditCheckpoint.id.desc()).first()


def take(
    database: Database,
    keys: Keys,
    reason: str,
    at: datetime,
    extra: dict[str, Any] | None = None,
    snapshot: tuple[Head, ...] | None = None,
) -> AuditCheckpoint:
    """Sign the chains' heads now (or `snapshot`, the heads whose rows were verified) and store the
    checkpoint; call in a transaction with the change it seals (a prune, an erasure) or on its own."""
    last = latest(database)
    signers = {keys.key_id: keys.signing}
    if last is not None and keys.key_id not in _signers_of(last):
        reason = "rotation" if reason == "periodic" else reason
        signers |= keys.previous  # the old key vouches for the new one's first checkpoint
    previous = None if last is None else hashlib.sha256(last.payload.encode("utf-8")).hexdigest()
    sealed = heads(database) if snapshot is None else snapshot
    payload = {"at": isoformat(at), "reason": reason, "heads": [list(h) for h in sealed], "previous": previous}
    payload |= {"legacy_rows": legacy_rows(database), "timed_from": timed_from(database), **(extra or {})}
    text = integrity.canonical(payload)
    signatures = {name: signing.sign(key, text) for name, key in signers.items()}
    return AuditCheckpoint.create(created_at=at, reason=reason, payload=text, signatures=json.dumps(signatures))


def _signers_of(row: AuditCheckpoint) -> dict:
    try:
        signatures = json.loads(row.signatures)
    except ValueError:
        return {}
    return signatures if isinstance(signatures, dict) else {}


def legacy_rows(database: Database) -> int:
    """Audit rows written before the chains existed (the migration's boundary): counted in every checkpoint,
    so rows slipped in or taken out among them are caught too."""
    boundary = AuditChain.select(AuditChain.seq).where(AuditChain.chain == LEGACY).scalar() or 0
    return AuditLog.select(fn.COUNT(AuditLog.id)).where(AuditLog.chain.is_null() & (AuditLog.id <= boundary)).scalar()


LEGACY = -1  # the audit_chains row whose seq is the last audit row id written before the chains


def due(database: Database, settings: Settings, at: datetime) -> bool:
    """A periodic checkpoint is due: AUDIT_CHECKPOINT_SECONDS since the last, or AUDIT_CHECKPOINT_ROWS rows."""
    last = AuditCheckpoint.select().order_by(AuditCheckpoint.id.desc()).first()
    now_rows = sum(h.seq for h in heads(database))
    if last is None:
        return now_rows > 0
    try:
        sealed = sum(h.seq for h in stored(last).heads)
    except (ValueError, TypeError, KeyError):
        return True  # the last one is unreadable (verify reports it): seal what is there now
    if sealed == now_rows:
        return False  # nothing new to seal
    old = (at - _when(last.created_at)).total_seconds() >= settings.audit_checkpoint_seconds
    return old or now_rows - sealed >= settings.audit_checkpoint_rows


class Unverified(Exception):
    """The rows a checkpoint was to seal do not verify: nothing was signed."""

    def __init__(self, breaks: Sequence[integrity.Break]):
        super().__init__(f"{len(breaks)} chain(s) do not verify")
        self.breaks = list(breaks)


Check = Callable[[tuple[Head, ...]], Sequence[integrity.Break]]  # the breaks among the rows up to these heads


def take_if_due(
    database: Database,
    keys: Keys,
    settings: Settings,
    at: datetime,
    check: Check,
) -> AuditCheckpoint | None:
    """What each server process runs every few seconds; one of them takes the checkpoint — of the heads read
    once, after `check` found the rows up to them sound (`verify.since_last_checkpoint`): a checkpoint makes
    what it seals look proven, so it must never seal a row no one verified (raises Unverified)."""
    with database.atomic():
        if is_postgres(database) and not _try_lock(database):
            return None  # another process is taking it
        if not due(database, settings, at):
            return None
        return take_verified(database, keys, "periodic", at, check)


def take_verified(
    database: Database, keys: Keys, reason: str, at: datetime, check: Check, extra: dict[str, Any] | None = None
) -> AuditCheckpoint:
    """Sign the heads read once, after `check` found the rows up to them sound: every checkpoint — periodic,
    at a report, an erasure, on demand (a prune's follows a verification of the whole trail) — goes through
    here, because a checkpoint makes what it seals look
    proven and must never seal a row no one verified (raises Unverified: nothing is signed). Call in a
    transaction (with the change it seals, if any). `check` has no default: a checkpoint that skipped it is
    what this function exists to prevent."""
    snapshot = heads(database)
    breaks = check(snapshot)
    if breaks:
        raise Unverified(breaks)
    return take(database, keys, reason, at, extra, snapshot=snapshot)


def _try_lock(database: Database) -> bool:
    return database.execute_sql("SELECT pg_try_advisory_xact_lock(%s)", (CHECKPOINT_LOCK,)).fetchone()[0]


def status(database: Database | None = None) -> dict[str, Any]:
    """For `/metrics`: when the last verification passed, how many failed, when the last checkpoint was signed."""
    last = AuditCheckpoint.select(fn.MAX(AuditCheckpoint.created_at))
    return {
        "last_verified": _when(last.where(AuditCheckpoint.reason == "verified").scalar()),
        "failed_verifications": AuditLog.select(fn.COUNT(AuditLog.id))
        .where((AuditLog.action == "AUDIT_VERIFIED") & ~AuditLog.success)
        .scalar(),
        "last_checkpoint": _when(last.scalar()),
    }


def _when(value: datetime | str | None) -> datetime | None:
    """An aggregate's time (SQLite returns it as text)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def still_there(checkpoint_id: int, sha256: str) -> bool:
    """Whether a checkpoint is still stored, unaltered."""
    row = AuditCheckpoint.get_or_none(AuditCheckpoint.id == checkpoint_id)
    return row is not None and hashlib.sha256(row.payload.encode("utf-8")).hexdigest() == sha256
