"""The rate limiter's circuit breaker as a state machine, on a fake clock: no Redis, no sleeping."""

from __future__ import annotations

import pytest

from otp_service.http.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from tests.conftest import FakeClock


@pytest.fixture
def clock():
    return FakeClock(1000.0)


def test_it_opens_only_after_that_many_failures_in_a_row(clock):
    breaker = CircuitBreaker(failures=3, cool_down=5, clock=clock)
    assert [breaker.failed(), breaker.failed()] == [False, False]
    assert breaker.succeeded() is False  # it was not open: nothing closed
    assert [breaker.failed(), breaker.failed()] == [False, False]  # a success in between starts the count again
    assert breaker.state == CLOSED and breaker.allow() and breaker.sending
    assert breaker.failed() is True  # the third in a row opens it, and says so once
    assert breaker.state == OPEN and not breaker.sending


def test_open_it_sends_nothing_until_the_cool_down_then_one_probe(clock):
    breaker = CircuitBreaker(failures=1, cool_down=5, clock=clock)
    breaker.failed()
    assert [breaker.allow() for _ in range(3)] == [False, False, False]
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow() is True  # the probe
    assert breaker.state == HALF_OPEN and breaker.sending
    assert [breaker.allow() for _ in range(3)] == [False, False, False]  # while the probe is out
    assert breaker.succeeded() is True  # its answer closes the breaker, and says so
    assert breaker.state == CLOSED and all(breaker.allow() for _ in range(3))


def test_a_failed_probe_opens_it_again_quietly_for_another_cool_down(clock):
    breaker = CircuitBreaker(failures=2, cool_down=5, clock=clock)
    breaker.failed()
    breaker.failed()
    clock.advance(5)
    assert breaker.allow()
    clock.advance(1)
    assert breaker.failed() is False  # open again, but the outage was already reported
    assert breaker.state == OPEN
    clock.advance(4.9)
    assert not breaker.allow()  # the cool-down runs from the failed probe
    clock.advance(0.1)
    assert breaker.allow()


def test_one_failure_after_closing_does_not_open_it_again(clock):
    breaker = CircuitBreaker(failures=3, cool_down=5, clock=clock)
    for _ in range(3):
        breaker.failed()
    clock.advance(5)
    breaker.allow()
    breaker.succeeded()
    assert breaker.failed() is False and breaker.state == CLOSED


def test_a_lost_probe_does_not_keep_it_from_closing(clock):
    """The probe's request may be cancelled and its answer never recorded: after a whole cool-down, another."""
    breaker = CircuitBreaker(failures=1, cool_down=5, clock=clock)
    breaker.failed()
    clock.advance(5)
    assert breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.succeeded() and breaker.state == CLOSED


@pytest.mark.parametrize("failures, cool_down", [(0, 5), (3, 0)])
def test_a_breaker_that_could_never_close_or_open_is_refused(failures, cool_down):
    with pytest.raises(ValueError):
        CircuitBreaker(failures, cool_down)
