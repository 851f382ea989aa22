"""What to do after an attempt to deliver a webhook: pure, so every rule is a unit test away (no I/O, no clock,
no randomness of its own — the caller passes `now` and `rng`).

A 2xx is delivered. A 410 Gone says the receiver is gone for good: the endpoint is disabled and its queue
cancelled. Anything else — 429, 5xx, any other status, a timeout, a connection error, an address refused — is
retried on the schedule (WEBHOOK_RETRY_SCHEDULE: the delay before the n-th retry, ±20 % jitter so that a
receiver back from an outage is not hit by every queued delivery in the same second), until the attempts are
exhausted. Redirects are not followed (a 3xx could point the worker at an address the endpoint's checks never
saw): a 3xx is a failed attempt like any other non-2xx. A Retry-After (seconds or an HTTP-date) that asks for
longer than the schedule wins, up to a day: a receiver may slow us down, but not park a delivery forever.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol

_SECONDS = re.compile(r"[0-9]+")  # delta-seconds, in ASCII digits (`str.isdigit` also takes "²", which `int` refuses)

JITTER = 0.2
MAX_RETRY_AFTER_SECONDS = 86400.0

Kind = Literal["delivered", "gone", "retry", "failed"]


class Rng(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True)
class Decision:
    """`kind`, and for a retry the time (unix seconds) it is due at."""

    kind: Kind
    at: float | None = None


def outcome(
    status: int | None,
    error: str | None,
    attempts: int,
    schedule: Sequence[float],
    retry_after: str | None,
    now: float,
    rng: Rng | None = None,
) -> Decision:
    """The decision after attempt number `attempts` (1 for the first) answered `status` (None: no answer, see
    `error`). `len(schedule)` retries follow the first attempt; after the last, a failure is final."""
    if status is not None and 200 <= status < 300:
        return Decision("delivered")
    if status == 410:
        return Decision("gone")
    if attempts > len(schedule):
        return Decision("failed")
    delay = jittered(schedule[max(attempts, 1) - 1], rng or random)
    asked = retry_after_seconds(retry_after, now)
    if asked is not None and asked > delay:
        delay = min(asked, MAX_RETRY_AFTER_SECONDS)
    return Decision("retry", now + delay)


def jittered(delay: float, rng: Rng) -> float:
    """`delay` ±20 %."""
    return delay * (1 + JITTER * (2 * rng.random() - 1))


def retry_after_seconds(header: str | None, now: float) -> float | None:
    """A Retry-After header's delay in seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None when
    absent or unreadable (an unreadable one is ignored, not obeyed)."""
    if not header:
        return None
    text = header.strip()
    if _SECONDS.fullmatch(text):  # thousands of digits are a very long time, not a number to convert
        return float(text) if len(text) <= 15 else float("inf")
    if len(text) > 64:  # an HTTP-date is 29 characters
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; one without a zone is not one of them
        return None
    return max(0.0, when.timestamp() - now)
