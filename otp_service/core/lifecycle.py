"""The other state changes of a device, as pure functions like `verification.decide`: registration
(or taking over a deactivated or expired id), expiry of an enrolment not confirmed in time, deactivation,
operator unlock and drift reset. Each returns the transition and its
audit rows; `store` applies it only if the device is still in the state it was decided on."""

from __future__ import annotations

from datetime import datetime

from .actions import Action
from .transitions import AuditEvent, DeviceState, Transition, isoformat


def decide_register(device_id: str, state: DeviceState | None, fresh: DeviceState, at: datetime) -> Transition:
    """A new device, or a new registration of a deactivated or expired id (new salt, so a new key); refused
    while an active or pending device holds the id. `fresh` is the new row (pending_until set when it must
    be confirmed), whatever its version."""
    if state is not None and state.status(at) != "deactivated":
        event = AuditEvent(Action.DEVICE_REGISTERED, False, "DEVICE_EXISTS")
        return Transition(device_id, at, state, None, (event,), "DEVICE_EXISTS")
    expired = () if state is None or not state.is_active else decide_expire(device_id, state, at).events
    after = fresh._replace(version=0 if state is None else state.version + 1)
    data = {"digits": fresh.digits, "interval": fresh.interval, "algorithm": fresh.algorithm}
    data |= {"key_version": fresh.key_version, "pending": fresh.pending_until is not None}
    event = AuditEvent(Action.DEVICE_REGISTERED, True, None, data)
    return Transition(device_id, at, state, after, (*expired, event), "REGISTERED")


def decide_expire(device_id: str, state: DeviceState | None, at: datetime) -> Transition:
    """An enrolment not confirmed by its deadline ends: the device is deactivated (its id may be registered
    again), and the expiry is recorded once, by whichever request or sweep sees it first."""
    if state is None or not state.is_active or state.pending_until is None or state.pending_until > at:
        return Transition(device_id, at, state, None, (), "NOT_EXPIRED")
    after = state._replace(is_active=False, deactivated_at=at, version=state.version + 1)
    data = {"pending_until": isoformat(state.pending_until)}
    event = AuditEvent(Action.ENROLLMENT_EXPIRED, True, None, data)
    return Transition(device_id, at, state, after, (event,), "EXPIRED")


def decide_deactivate(device_id: str, state: DeviceState | None, at: datetime) -> Transition:
    """Idempotent: deactivating a deactivated device answers as the first time did and records nothing new."""
    if state is None:
        event = AuditEvent(Action.DEVICE_DEACTIVATED, False, "DEVICE_NOT_FOUND")
        return Transition(device_id, at, None, None, (event,), "DEVICE_NOT_FOUND")
    if not state.is_active:
        return Transition(device_id, at, state, None, (), "ALREADY_DEACTIVATED")
    after = state._replace(is_active=False, deactivated_at=at, version=state.version + 1)
    return Transition(device_id, at, state, after, (AuditEvent(Action.DEVICE_DEACTIVATED, True),), "DEACTIVATED")


def decide_unlock(device_id: str, state: DeviceState | None, at: datetime) -> Transition:
    """Lifts the lock and forgets the clock offset (a phone locked out by its clock starts again from the
    server's): the failures since the last right code stay counted, so the next wrong code locks the device
    again, for longer (an unlock is no reset button for someone guessing); the owner's next right code
    clears them."""
    if state is None:
        event = AuditEvent(Action.DEVICE_UNLOCKED, False, "DEVICE_NOT_FOUND")
        return Transition(device_id, at, None, None, (event,), "DEVICE_NOT_FOUND")
    after = state._replace(locked_until=None, drift=0, version=state.version + 1)
    data = {"failed_attempts": state.failed_attempts, "previous_drift": state.drift}
    return Transition(device_id, at, state, after, (AuditEvent(Action.DEVICE_UNLOCKED, True, None, data),), "UNLOCKED")


def decide_drift_reset(device_id: str, state: DeviceState | None, at: datetime) -> Transition:
    """Forgets the device's clock offset, and nothing else."""
    if state is None:
        event = AuditEvent(Action.DRIFT_RESET, False, "DEVICE_NOT_FOUND")
        return Transition(device_id, at, None, None, (event,), "DEVICE_NOT_FOUND")
    after = state._replace(drift=0, version=state.version + 1)
    event = AuditEvent(Action.DRIFT_RESET, True, None, {"previous_drift": state.drift})
    return Transition(device_id, at, state, after, (event,), "DRIFT_RESET")
