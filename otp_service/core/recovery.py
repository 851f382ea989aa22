"""Recovery codes: ten one-time codes per user for when the phone is lost, as pure functions.

The codes are shown once and kept only as keyed hashes — HMAC-SHA256 under a key derived from the master
secret, over the user id and the code — so a stolen database yields neither the codes nor a way to test
guesses offline. A set is one row per user with its own failure count and lock, decided like a device's
(`verification.failure`): a wrong code counts, the budget locks the set, longer each time.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

from .actions import Action
from .errors import ValidationError
from .transitions import DEFAULT_TENANT, HARD_LOCK, AuditEvent, Transition, isoformat, locked
from .verification import Policy, failure

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: nothing to misread from paper
CODE_LENGTH = 12  # 60 bits, written as three groups of four: XXXX-XXXX-XXXX
CODES_PER_SET = 10


class RecoveryState(NamedTuple):
    """One row of `recovery_codes`; `codes` holds (hash hex, used at or None) pairs."""

    user_id: str
    codes: tuple[tuple[str, datetime | None], ...]
    key_version: int
    created_at: datetime
    last_used: datetime | None
    failed_attempts: int
    locked_until: datetime | None
    version: int
    tenant_id: int = DEFAULT_TENANT

    def locked(self, at: datetime) -> bool:
        return locked(self.locked_until, at)

    @property
    def hard_locked(self) -> bool:
        return self.locked_until == HARD_LOCK

    @property
    def remaining(self) -> int:
        return sum(used is None for _, used in self.codes)

    @classmethod
    def from_row(cls, row: tuple) -> RecoveryState:
        user_id, codes, *rest = row
        pairs = tuple((h, None if used is None else datetime.fromisoformat(used)) for h, used in json.loads(codes))
        return cls(user_id, pairs, *rest)

    def row(self) -> tuple:
        codes = json.dumps([[h, None if used is None else used.isoformat()] for h, used in self.codes])
        return (self.user_id, codes, *self[2:])


def new_codes(count: int = CODES_PER_SET) -> list[str]:
    """Fresh codes from the OS's CSPRNG, formatted for reading out: XXXX-XXXX-XXXX."""
    codes = ["".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH)) for _ in range(count)]
    return ["-".join(code[i : i + 4] for i in range(0, CODE_LENGTH, 4)) for code in codes]


def normalise(value: object) -> str:
    """A code as typed — any case, with or without hyphens or spaces — in its canonical form."""
    if not isinstance(value, str) or len(value) > 64 or not value.isascii():  # no second spelling: "ſ" is not "S"
        raise ValidationError("code must be a recovery code such as ABCD-EFGH-JKLM", details={"field": "code"})
    code = value.replace("-", "").replace(" ", "").upper()
    if len(code) != CODE_LENGTH or any(c not in ALPHABET for c in code):
        raise ValidationError(
            f"code must be a recovery code: {CODE_LENGTH} letters and digits, such as ABCD-EFGH-JKLM",
            details={"field": "code"},
        )
    return code


def code_hash(key: bytes, user_id: str, code: str) -> str:
    """The keyed hash stored for a code (its canonical form), bound to its user."""
    return hmac.digest(key, user_id.encode("utf-8") + b"\x00" + normalise(code).encode("ascii"), "sha256").hex()


def decide_issue(
    user_id: str,
    state: RecoveryState | None,
    hashes: list[str],
    key_version: int,
    at: datetime,
    tenant_id: int = DEFAULT_TENANT,
) -> Transition:
    """A new set replaces any earlier one, used or not, and clears its failures and lock."""
    version = 0 if state is None else state.version + 1
    codes = tuple((h, None) for h in hashes)
    after = RecoveryState(user_id, codes, key_version, at, None, 0, None, version, tenant_id)
    data = {"count": len(hashes), "replaced_remaining": None if state is None else state.remaining}
    event = AuditEvent(Action.RECOVERY_CODES_ISSUED, True, None, data)
    return Transition(None, at, state, after, (event,), "ISSUED")


def decide_use(
    user_id: str,
    state: RecoveryState | None,
    code: str,
    key: Callable[[int], bytes | None],
    at: datetime,
    policy: Policy,
) -> Transition:
    """A code is valid once; its hash is compared with every code of the set, with no early exit. `key`
    gives the hashing key of a master secret version (None: that version is no longer configured)."""
    action = Action.RECOVERY_CODE_VERIFICATION

    def refuse(reason: str, **details) -> Transition:
        return Transition(None, at, state, None, (AuditEvent(action, False, reason),), reason, details)

    if state is None or not state.codes:
        return refuse("NO_RECOVERY_CODES")
    if state.locked(at):
        return refuse("LOCKED", locked_until=state.locked_until, hard=state.hard_locked)
    hashing_key = key(state.key_version)
    if hashing_key is None:
        return refuse("KEY_UNAVAILABLE")
    digest = code_hash(hashing_key, user_id, code)
    found = None
    for n, (stored, _) in enumerate(state.codes):
        if hmac.compare_digest(stored, digest):
            found = n
    if found is not None and state.codes[found][1] is not None:
        return refuse("REPLAYED", used_at=state.codes[found][1])
    if found is not None:
        codes = tuple((h, at if n == found else used) for n, (h, used) in enumerate(state.codes))
        after = state._replace(
            codes=codes, last_used=at, failed_attempts=0, locked_until=None, version=state.version + 1
        )
        event = AuditEvent(action, True, None, {"remaining": after.remaining})
        return Transition(None, at, state, after, (event,), "ACCEPTED", {"remaining": after.remaining})
    failures = state.failed_attempts + 1
    locked_until, details, locks = failure(failures, state.locked_until, at, policy, Action.RECOVERY_CODES_LOCKED)
    after = state._replace(failed_attempts=failures, locked_until=locked_until, version=state.version + 1)
    event = AuditEvent(action, False, "INVALID_CODE", {"failed_attempts": failures})
    return Transition(None, at, state, after, (event, *locks), "INVALID_CODE", details)


def describe(state: RecoveryState | None) -> dict | None:
    """What a user's listing shows of the set: never a hash."""
    if state is None:
        return None
    hard = state.hard_locked
    return {
        "remaining": state.remaining,
        "total": len(state.codes),
        "created_at": isoformat(state.created_at),
        "last_used": isoformat(state.last_used),
        "failed_attempts": state.failed_attempts,
        "locked_until": None if hard else isoformat(state.locked_until),
        "hard_locked": hard,
    }


def audited_user(transition: Transition, user_id: str) -> str | None:
    """Whom a recovery-code transition's audit rows name: the user, when they have a set (before or after);
    no one when they have none. A refusal for a user with no set is about nothing the service holds — like
    a code for an unknown device, which names no user either — and naming them would write personal data
    of someone who may just have been erased: a request that waited on the set's row while an erasure
    deleted it decides after the erasure, and must not bring the user back into the trail."""
    return user_id if transition.before is not None or transition.after is not None else None
