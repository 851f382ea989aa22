"""The other state changes of a device, as pure functions like `verification.decide`: registration
(or taking over a deactivated id), deactivation and operator unlock. Each returns the transition and its
audit rows; `store` applies it only if the device is still in the state it was decided on."""

from __future__ import annotations

from datetime import datetime

from .models import Action
from .transitions import AuditEvent, DeviceState, Transition


def decide_register(device_id: str, state: DeviceState | None, fresh: DeviceState, at: datetime) -> Transition:
    """A new device, or a new registration of a deactivated id (new salt, so a new key); refused while
    an active device holds the id. `fresh` is the new row, whatever its version."""
    if state is not None and state.is_active:
        event = AuditEvent(Action.DEVICE_REGISTERED, False, "DEVICE_EXISTS")
        return Transition(device_id, at, state, None, (event,), "DEVICE_EXISTS")
    after = fresh._replace(version=0 if state is None else state.version + 1)
    data = {"digits": fresh.digits, "interval": fresh.interval, "algorithm": fresh.algorithm}
    event = AuditEvent(Action.DEVICE_REGISTERED, True, None, data | {"key_version": fresh.key_version})
    return Transition(device_id, at, state, after, (event,), "REGISTERED")


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
    """Lifts the lock, and only the lock: the failures since the last right code stay counted, so the next
    wrong code locks the device again, for longer (an unlock is no reset button for someone guessing); the
    owner's next right code clears them."""
    if state is None:
        event = AuditEvent(Action.DEVICE_UNLOCKED, False, "DEVICE_NOT_FOUND")
        return Transition(device_id, at, None, None, (event,), "DEVICE_NOT_FOUND")
    after = state._replace(locked_until=None, version=state.version + 1)
    data = {"failed_attempts": state.failed_attempts}
    return Transition(device_id, at, state, after, (AuditEvent(Action.DEVICE_UNLOCKED, True, None, data),), "UNLOCKED")
