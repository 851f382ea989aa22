"""The verification rule, whole and in one place, as pure functions: no clock, no database, no I/O.

`decide` takes a device's state, its key, the code sent and the time, and returns the transition:
refused (unknown, deactivated, locked, key unavailable), accepted (the step becomes the replay floor,
the observed drift is remembered, the failure count resets), a replay (refused, not counted), or a
wrong code (counted; the failure that reaches the budget locks the device, for longer each time).

`check_code` is the code check within that: a window of ±`window` steps centred on the device's
remembered clock offset — and, when nothing matches there, around the server's own clock, so a phone
whose clock was corrected is re-centred instead of locked out — the RFC 6238 §5.2 rule that a step is
accepted at most once and only after the last accepted one, and the offset update, bounded so a stolen
device's clock cannot walk the window arbitrarily (the drift notebook simulates it).

The same function confirms a pending enrolment (`confirm=True`); `decide_resync` accepts two consecutive
codes in a wider search, and `lookup_steps` answers an investigator's "when was this code valid".

Storing a decision is `store`'s job, and it stores one only if the state it was made on is still
current, so a wrong code is counted before any later one is checked, in every process at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import totp
from .actions import Action
from .errors import ValidationError
from .lifecycle import decide_expire
from .transitions import HARD_LOCK, AuditEvent, DeviceState, Transition, isoformat, to_datetime
from .validation import otp_for_device

MAX_LOCK_SECONDS = 3600


@dataclass(frozen=True)
class Policy:
    window: int = 1  # steps either side of the device's clock
    max_drift: int = 10  # the most steps of clock offset remembered from ordinary verifications
    max_failures: int = 5  # consecutive wrong codes before the device locks
    lockout_seconds: int = 60  # the first lock; each further failure doubles it, up to an hour
    hard_lock_failures: int = 50  # wrong codes since the last right one (unlocks or not): locked until unlocked
    resync_window: int = 40  # steps either side of the server's clock searched for two consecutive codes


@dataclass(frozen=True)
class Outcome:
    valid: bool
    reason: str | None = None  # INVALID_CODE or REPLAYED when not valid
    step: int | None = None  # the accepted step
    offset: int | None = None  # accepted step minus the server's current step
    drift: int = 0  # the device's offset to remember
    matches: tuple[int, ...] = ()  # every step in the window the code matched, fresh or not
    recentred: bool = False  # found around the server's clock, not the remembered offset


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
    recentred = False
    if not matches and drift:  # drift recovery: the phone's clock may have been set right since
        around_zero = [s for s in range(current - window, current + window + 1) if abs(s - centre) > window]
        matches = totp.matching_steps(key, code, around_zero, digits, algorithm)
        recentred = bool(matches)
    fresh = [s for s in matches if s > last_step]
    if not fresh:
        return Outcome(False, "REPLAYED" if matches else "INVALID_CODE", drift=drift, matches=tuple(matches))
    step = min(fresh, key=lambda s: (abs(s - current) if recentred else abs(s - centre), s))
    offset = step - current
    # Tracking follows the phone, but never further out than OTP_MAX_DRIFT, or than a resync set it.
    bound = max(max_drift, abs(drift))
    return Outcome(
        True,
        step=step,
        offset=offset,
        drift=max(-bound, min(bound, offset)),
        matches=tuple(matches),
        recentred=recentred,
    )


def lock_seconds(failed_attempts: int, max_failures: int, base_seconds: int) -> int:
    """How long a device locks after its `failed_attempts`-th consecutive failure: 0 below the
    threshold, then base, 2×base, 4×base … for each further failure, capped at an hour."""
    if failed_attempts < max_failures:
        return 0
    return min(base_seconds * 2 ** min(failed_attempts - max_failures, 12), MAX_LOCK_SECONDS)


def failure(
    failures: int, locked_until: datetime | None, at: datetime, policy: Policy, locked_action: Action
) -> tuple[datetime | None, dict | None, tuple[AuditEvent, ...]]:
    """A counted failure's consequence — (locked until, answer details, audit rows of the lock) — for a
    device or a user's recovery codes alike: locks from the budget on, longer each time, and for good
    (until an operator's unlock) at the hard limit."""
    seconds = lock_seconds(failures, policy.max_failures, policy.lockout_seconds)
    if failures >= policy.hard_lock_failures:
        data = {"failed_attempts": failures, "hard": True}
        event = AuditEvent(locked_action, True, "HARD_LOCK", data)
        return HARD_LOCK, {"locked_until": HARD_LOCK, "hard": True}, (event,)
    if seconds:
        until = at + timedelta(seconds=seconds)
        data = {"failed_attempts": failures, "lock_seconds": seconds, "locked_until": isoformat(until)}
        return until, {"locked_until": until}, (AuditEvent(locked_action, True, "TOO_MANY_FAILURES", data),)
    return locked_until, None, ()


def _gate(
    device_id: str, state: DeviceState | None, key: bytes | None, at: datetime, action: Action, confirm: bool
) -> Transition | None:
    """The refusals every code check shares, before any code is looked at (None: go on and check it)."""

    def refuse(reason: str, **details) -> Transition:
        return Transition(device_id, at, state, None, (AuditEvent(action, False, reason),), reason, details)

    if state is None:
        return refuse("DEVICE_NOT_FOUND")
    if not state.is_active:  # an enrolment that ended unconfirmed says so, whoever recorded its end
        return refuse("ENROLLMENT_EXPIRED" if state.expired else "DEVICE_INACTIVE")
    if state.pending_until is not None and state.pending_until <= at:  # recorded now, if nobody has yet
        expiry = decide_expire(device_id, state, at)
        events = (*expiry.events, AuditEvent(action, False, "ENROLLMENT_EXPIRED"))
        return expiry._replace(events=events, verdict="ENROLLMENT_EXPIRED")
    if confirm and state.pending_until is None:
        return refuse("ALREADY_CONFIRMED")
    if not confirm and state.pending_until is not None:
        return refuse("DEVICE_PENDING")
    if state.locked(at):
        return refuse("DEVICE_LOCKED", locked_until=state.locked_until, hard=state.hard_locked)
    if key is None:
        return refuse("KEY_UNAVAILABLE")
    return None


def _counted_failure(state: DeviceState, at: datetime, policy: Policy, event: AuditEvent) -> Transition:
    """A wrong code (or pair): counted against the device's budget, which may lock it."""
    failures = state.failed_attempts + 1  # since the last right code: an unlock does not reset it
    event = event._replace(data={**(event.data or {}), "failed_attempts": failures})
    locked_until, details, lock_events = failure(failures, state.locked_until, at, policy, Action.DEVICE_LOCKED)
    after = state._replace(failed_attempts=failures, locked_until=locked_until, version=state.version + 1)
    return Transition(state.device_id, at, state, after, (event, *lock_events), "INVALID_CODE", details)


def decide(
    device_id: str,
    state: DeviceState | None,
    key: bytes | None,
    otp: str | int,
    now: float,
    policy: Policy,
    *,
    confirm: bool = False,
) -> Transition:
    """The transition a verification makes — or, with `confirm`, a pending enrolment's confirmation, whose
    accepted code activates the device. `key` is None when the device's key cannot be derived."""
    at = to_datetime(now)
    action = Action.DEVICE_CONFIRMED if confirm else Action.OTP_VERIFICATION
    if state is not None:
        try:
            code = otp_for_device(otp, state.digits)
        except ValidationError as exc:  # a 400, not a failed attempt: nothing is recorded
            return Transition(device_id, at, state, None, (), "MALFORMED_CODE", {"error": exc})
    refused = _gate(device_id, state, key, at, action, confirm)
    if refused is not None:
        return refused
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
            usage_count=state.usage_count + (0 if confirm else 1),
            last_used=at,
            pending_until=None,
            version=state.version + 1,
        )
        data = {"offset": outcome.offset, "drift": outcome.drift, "key_version": state.key_version}
        if outcome.recentred:
            data["recentred_from"] = state.drift
        event = AuditEvent(action, True, None, data)
        return Transition(device_id, at, state, after, (event,), "CONFIRMED" if confirm else "ACCEPTED")
    if outcome.reason == "REPLAYED":  # refused but not counted: the owner may have sent the same code twice
        return Transition(device_id, at, state, None, (AuditEvent(action, False, "REPLAYED"),), "REPLAYED")
    return _counted_failure(state, at, policy, AuditEvent(action, False, "INVALID_CODE"))


