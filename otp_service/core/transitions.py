"""What a decision is made on and what it produces: a device's whole state, and a transition from one
state to the next with the audit rows that record it.

These are plain values. The rules (`verification`, `lifecycle`) turn a state into a transition without
I/O; `store` applies a transition only while the row still has the version it was decided on; `engine`
decides again when it does not. So every path, whatever database or process it runs in, applies a
decision made by the same function on the state that was current when the write landed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

from .actions import Action

DEFAULT_TENANT = 1  # what the tenants' migration put every earlier row in, and where API_KEY's keys act

HARD_LOCK = datetime(9999, 12, 31)  # locked_until of a device (or recovery codes) only an operator's action reopens


def locked(locked_until: datetime | None, at: datetime) -> bool:
    """Locked at `at` (for a while, or for good): what a device and a user's recovery codes share."""
    return locked_until is not None and locked_until > at


class DeviceState(NamedTuple):
    """One row of `devices`, field for field (the store reads and writes them in this order). A tuple:
    the hot path builds one from every row it reads and a new one for every change (`_replace`)."""

    device_id: str
    user_id: str
    salt: str  # hex of the derivation salt: not a secret without the master secret
    key_version: int
    derived_key_hash: str
    digits: int
    interval: int
    algorithm: str
    issuer: str | None
    is_active: bool
    created_at: datetime
    last_used: datetime | None
    usage_count: int
    deactivated_at: datetime | None
    last_step: int  # RFC 6238 §5.2: the last time step accepted; a code for it or an earlier one is a replay
    drift: int  # the device's clock offset in steps, as last observed
    failed_attempts: int  # consecutive wrong codes since the last accepted one or unlock
    locked_until: datetime | None
    version: int  # +1 with every change
    pending_until: datetime | None = None  # registered, not yet confirmed by a first code: expires at this time
    tenant_id: int = DEFAULT_TENANT  # the tenant whose namespace the device id is in (`core.tenants`)

    @property
    def key(self) -> tuple[int, str]:
        """What names the device: its id within its tenant."""
        return self.tenant_id, self.device_id

    @property
    def expired(self) -> bool:
        """An enrolment that ended unconfirmed (deactivated at or after its deadline, by the expiry)."""
        return (
            not self.is_active
            and self.pending_until is not None
            and self.deactivated_at is not None
            and self.deactivated_at >= self.pending_until
        )

    def enrollment_expired(self, at: datetime) -> bool:
        """The enrolment ended unconfirmed: recorded (`expired`), or its deadline passed unrecorded so far."""
        return self.expired or (self.is_active and self.pending_until is not None and self.pending_until <= at)

    def locked(self, at: datetime) -> bool:
        return locked(self.locked_until, at)

    @property
    def hard_locked(self) -> bool:
        """Locked until an operator unlocks it (the hard limit of wrong codes was reached)."""
        return self.locked_until == HARD_LOCK

    def status(self, at: datetime) -> str:
        """pending (registered, awaiting its first code), active, or deactivated (which an enrolment not
        confirmed in time also is, from its deadline on)."""
        if not self.is_active or (self.pending_until is not None and self.pending_until <= at):
            return "deactivated"
        return "active" if self.pending_until is None else "pending"


STATE_COLUMNS: tuple[str, ...] = DeviceState._fields
UNKNOWN: Any = type("Unknown", (), {"__repr__": lambda self: "UNKNOWN"})()  # a state not read (yet, or again)


class AuditEvent(NamedTuple):
    """One audit row, before the store adds who asked (the request context) and the row id."""

    action: Action
    success: bool
    reason: str | None = None
    data: dict[str, Any] | None = None


class Transition(NamedTuple):
    """A decision: the state it was made on (`before`, None: no such device), the state to write (`after`,
    None: nothing changes) and the audit rows, which are written with it or not at all.

    `verdict` is what the caller is answered (ACCEPTED, INVALID_CODE, DEVICE_LOCKED, …)."""

    device_id: str
    at: datetime
    before: DeviceState | None
    after: DeviceState | None
    events: tuple[AuditEvent, ...]
    verdict: str
    details: dict[str, Any] | None = None  # what the answer reports beyond the verdict

    @property
    def expected_version(self) -> int | None:
        """The version the row must still have for this to apply (None: the row must still not exist)."""
        return None if self.before is None else self.before.version

    @property
    def writes(self) -> bool:
        return self.after is not None

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to record: there is nothing to apply."""
        return self.after is None and not self.events

    @property
    def user_id(self) -> str | None:
        state = self.after or self.before
        return None if state is None else state.user_id

    @property
    def current(self) -> DeviceState | None:
        """The device's state once this has applied."""
        return self.after or self.before


def to_datetime(unix_time: float) -> datetime:
    """Naive UTC, the form stored in both databases."""
    return datetime.fromtimestamp(unix_time, UTC).replace(tzinfo=None)


EPOCH = datetime(1970, 1, 1)


def unix_time(value: datetime) -> float:
    """Seconds since the epoch of a naive UTC datetime (not `.timestamp()`, which takes it as local time)."""
    return (value - EPOCH).total_seconds()


def isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"
