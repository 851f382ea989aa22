"""`webhooks.schedule.outcome`: what follows an attempt — pure, so every rule is checked here without a database."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from otp_service.webhooks.schedule import MAX_RETRY_AFTER_SECONDS, Decision, outcome, retry_after_seconds

NOW = 1_764_000_000.0
SCHEDULE = (5.0, 30.0, 120.0)


class Fixed:
    """An rng that always draws `value` (0: the shortest jitter, 0.5: none, 1: the longest)."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def decide(status=None, error=None, attempts=1, retry_after=None, rng=None):
    return outcome(status, error, attempts, SCHEDULE, retry_after, NOW, rng or Fixed(0.5))


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status):
    assert decide(status) == Decision("delivered")
    assert decide(status, attempts=len(SCHEDULE) + 1) == Decision("delivered")  # even on the last attempt


def test_410_is_gone_on_any_attempt():
    assert decide(410) == Decision("gone")
    assert decide(410, attempts=99) == Decision("gone")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, "HTTP 500"),
        (502, None),
        (503, None),
        (429, None),
        (400, None),
        (404, None),
        (301, "redirect not followed"),  # redirects are not followed: a failed attempt
        (302, None),
        (None, "no answer: Timeout during request"),
        (None, "no answer: ConnectionRefusedError"),
        (None, "refused: the receiver's address 127.0.0.1 is not public"),
    ],
)
def test_everything_else_is_retried_on_the_schedule(status, error):
    for attempts, delay in enumerate(SCHEDULE, start=1):
        assert decide(status, error, attempts) == Decision("retry", NOW + delay)


def test_exhausted_attempts_fail():
    assert decide(500, attempts=len(SCHEDULE)).kind == "retry"
    assert decide(500, attempts=len(SCHEDULE) + 1) == Decision("failed")
    assert decide(None, "timeout", attempts=len(SCHEDULE) + 1) == Decision("failed")


def test_jitter_is_within_twenty_percent_and_delays_grow():
    rng = random.Random(7)
    for attempts, delay in enumerate(SCHEDULE, start=1):
        seen = [decide(500, attempts=attempts, rng=rng).at - NOW for _ in range(500)]
        assert min(seen) >= delay * 0.8 and max(seen) <= delay * 1.2
        assert max(seen) - min(seen) > delay * 0.3  # it does spread
    assert decide(500, attempts=1, rng=Fixed(0)).at == pytest.approx(NOW + 4.0)
    assert decide(500, attempts=1, rng=Fixed(1)).at == pytest.approx(NOW + 6.0)
    # the longest jitter of one step stays below the shortest of the next with the default schedule's ratios
    assert decide(500, attempts=1, rng=Fixed(1)).at < decide(500, attempts=2, rng=Fixed(0)).at


def test_a_longer_retry_after_wins_a_shorter_one_does_not():
    assert decide(429, retry_after="120") == Decision("retry", NOW + 120)
    assert decide(429, retry_after="2") == Decision("retry", NOW + 5)  # the schedule's 5 s is longer
    assert decide(503, retry_after="0") == Decision("retry", NOW + 5)
    date = formatdate(NOW + 600, usegmt=True)
    assert decide(503, retry_after=date).at == pytest.approx(NOW + 600)
    past = formatdate(NOW - 600, usegmt=True)
    assert decide(503, retry_after=past) == Decision("retry", NOW + 5)


def test_retry_after_is_capped_at_a_day():
    assert decide(429, retry_after=str(10 * 86400)) == Decision("retry", NOW + MAX_RETRY_AFTER_SECONDS)
    assert decide(429, retry_after=formatdate(NOW + 30 * 86400, usegmt=True)).at == NOW + MAX_RETRY_AFTER_SECONDS


def test_retry_after_does_not_outlive_the_attempts():
    assert decide(429, attempts=len(SCHEDULE) + 1, retry_after="60") == Decision("failed")


@pytest.mark.parametrize(
    "header", [None, "", "soon", "-5", "1.5", "12abc", "Mon, 99 Foo 2025 00:00:00 GMT", "2025-11-24"]
)
def test_unreadable_retry_after_is_ignored(header):
    assert retry_after_seconds(header, NOW) is None
    assert decide(429, retry_after=header) == Decision("retry", NOW + 5)


def test_retry_after_forms():
    assert retry_after_seconds(" 30 ", NOW) == 30
    assert retry_after_seconds(formatdate(NOW + 90, usegmt=True), NOW) == pytest.approx(90)
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", NOW) == 0  # in the past: now
