"""The verification rule, whole and in one place, as pure functions: no clock, no database, no I/O.

`decide` takes a device's state, its key, the code sent and the time, and returns the transition:
refused (unknown, deactivated, locked, key unavailable), accepted (the step becomes the replay floor,
the observed drift is remembered, the failure count resets), a replay (refused, not counted), or a
wrong code (counted; the failure that reaches the budget locks the device, for longer each time).

`check_code` is the code check within that: a window of ±`window` steps centred on the device's
remembered clock offset, the RFC 6238 §5.2 rule that a step is accepted at most once and only after
the last accepted one, and the offset update, bounded so a stolen device's clock cannot walk the window
arbitrarily (the drift notebook simulates it).

Storing a decision is `store`'s job, and it stores one only if the state it was made on is still
current, so a wrong code is counted before any later one is checked, in every process at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from . import totp
from .errors import ValidationError
from .models import Action
from .transitions import AuditEvent, DeviceState, Transition, isoformat, to_datetime
from .validation import otp_for_device

MAX_LOCK_SECONDS = 3600
HARD_LOCK = datetime(9999, 12, 31)  # locked_until of a device only an operator's unlock reopens


@dataclass(frozen=True)
class Policy:
    window: int = 1  # steps either side of the device's clock
    max_drift: int = 10  # the most steps of clock offset remembered
    max_failures: int = 5  # consecutive wrong codes before the device locks
    lockout_seconds: int = 60  # the first lock; each further failure doubles it, up to an hour
    hard_lock_failures: int = 50  # wrong codes since the last right one (unlocks or not): locked until unlocked


@dataclass(frozen=True)
class Outcome:
    valid: bool
    reason: str | None = None  # INVALID_CODE or REPLAYED when not valid
    step: int | None = None  # the accepted step
    offset: int | None = None  # accepted step minus the server's current step
    drift: int = 0  # the device's offset to remember
    matches: tuple[int, ...] = ()  # every step in the window the code matched, fresh or not


def check_code(
    key: bytes,
    code: str,
    now: float,
    *,
    digits: int,
    interval: int,
    algorithm: str,
    last_step: int,
    drift: int,
    window: int,
    max_drift: int,
) -> Outcome:
    current = totp.time_step(now, interval)
    centre = current + drift
    matches = totp.matching_steps(key, code, range(centre - window, centre + window + 1), digits, algorithm)
    fresh = [s for s in matches if s > last_step]
    if not fresh:
        return Outcome(False, "REPLAYED" if matches else "INVALID_CODE", drift=drift, matches=tuple(matches))
    step = min(fresh, key=lambda s: (abs(s - centre), s))
    offset = step - current
    return Outcome(
        True, step=step, offset=offset, drift=max(-max_drift, min(max_drift, offset)), matches=tuple(matches)
    )


def lock_seconds(failed_attempts: int, max_failures: int, base_seconds: int) -> int:
    """How long a device locks after its `failed_attempts`-th consecutive failure: 0 below the
    threshold, then base, 2×base, 4×base … for each further failure, capped at an hour."""
    if failed_attempts < max_failures:
        return 0
    return min(base_seconds * 2 ** min(failed_attempts - max_failures, 12), MAX_LOCK_SECONDS)


def decide(
    device_id: str, state: DeviceState | None, key: bytes | None, otp: str | int, now: float, policy: Policy
) -> Transition:
    """The transition a verification makes. `key` is None when the device's key cannot be derived."""
    at = to_datetime(now)

    def refuse(reason: str, **details) -> Transition:
        event = AuditEvent(Action.OTP_VERIFICATION, False, reason)
        return Transition(device_id, at, state, None, (event,), reason, details)

    if state is None:
        return refuse("DEVICE_NOT_FOUND")
    try:
        code = otp_for_device(otp, state.digits)
    except ValidationError as exc:  # a 400, not a failed attempt: nothing is recorded
        return Transition(device_id, at, state, None, (), "MALFORMED_CODE", {"error": exc})
    if not state.is_active:
        return refuse("DEVICE_INACTIVE")
    if state.locked_until is not None and state.locked_until > at:
        return refuse("DEVICE_LOCKED", locked_until=state.locked_until, hard=state.locked_until == HARD_LOCK)
    if key is None:
        return refuse("KEY_UNAVAILABLE")
    outcome = check_code(
        key,
        code,
        now,
        digits=state.digits,
        interval=state.interval,
        algorithm=state.algorithm,
        last_step=state.last_step,
        drift=state.drift,
        window=policy.window,
        max_drift=policy.max_drift,
    )
    if outcome.valid:
        after = state._replace(
            last_step=outcome.step,
            drift=outcome.drift,
            failed_attempts=0,
            locked_until=None,
            usage_count=state.usage_count + 1,
            last_used=at,
            version=state.version + 1,
        )
        data = {"offset": outcome.offset, "drift": outcome.drift, "key_version": state.key_version}
        return Transition(
            device_id, at, state, after, (AuditEvent(Action.OTP_VERIFICATION, True, None, data),), "ACCEPTED"
        )
    if outcome.reason == "REPLAYED":  # refused but not counted: the owner may have sent the same code twice
        return refuse("REPLAYED")

    failures = state.failed_attempts + 1  # since the last right code: an unlock does not reset it
    events = [AuditEvent(Action.OTP_VERIFICATION, False, "INVALID_CODE", {"failed_attempts": failures})]
    locked_until, details = state.locked_until, None
    seconds = lock_seconds(failures, policy.max_failures, policy.lockout_seconds)
    if failures >= policy.hard_lock_failures:
        locked_until, details = HARD_LOCK, {"locked_until": HARD_LOCK, "hard": True}
        data = {"failed_attempts": failures, "hard": True}
        events.append(AuditEvent(Action.DEVICE_LOCKED, True, "HARD_LOCK", data))
    elif seconds:
        locked_until = at + timedelta(seconds=seconds)
        details = {"locked_until": locked_until}
        data = {"failed_attempts": failures, "lock_seconds": seconds, "locked_until": isoformat(locked_until)}
        events.append(AuditEvent(Action.DEVICE_LOCKED, True, "TOO_MANY_FAILURES", data))
    after = state._replace(failed_attempts=failures, locked_until=locked_until, version=state.version + 1)
    return Transition(device_id, at, state, after, tuple(events), "INVALID_CODE", details)
