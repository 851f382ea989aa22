"""A report period, converted once. People name a period by whole UTC days, the first and the last both
included ("1 to 28 February"); the database is asked, and stores, the half-open interval of instants
[first day 00:00, the day after the last 00:00), in naive UTC like the audit timestamps, so that a row
written at 23:59:59.999 on the last day counts and one written at midnight after it does not.

Everything that turns days into instants or instants back into days goes through here: the report
runner and its notebooks, the stored reports' listing, the `audit verify --start/--end` command.
Pure: no database, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta


def start_of(day: date) -> datetime:
    """The first instant of `day` (its midnight, naive UTC): where a period whose first day is `day` begins."""
    return datetime.combine(day, time.min)


def end_of(day: date) -> datetime:
    """Where a period whose last day is `day` ends: the next day's midnight, the first instant it excludes.
    OverflowError for the last day a `date` can hold."""
    return start_of(day + timedelta(days=1))


def last_day(end: datetime) -> date:
    """The last day of a period that ends (exclusive) at the midnight `end`: the inverse of `end_of`."""
    return (end - timedelta(days=1)).date()


@dataclass(frozen=True)
class Period:
    """Whole UTC days from `first` to `last`, both included, and the instants the queries take: `start` (the
    first included) and `end` (the first after it, excluded). ValueError if `last` is before `first`;
    OverflowError if `last` is the last day a `date` can hold (there is no midnight after it)."""

    first: date
    last: date
    start: datetime = field(init=False, repr=False, compare=False)
    end: datetime = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"the end date {self.last} is before the start date {self.first}")
        object.__setattr__(self, "start", start_of(self.first))
        object.__setattr__(self, "end", end_of(self.last))

    @classmethod
    def between(cls, start: datetime, end: datetime) -> Period:
        """The period stored as the half-open interval [`start`, `end`) of midnights."""
        return cls(start.date(), last_day(end))

    @property
    def days(self) -> int:
        """How many days it holds, the first and the last included."""
        return (self.last - self.first).days + 1

    def in_words(self) -> str:
        """As a reader says it: "1 February 2026 to 28 February 2026, both days included (28 days)"."""
        length = "1 day" if self.days == 1 else f"{self.days} days"
        return f"{self.first:%-d %B %Y} to {self.last:%-d %B %Y}, both days included ({length})"
