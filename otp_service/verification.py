"""The verification decision as a pure function: which step a code matches, given a device's history.

This is the rule the service applies (and the drift notebook simulates): a window of
±`window` steps centred on the device's remembered clock offset, the RFC 6238 §5.2 rule
that a step is accepted at most once and only after the last accepted one, and the
offset update, bounded so a stolen device's clock cannot walk the window arbitrarily.
Storing the outcome atomically is the service's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import totp


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
