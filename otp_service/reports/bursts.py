"""Brute-force episodes for the audit report: runs of failed verifications close together in time, found by
window functions in the database (the same SQL on SQLite and PostgreSQL), then merged in Python where the
same failures were seen per device, per user and per client address.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from peewee import SQL, Case, fn

from ..core.actions import Action
from ..db.models import AuditLog
from . import sql
from .sql import VERIFY

BURST_GAP_SECONDS = 120


BURST_THRESHOLD = 5


BURST_KEYS = {"device_id": "device", "user_id": "user", "ip_address": "client address"}


BURST_REASONS = ("INVALID_CODE", "DEVICE_LOCKED")  # wrong codes, and codes sent while locked


# An episode's columns, as the page and its CSV show them: what an auditor asks of an attack — how long, how many
# wrong codes and how many more sent while locked, how many locks it caused, whether a right code came after it
# (the guess may have succeeded, or the owner signed in), and where it came from: address, API client, program.
BURST_COLUMNS = [
    "first failure (UTC)",
    "last failure (UTC)",
    "failures",
    "wrong codes",
    "attempts while locked",
    "locks",
    "right code followed",
    "devices",
    "users",
    "client addresses",
    "API clients",
    "user agents",
    "seen per",
]


def _burst_rows(column: str, start: datetime, end: datetime, gap_seconds: int, threshold: int):
    """The failed verifications of every burst keyed by `column` (device, user or client address), grouped per
    burst, address, device, user, reason, API client and user agent. A burst (a "session") is a run of failures
    with that key, each no more than `gap_seconds` after the one before: LAG marks where a new run begins, a
    running SUM numbers the runs, and a COUNT over each run keeps the runs of at least `threshold` failures.
    Three levels of subquery because SQL cannot nest one window function in another; the same SQL runs on
    SQLite (3.25+) and PostgreSQL."""
    key = getattr(AuditLog, column)
    at = sql.epoch(AuditLog.timestamp)
    order = [AuditLog.timestamp, AuditLog.id]
    gap = at - fn.LAG(at).over(partition_by=[key], order_by=order)
    marked = (
        AuditLog.select(
            key.alias("key"),
            AuditLog.id.alias("row_id"),
            AuditLog.timestamp.alias("at"),
            AuditLog.device_id.alias("device"),
            AuditLog.user_id.alias("user"),
            AuditLog.ip_address.alias("address"),
            AuditLog.reason.alias("reason"),
            AuditLog.actor.alias("actor"),
            AuditLog.user_agent.alias("agent"),
            Case(None, [(gap <= gap_seconds, 0)], 1).alias("begins"),
        )
        .where(
            sql.in_period(start, end)
            & (AuditLog.action == VERIFY)
            & ~AuditLog.success
            & AuditLog.reason.in_(BURST_REASONS)
            & key.is_null(False)
        )
        .alias("marked")
    )
    runs = marked.select_from(
        marked.c.key,
        marked.c.at,
        marked.c.device,
        marked.c.user,
        marked.c.address,
        marked.c.reason,
        marked.c.actor,
        marked.c.agent,
        fn.SUM(marked.c.begins).over(partition_by=[marked.c.key], order_by=[marked.c.at, marked.c.row_id]).alias("run"),
    ).alias("runs")
    sized = runs.select_from(
        runs.c.key,
        runs.c.run,
        runs.c.at,
        runs.c.device,
        runs.c.user,
        runs.c.address,
        runs.c.reason,
        runs.c.actor,
        runs.c.agent,
        fn.COUNT(SQL("*")).over(partition_by=[runs.c.key, runs.c.run]).alias("size"),
    ).alias("sized")
    each = [getattr(sized.c, name) for name in ("key", "run", "device", "user", "address", "reason", "actor", "agent")]
    return (
        sized.select_from(*each, fn.COUNT(SQL("*")), fn.MIN(sized.c.at), fn.MAX(sized.c.at))
        .where(sized.c.size >= threshold)
        .group_by(*each)  # one row per distinct value in the episode: what the columns are counted from
        .tuples()
    )


def brute_force_episodes(
    start: datetime, end: datetime, gap_seconds: int = BURST_GAP_SECONDS, threshold: int = BURST_THRESHOLD
) -> pd.DataFrame:
    """Bursts of guessing: at least `threshold` failed verifications (wrong codes, or codes sent while the
    device was locked) of one device, of one user or from one client address, each no more than
    `gap_seconds` after the previous one. A window that slides with the failures, not buckets on the clock:
    an attack is one episode however it falls across the hour. The same failures seen per device, per user
    and per address (one attacker, one device) are one row, which says which of the three saw them.

    Each episode: its first and last failure; how many, split into wrong codes and codes sent while the device
    was locked; how many times a device involved was locked during it (or within `gap_seconds` after); when a
    device involved next accepted a right code (from its first failure to `gap_seconds` after its last); and the
    devices, users, client addresses, API clients and user agents involved."""
    names = ("devices", "users", "addresses", "actors", "agents")
    groups: dict[tuple[str, str, int], dict] = {}
    for column, seen in BURST_KEYS.items():
        for key, run, device, user, address, reason, actor, agent, n, first, last in _burst_rows(
            column, start, end, gap_seconds, threshold
        ):
            g = groups.setdefault(
                (seen, key, run),
                {"start": None, "end": None, "failures": 0, "reasons": {}, **{name: set() for name in names}},
            )
            first, last = _utc(first), _utc(last)
            g["start"] = first if g["start"] is None else min(g["start"], first)
            g["end"] = last if g["end"] is None else max(g["end"], last)
            g["failures"] += n
            g["reasons"][reason] = g["reasons"].get(reason, 0) + n
            for name, value in zip(names, (device, user, address, actor, agent), strict=True):
                if value is not None:
                    g[name].add(value)
    involved = set().union(*(g["devices"] for g in groups.values()))
    locks = _device_rows(involved, start, end + timedelta(seconds=gap_seconds), Action.DEVICE_LOCKED)
    accepted = _device_rows(involved, start, end + timedelta(seconds=gap_seconds), VERIFY, success=True)
    merged: dict[tuple, dict] = {}
    for (seen, _key, _run), g in sorted(groups.items(), key=lambda item: (item[1]["start"], item[0])):
        episode = merged.setdefault((g["start"], g["end"], g["failures"]), {**g, "seen": []})
        episode["seen"].append(seen)
        for name in names:
            episode[name] = episode[name] | g[name]
    rows = []
    for (first, last, failures), e in sorted(merged.items()):
        until = last + timedelta(seconds=gap_seconds)
        locked = sum(1 for device, at in locks if device in e["devices"] and first <= at <= until)
        right = min((at for device, at in accepted if device in e["devices"] and first <= at <= until), default=None)
        rows.append(
            (
                first,
                last,
                failures,
                e["reasons"].get("INVALID_CODE", 0),
                e["reasons"].get("DEVICE_LOCKED", 0),
                locked,
                "no" if right is None else f"yes, {right.isoformat(timespec='seconds')}Z",
                *(", ".join(sorted(e[name])) for name in names),
                ", ".join(seen for seen in BURST_KEYS.values() if seen in e["seen"]),
            )
        )
    return sql.stringify_times(pd.DataFrame(rows, columns=BURST_COLUMNS), BURST_COLUMNS[:2])


def _device_rows(
    devices: set[str], start: datetime, end: datetime, action: str, success: bool | None = None
) -> list[tuple]:
    """(device, time) of the tenant's `action` rows of `devices` in [start, end) (with that outcome, when
    given): only the episodes' devices, never every sign-in of the period."""
    if not devices:
        return []
    where = sql.in_period(start, end) & (AuditLog.action == action) & AuditLog.device_id.in_(sorted(devices))
    if success is not None:
        where &= AuditLog.success == success
    return [
        (device, _utc(at))
        for device, at in AuditLog.select(AuditLog.device_id, AuditLog.timestamp).where(where).tuples()
    ]


def _utc(value) -> datetime:
    """A timestamp as the naive UTC datetime stored (SQLite hands back text from a subquery, PostgreSQL a datetime)."""
    return pd.Timestamp(value).to_pydatetime()
