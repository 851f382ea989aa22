"""The report period (core.period): whole days as a person gives them, and the half-open interval of instants
the database is asked for, converted one way and back."""

from datetime import date, datetime

import pytest

from otp_service.core.period import Period, end_of, last_day, start_of


def test_a_period_runs_from_its_first_midnight_to_the_midnight_after_its_last_day():
    february = Period(date(2026, 2, 1), date(2026, 2, 28))
    assert (february.start, february.end) == (datetime(2026, 2, 1), datetime(2026, 3, 1))
    assert february.days == 28 and Period.between(february.start, february.end) == february
    assert february.in_words() == "1 February 2026 to 28 February 2026, both days included (28 days)"
    assert Period(date(2026, 2, 3), date(2026, 2, 3)).in_words().endswith("both days included (1 day)")


def test_the_day_conversions_are_inverse():
    day = date(2024, 2, 28)  # a leap year: the day after is the 29th
    assert (start_of(day), end_of(day)) == (datetime(2024, 2, 28), datetime(2024, 2, 29))
    assert last_day(end_of(day)) == day


def test_an_end_before_the_start_or_past_the_calendar_is_refused():
    with pytest.raises(ValueError, match="the end date 2026-02-01 is before the start date 2026-02-02"):
        Period(date(2026, 2, 2), date(2026, 2, 1))
    with pytest.raises(OverflowError):  # there is no midnight after the last day a date can hold
        Period(date(2026, 2, 2), date.max)