KeyOf = Callable[[DeviceState], bytes | None]  # a device's key (None: it cannot be derived), `Keyring.key_of`


def verification_rule(
    device_id: str, otp: str | int, now: float, policy: Policy, key_of: KeyOf, *, confirm: bool = False
) -> Callable[[DeviceState | None], Transition]:
    """`decide` as a function of the device's state alone: what the engine runs, and runs again on a newer
    state when another request changed the device first."""

    def rule(state: DeviceState | None) -> Transition:
        return decide(device_id, state, None if state is None else key_of(state), otp, now, policy, confirm=confirm)

    return rule


def resync_rule(
    device_id: str, otp1: str | int, otp2: str | int, now: float, policy: Policy, key_of: KeyOf
) -> Callable[[DeviceState | None], Transition]:
    """`decide_resync` as a function of the device's state alone."""

    def rule(state: DeviceState | None) -> Transition:
        return decide_resync(device_id, state, None if state is None else key_of(state), otp1, otp2, now, policy)

    return rule


def decide_resync(
    device_id: str,
    state: DeviceState | None,
    key: bytes | None,
    otp1: str | int,
    otp2: str | int,
    now: float,
    policy: Policy,
) -> Transition:
    """Two consecutive codes anywhere within ±`policy.resync_window` steps of the server's clock set the
    device's offset to theirs — further than OTP_MAX_DRIFT if need be, since two consecutive codes prove
    it (a random pair passes with probability ~(2N+1)/10^(2·digits); notebook 2). The replay floor only
    moves forward and neither code may be for a step already accepted (LinOTP's CVE-2019-12887); a pair
    that is not found counts as one failure."""
    at = to_datetime(now)
    if state is not None:
        try:
            first, second = otp_for_device(otp1, state.digits), otp_for_device(otp2, state.digits)
        except ValidationError as exc:
            return Transition(device_id, at, state, None, (), "MALFORMED_CODE", {"error": exc})
    refused = _gate(device_id, state, key, at, Action.DEVICE_RESYNCED, confirm=False)
    if refused is not None:
        return refused
    current, n = totp.time_step(now, state.interval), policy.resync_window
    digits, algorithm = state.digits, state.algorithm
    firsts = totp.matching_steps(key, first, range(current - n, current + n), digits, algorithm)
    seconds = set(totp.matching_steps(key, second, range(current - n + 1, current + n + 1), digits, algorithm))
    pairs = [s + 1 for s in firsts if s + 1 in seconds]  # the later code's step
    fresh = [s for s in pairs if s - 1 > state.last_step]
    if not fresh:
        if pairs:
            event = AuditEvent(Action.DEVICE_RESYNCED, False, "REPLAYED")
            return Transition(device_id, at, state, None, (event,), "REPLAYED")
        return _counted_failure(state, at, policy, AuditEvent(Action.DEVICE_RESYNCED, False, "INVALID_CODE"))
    step = min(fresh, key=lambda s: (abs(s - current), s))
    drift = step - current
    after = state._replace(last_step=step, drift=drift, failed_attempts=0, last_used=at, version=state.version + 1)
    data = {"offset": drift, "previous_drift": state.drift, "key_version": state.key_version}
    return Transition(device_id, at, state, after, (AuditEvent(Action.DEVICE_RESYNCED, True, None, data),), "RESYNCED")


def lookup_steps(
    key: bytes, state: DeviceState, otp: str | int, start: float, end: float, now: float, policy: Policy
) -> tuple[list[int], int]:
    """The time steps in [start, end] for which `otp` was this device's code, and the last step searched.

    Steps the device could still accept — after its replay floor and within any window of the current
    step, resync's included — are not searched: the lookup must not become a way to test codes without
    spending the failure budget. A code the device has accepted is below the floor, so it is found at once.
    """
    code = otp_for_device(otp, state.digits)
    current = totp.time_step(now, state.interval)
    live_from = current - max(policy.resync_window, policy.window + abs(state.drift))
    last = min(totp.time_step(end, state.interval), max(state.last_step, live_from - 1))
    first = totp.time_step(start, state.interval)
    return totp.matching_steps(key, code, range(first, last + 1), state.digits, state.algorithm), last
