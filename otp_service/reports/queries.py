"""The report queries: every figure is aggregated by the database (GROUP BY) and only the
summary comes back as a small DataFrame, so a report over millions of audit rows stays fast
and small. Works on SQLite and PostgreSQL alike; the few dialect differences live in `_day`,
`_epoch` and `_json_field`.

Periods are given as a start and an end instant, in naive UTC like the stored timestamps: a row counts
if start <= its time < end (a report of 1 to 28 February runs from 1 February 00:00 to 1 March 00:00).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from peewee import JOIN, SQL, Case, Database, NodeList, fn

from ..core.actions import Action
from ..db.database import is_postgres, open_database
from ..db.models import AuditLog, Device, db

VERIFY = Action.OTP_VERIFICATION


def _day(column):
    """The UTC calendar day of a timestamp column, as 'YYYY-MM-DD' text."""
    if is_postgres(db.obj):
        return fn.to_char(column, "YYYY-MM-DD")
    return fn.substr(column, 1, 10)


def _epoch(column):
    """Whole seconds since 1970 of a timestamp column, as an integer (truncated on both: a cast alone would
    round on PostgreSQL, putting a time late in a second into the next one)."""
    if is_postgres(db.obj):
        return fn.floor(fn.date_part("epoch", column)).cast("BIGINT")
    return fn.strftime("%s", column).cast("INTEGER")


def _json_field(column, key: str, sql_type: str):
    """A top-level field of a JSON text column (an audit row's additional_data) as `sql_type` ("BIGINT" or
    "BOOLEAN"); NULL where the row has no such field."""
    if is_postgres(db.obj):
        return NodeList((column.cast("json"), SQL("->>"), key), parens=True).cast(sql_type)
    return fn.json_extract(column, f"$.{key}").cast(sql_type)


def _frame(query, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(list(query.tuples()), columns=columns)


def _in_period(start: datetime, end: datetime):
    return (AuditLog.timestamp >= start) & (AuditLog.timestamp < end)


def audit_totals(start: datetime, end: datetime) -> dict[str, int | float | None]:
    """The audit report's summary. A verification refused as `REPLAYED` is a double submit (a right code sent
    again, usually a second click): it is neither a success nor a guess, so the success rate leaves it out —
    accepted / (verifications - double submits); None when there was nothing to divide by."""
    counts = {
        (action, bool(success), reason): n
        for action, success, reason, n in AuditLog.select(
            AuditLog.action, AuditLog.success, AuditLog.reason, fn.COUNT(AuditLog.id)
        )
        .where(_in_period(start, end))
        .group_by(AuditLog.action, AuditLog.success, AuditLog.reason)
        .tuples()
    }

    def count(action: str, success: bool | None = None, reason: str | None = None) -> int:
        return sum(
            n
            for (a, s, r), n in counts.items()
            if a == action and (success is None or s == success) and (reason is None or r == reason)
        )

    verifications, succeeded = count(VERIFY), count(VERIFY, True)
    wrong, replayed = count(VERIFY, False, "INVALID_CODE"), count(VERIFY, False, "REPLAYED")
    attempts = verifications - replayed
    devices_locked = (
        AuditLog.select(fn.COUNT(fn.DISTINCT(AuditLog.device_id)))
        .where(_in_period(start, end) & (AuditLog.action == Action.DEVICE_LOCKED))
        .scalar()
    )
    return {
        "registrations": count(Action.DEVICE_REGISTERED, True),
        "registrations_refused": count(Action.DEVICE_REGISTERED, False),
        "verifications": verifications,
        "verifications_succeeded": succeeded,
        "verifications_wrong_code": wrong,
        "verifications_double_submit": replayed,
        "verifications_refused_other": verifications - succeeded - wrong - replayed,
        "success_rate_percent": round(100.0 * succeeded / attempts, 2) if attempts else None,
        "locks": count(Action.DEVICE_LOCKED),
        "devices_locked": devices_locked,
        "unlocks": count(Action.DEVICE_UNLOCKED, True),
        "deactivations": count(Action.DEVICE_DEACTIVATED, True),
        "authentication_failures": count(Action.AUTH_FAILED),
        "rate_limit_hits": count(Action.RATE_LIMITED),
    }


def failures_by_reason(start: datetime, end: datetime) -> pd.DataFrame:
    query = (
        AuditLog.select(AuditLog.reason, fn.COUNT(AuditLog.id).alias("n"))
        .where(_in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success)
        .group_by(AuditLog.reason)
        .order_by(SQL("n").desc(), AuditLog.reason)
    )
    return _frame(query, ["reason", "failures"])


def daily_activity(start: datetime, end: datetime) -> pd.DataFrame:
    """One row per day and action: succeeded and failed counts (days with no rows are filled with 0)."""
    day = _day(AuditLog.timestamp)
    ok = fn.SUM(Case(None, [(AuditLog.success, 1)], 0))
    query = (
        AuditLog.select(day.alias("day"), AuditLog.action, ok, fn.COUNT(AuditLog.id) - ok)
        .where(_in_period(start, end))
        .group_by(day, AuditLog.action)
        .order_by(day, AuditLog.action)
    )
    frame = _frame(query, ["day", "action", "succeeded", "failed"])
    days = pd.date_range(start.date(), (end - timedelta(microseconds=1)).date(), freq="D").strftime("%Y-%m-%d")
    actions = sorted(set(frame["action"])) or [VERIFY]
    full = pd.MultiIndex.from_product([days, actions], names=["day", "action"])
    return (
        frame.set_index(["day", "action"])
        .reindex(full, fill_value=0)
        .reset_index()
        .astype({"succeeded": int, "failed": int})
    )


def daily_verifications(start: datetime, end: datetime) -> pd.DataFrame:
    """Per day: verifications accepted, refused for a wrong code, double submits (`REPLAYED`), and refused for
    another reason (device locked, deactivated, unknown…); every day of the period, with 0 where none."""
    day = _day(AuditLog.timestamp)

    def counted(condition):
        return fn.SUM(Case(None, [(condition, 1)], 0))

    query = (
        AuditLog.select(
            day.alias("day"),
            counted(AuditLog.success),
            counted(~AuditLog.success & (AuditLog.reason == "INVALID_CODE")),
            counted(~AuditLog.success & (AuditLog.reason == "REPLAYED")),
            counted(~AuditLog.success & ~AuditLog.reason.in_(["INVALID_CODE", "REPLAYED"])),
        )
        .where(_in_period(start, end) & (AuditLog.action == VERIFY))
        .group_by(day)
        .order_by(day)
    )
    columns = ["day", "accepted", "wrong code", "double submit", "refused otherwise"]
    frame = _frame(query, columns)
    days = pd.date_range(start.date(), (end - timedelta(microseconds=1)).date(), freq="D").strftime("%Y-%m-%d")
    return (
        frame.set_index("day")
        .reindex(days, fill_value=0)
        .rename_axis("day")
        .reset_index()
        .astype({c: int for c in columns[1:]})
    )


def count_failing(column: str, start: datetime, end: datetime) -> int:
    """How many devices, users or client addresses had at least one failed verification: the "of how many"
    beside a top-ten list."""
    field = getattr(AuditLog, column)
    return (
        AuditLog.select(fn.COUNT(fn.DISTINCT(field)))
        .where(_in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success & field.is_null(False))
        .scalar()
    )


def refused_requests(start: datetime, end: datetime) -> pd.DataFrame:
    """Where requests refused before any device was looked at came from: a wrong or missing API key
    (`AUTH_FAILED`) and rate limiting (`RATE_LIMITED`), per client address, with the API client (if the key was
    known), how many, the user agents seen, and the first and last time. A scanner shows up here."""
    query = (
        AuditLog.select(
            AuditLog.ip_address,
            AuditLog.action,
            AuditLog.actor,
            fn.COUNT(AuditLog.id).alias("n"),
            fn.COUNT(fn.DISTINCT(AuditLog.user_agent)),
            fn.MIN(AuditLog.user_agent),
            fn.MIN(AuditLog.timestamp),
            fn.MAX(AuditLog.timestamp),
        )
        .where(_in_period(start, end) & AuditLog.action.in_([Action.AUTH_FAILED, Action.RATE_LIMITED]))
        .group_by(AuditLog.ip_address, AuditLog.action, AuditLog.actor)
        .order_by(SQL("n").desc(), AuditLog.ip_address, AuditLog.action)
    )
    frame = _frame(
        query, ["client address", "refused for", "client", "requests", "user agents", "a user agent", "first", "last"]
    )
    frame["refused for"] = frame["refused for"].map(
        {Action.AUTH_FAILED: "wrong or missing API key", Action.RATE_LIMITED: "rate limit"}
    )
    frame["client"] = frame["client"].fillna("(none)")
    frame["client address"] = frame["client address"].fillna("(not recorded)")
    return _stringify_times(frame, ["first", "last"])


def top_failing(column: str, start: datetime, end: datetime, limit: int = 10) -> pd.DataFrame:
    """The devices, users or client IPs with the most refused verifications (any reason), first and last."""
    field = getattr(AuditLog, column)
    query = (
        AuditLog.select(field, fn.COUNT(AuditLog.id).alias("n"), fn.MIN(AuditLog.timestamp), fn.MAX(AuditLog.timestamp))
        .where(_in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success & field.is_null(False))
        .group_by(field)
        .order_by(SQL("n").desc(), field)
        .limit(limit)
    )
    frame = _frame(query, [column, "refused", "first", "last"])
    return _stringify_times(frame, ["first", "last"])


def _per_device():
    """Per device (and its user): how many rows, from how many client IPs, first and last."""
    return AuditLog.select(
        AuditLog.device_id,
        AuditLog.user_id,
        fn.COUNT(AuditLog.id).alias("n"),
        fn.COUNT(fn.DISTINCT(AuditLog.ip_address)),
        fn.MIN(AuditLog.timestamp),
        fn.MAX(AuditLog.timestamp),
    )


BURST_GAP_SECONDS = 120
BURST_THRESHOLD = 5
BURST_KEYS = {"device_id": "device", "user_id": "user", "ip_address": "client address"}
BURST_REASONS = ("INVALID_CODE", "DEVICE_LOCKED")  # wrong codes, and codes sent while locked
BURST_COLUMNS = ["start", "end", "failures", "devices", "users", "client addresses", "lock followed", "seen per"]


def _burst_rows(column: str, start: datetime, end: datetime, gap_seconds: int, threshold: int):
    """The failed verifications of every burst keyed by `column` (device, user or client address), grouped per
    burst, address, device and user. A burst (a "session") is a run of failures with that key, each no more
    than `gap_seconds` after the one before: LAG marks where a new run begins, a running SUM numbers the runs,
    and a COUNT over each run keeps the runs of at least `threshold` failures. Three levels of subquery because
    SQL cannot nest one window function in another; the same SQL runs on SQLite (3.25+) and PostgreSQL."""
    key = getattr(AuditLog, column)
    at = _epoch(AuditLog.timestamp)
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
            Case(None, [(gap <= gap_seconds, 0)], 1).alias("begins"),
        )
        .where(
            _in_period(start, end)
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
        fn.SUM(marked.c.begins).over(partition_by=[marked.c.key], order_by=[marked.c.at, marked.c.row_id]).alias("run"),
    ).alias("runs")
    sized = runs.select_from(
        runs.c.key,
        runs.c.run,
        runs.c.at,
        runs.c.device,
        runs.c.user,
        runs.c.address,
        fn.COUNT(SQL("*")).over(partition_by=[runs.c.key, runs.c.run]).alias("size"),
    ).alias("sized")
    return (
        sized.select_from(
            sized.c.key,
            sized.c.run,
            sized.c.device,
            sized.c.user,
            sized.c.address,
            fn.COUNT(SQL("*")),
            fn.MIN(sized.c.at),
            fn.MAX(sized.c.at),
        )
        .where(sized.c.size >= threshold)
        .group_by(sized.c.key, sized.c.run, sized.c.device, sized.c.user, sized.c.address)
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

    Each episode: its first and last failure, how many, the devices, users and client addresses involved,
    and whether a device involved was locked during it (or within `gap_seconds` after)."""
    groups: dict[tuple[str, str, int], dict] = {}
    for column, seen in BURST_KEYS.items():
        for key, run, device, user, address, n, first, last in _burst_rows(column, start, end, gap_seconds, threshold):
            g = groups.setdefault(
                (seen, key, run),
                {"start": None, "end": None, "failures": 0, "devices": set(), "users": set(), "addresses": set()},
            )
            first, last = _utc(first), _utc(last)
            g["start"] = first if g["start"] is None else min(g["start"], first)
            g["end"] = last if g["end"] is None else max(g["end"], last)
            g["failures"] += n
            for name, value in (("devices", device), ("users", user), ("addresses", address)):
                if value is not None:
                    g[name].add(value)
    locks = [
        (device, _utc(at))
        for device, at in AuditLog.select(AuditLog.device_id, AuditLog.timestamp)
        .where(_in_period(start, end + timedelta(seconds=gap_seconds)) & (AuditLog.action == Action.DEVICE_LOCKED))
        .tuples()
    ]
    merged: dict[tuple, dict] = {}
    for (seen, _key, _run), g in sorted(groups.items(), key=lambda item: (item[1]["start"], item[0])):
        episode = merged.setdefault((g["start"], g["end"], g["failures"]), {**g, "seen": []})
        episode["seen"].append(seen)
        for name in ("devices", "users", "addresses"):
            episode[name] = episode[name] | g[name]
    rows = []
    for (first, last, failures), e in sorted(merged.items()):
        locked = any(
            device in e["devices"] and first <= at <= last + timedelta(seconds=gap_seconds) for device, at in locks
        )
        rows.append(
            (
                first,
                last,
                failures,
                ", ".join(sorted(e["devices"])),
                ", ".join(sorted(e["users"])),
                ", ".join(sorted(e["addresses"])),
                "yes" if locked else "no",
                ", ".join(seen for seen in BURST_KEYS.values() if seen in e["seen"]),
            )
        )
    return _stringify_times(pd.DataFrame(rows, columns=BURST_COLUMNS), ["start", "end"])


def _utc(value) -> datetime:
    """A timestamp as the naive UTC datetime stored (SQLite hands back text from a subquery, PostgreSQL a datetime)."""
    return pd.Timestamp(value).to_pydatetime()


def inactive_device_attempts(start: datetime, end: datetime) -> pd.DataFrame:
    """Verifications of deactivated devices: a lost or stolen phone still being used, or a stale integration."""
    query = (
        _per_device()
        .where(_in_period(start, end) & (AuditLog.action == VERIFY) & (AuditLog.reason == "DEVICE_INACTIVE"))
        .group_by(AuditLog.device_id, AuditLog.user_id)
        .order_by(SQL("n").desc(), AuditLog.device_id)
    )
    frame = _frame(query, ["device_id", "user_id", "attempts", "client_ips", "first", "last"])
    return _stringify_times(frame, ["first", "last"])


NO_CLIENT = "(no client: unauthenticated)"
ADMIN_ACTIONS = (
    Action.DEVICE_DEACTIVATED,
    Action.DEVICE_UNLOCKED,
    Action.DRIFT_RESET,
    Action.CODE_LOOKUP,
    Action.USER_ERASED,
    Action.AUDIT_PRUNED,
    Action.ACCESS_DENIED,
    Action.CLIENT_CREATED,
    Action.CLIENT_ROTATED,
    Action.CLIENT_REVOKED,
)


def actions_by_client(start: datetime, end: datetime) -> pd.DataFrame:
    """What each API client did (`actor`), action by action: who verifies, who registers, who administers."""
    ok = fn.SUM(Case(None, [(AuditLog.success, 1)], 0))
    query = (
        AuditLog.select(AuditLog.actor, AuditLog.action, fn.COUNT(AuditLog.id), ok)
        .where(_in_period(start, end))
        .group_by(AuditLog.actor, AuditLog.action)
        .order_by(AuditLog.actor, AuditLog.action)
    )
    frame = _frame(query, ["client", "action", "audit rows", "of which succeeded"])
    frame["client"] = frame["client"].fillna(NO_CLIENT)
    return frame


def admin_actions(start: datetime, end: datetime) -> pd.DataFrame:
    """Every administrative action, with who did it and the device it touched: deactivations, unlocks, clock
    allowance resets, code look-ups, erasures, prunes of the audit trail, refusals for a missing scope, and
    changes to the API clients themselves."""
    query = (
        AuditLog.select(
            AuditLog.timestamp,
            AuditLog.actor,
            AuditLog.action,
            AuditLog.device_id,
            AuditLog.success,
            AuditLog.reason,
            AuditLog.additional_data,
        )
        .where(_in_period(start, end) & AuditLog.action.in_(ADMIN_ACTIONS))
        .order_by(AuditLog.id)
    )
    frame = _frame(query, ["time", "client", "action", "device_id", "success", "reason", "details"])
    frame["client"] = frame["client"].fillna(NO_CLIENT)
    frame["result"] = frame.pop("success").map({True: "done", False: "refused"})  # 1 and 0 too
    frame["reason"] = frame.pop("reason").fillna("")
    frame["device_id"] = frame["device_id"].fillna("")
    frame["details"] = frame.pop("details").map(_admin_details)
    return _stringify_times(frame, ["time"])


def _admin_details(data: str | None) -> str:
    """What an administrative action's audit data says, in words: which client, scopes, route."""
    facts = json.loads(data) if isinstance(data, str) and data else {}  # pandas may hand over NaN for none
    parts = []
    if "client" in facts:
        parts.append(f"client {facts['client']}")
    if "scopes" in facts:
        parts.append(f"scopes {facts['scopes']}")
    if "route" in facts:
        parts.append(f"{facts['route']} (needs {facts['scope']})" if "scope" in facts else facts["route"])
    if "failed_attempts" in facts:
        parts.append(f"{facts['failed_attempts']} failures still counted")
    return "; ".join(parts)


def key_versions() -> pd.DataFrame:
    active = fn.SUM(Case(None, [(Device.is_active, 1)], 0))
    query = (
        Device.select(Device.key_version, fn.COUNT(Device.device_id), active)
        .group_by(Device.key_version)
        .order_by(Device.key_version)
    )
    return _frame(query, ["key_version", "devices", "active"])


def registrations_per_day(start: datetime, end: datetime) -> pd.DataFrame:
    frame = daily_activity(start, end)
    frame = frame[frame["action"] == Action.DEVICE_REGISTERED]
    if frame.empty:
        frame = daily_activity(start, end).assign(succeeded=0)
    return frame.groupby("day", as_index=False)["succeeded"].sum().rename(columns={"succeeded": "registrations"})


def device_states(as_of: datetime) -> pd.DataFrame:
    """Devices registered before `as_of`, by state at `as_of`: an enrolment never confirmed is "awaiting
    confirmation" until its deadline and "enrolment expired" after it (as `queries.device_info` tells them)."""
    ended = Device.deactivated_at.is_null(False) & (Device.deactivated_at < as_of)
    pending = Device.pending_until.is_null(False)
    state = Case(
        None,
        [
            (pending & (ended | (Device.pending_until <= as_of)), "enrolment expired"),
            (ended, "deactivated"),
            (pending, "awaiting confirmation"),
        ],
        "active",
    )
    query = (
        Device.select(state.alias("state"), fn.COUNT(Device.device_id))
        .where(Device.created_at < as_of)
        .group_by(SQL("state"))
        .order_by(SQL("state"))
    )
    return _frame(query, ["state", "devices"])


USAGE_BUCKETS = ((0, 0, "0"), (1, 9, "1-9"), (10, 49, "10-49"), (50, 99, "50-99"), (100, None, "100+"))


def usage_distribution() -> pd.DataFrame:
    bucket = Case(
        None,
        [
            ((Device.usage_count >= lo) & (Device.usage_count <= hi), label)
            if hi is not None
            else (Device.usage_count >= lo, label)
            for lo, hi, label in USAGE_BUCKETS
        ],
    )
    counts = dict(Device.select(bucket, fn.COUNT(Device.device_id)).group_by(bucket).tuples())
    return pd.DataFrame(
        [(label, counts.get(label, 0)) for *_, label in USAGE_BUCKETS], columns=["verifications", "devices"]
    )


def _stale(as_of: datetime, days: int):
    """Active devices not used in `days` days before `as_of` (never used counts as stale once that old)."""
    cutoff = as_of - timedelta(days=days)
    return Device.is_active & (Device.created_at < cutoff) & (Device.last_used.is_null() | (Device.last_used < cutoff))


def stale_device_count(as_of: datetime, days: int = 14) -> int:
    return Device.select(fn.COUNT(Device.device_id)).where(_stale(as_of, days)).scalar()


def stale_devices(as_of: datetime, days: int = 14, limit: int = 50) -> pd.DataFrame:
    """The `limit` stale devices (`_stale`) unused longest."""
    query = (
        Device.select(Device.device_id, Device.user_id, Device.created_at, Device.last_used, Device.usage_count)
        .where(_stale(as_of, days))
        .order_by(Device.last_used.asc(nulls="first"), Device.device_id)
        .limit(limit)
    )
    frame = _frame(query, ["device_id", "user_id", "created_at", "last_used", "verifications"])
    return _stringify_times(frame, ["created_at", "last_used"])


def drift_distribution() -> pd.DataFrame:
    """The clock offsets (in time steps) the service has learned for devices."""
    query = Device.select(Device.drift, fn.COUNT(Device.device_id)).group_by(Device.drift).order_by(Device.drift)
    return _frame(query, ["drift_steps", "devices"])


def parameter_mix() -> pd.DataFrame:
    query = (
        Device.select(Device.algorithm, Device.digits, Device.interval, fn.COUNT(Device.device_id).alias("n"))
        .group_by(Device.algorithm, Device.digits, Device.interval)
        .order_by(SQL("n").desc(), Device.algorithm, Device.digits)
    )
    return _frame(query, ["algorithm", "digits", "interval", "devices"])


LIFECYCLE_ACTIONS = (
    Action.DEVICE_CONFIRMED,
    Action.ENROLLMENT_EXPIRED,
    Action.DEVICE_RESYNCED,
    Action.DRIFT_RESET,
    Action.RECOVERY_CODES_ISSUED,
    Action.RECOVERY_CODE_VERIFICATION,
    Action.RECOVERY_CODES_LOCKED,
)


def lifecycle_totals(start: datetime, end: datetime) -> dict[str, int | float | None]:
    """Enrolment, resynchronisation and recovery in the period, each an audit row count: enrolments
    registered pending, confirmed and expired (the confirmation rate is confirmed / (confirmed + expired),
    None when neither happened), wrong confirmation codes; resyncs by outcome, verifications re-centred
    on the server's clock, drift resets; recovery code sets issued, codes used and refused by reason, locks."""
    counts = {
        (action, bool(success), reason): n
        for action, success, reason, n in AuditLog.select(
            AuditLog.action, AuditLog.success, AuditLog.reason, fn.COUNT(AuditLog.id)
        )
        .where(_in_period(start, end) & AuditLog.action.in_(LIFECYCLE_ACTIONS))
        .group_by(AuditLog.action, AuditLog.success, AuditLog.reason)
        .tuples()
    }

    def count(action: str, success: bool | None = None, reason: str | None = None) -> int:
        return sum(
            n
            for (a, s, r), n in counts.items()
            if a == action and (success is None or s == success) and (reason is None or r == reason)
        )

    def refused(action: str) -> dict[str, int]:
        wrong, used = count(action, False, "INVALID_CODE"), count(action, False, "REPLAYED")
        return {"wrong": wrong, "used": used, "other": count(action, False) - wrong - used}

    confirmed, expired = count(Action.DEVICE_CONFIRMED, True), count(Action.ENROLLMENT_EXPIRED)
    resyncs, codes = refused(Action.DEVICE_RESYNCED), refused(Action.RECOVERY_CODE_VERIFICATION)
    return {
        "enrolments_pending": _count_with(Action.DEVICE_REGISTERED, "pending", "BOOLEAN", start, end),
        "enrolments_confirmed": confirmed,
        "enrolments_expired": expired,
        "confirmation_rate_percent": round(100.0 * confirmed / (confirmed + expired), 2)
        if confirmed + expired
        else None,
        "confirmation_codes_wrong": count(Action.DEVICE_CONFIRMED, False, "INVALID_CODE"),
        "resyncs_succeeded": count(Action.DEVICE_RESYNCED, True),
        "resyncs_refused_wrong": resyncs["wrong"],
        "resyncs_refused_used": resyncs["used"],
        "resyncs_refused_other": resyncs["other"],
        "drift_recentred": _count_with(VERIFY, "recentred_from", "BIGINT", start, end),
        "drift_resets": count(Action.DRIFT_RESET, True),
        "recovery_sets_issued": count(Action.RECOVERY_CODES_ISSUED, True),
        "recovery_codes_used": count(Action.RECOVERY_CODE_VERIFICATION, True),
        "recovery_codes_refused_wrong": codes["wrong"],
        "recovery_codes_refused_used": codes["used"],
        "recovery_codes_refused_other": codes["other"],
        "recovery_code_locks": count(Action.RECOVERY_CODES_LOCKED),
    }


def _count_with(action: str, key: str, sql_type: str, start: datetime, end: datetime) -> int:
    """Successful `action` rows in the period whose data has `key` (set and, for a BOOLEAN, true)."""
    field = _json_field(AuditLog.additional_data, key, sql_type)
    where = field if sql_type == "BOOLEAN" else field.is_null(False)
    return (
        AuditLog.select(fn.COUNT(AuditLog.id))
        .where(_in_period(start, end) & (AuditLog.action == action) & AuditLog.success & where)
        .scalar()
    )


def confirmation_times(start: datetime, end: datetime) -> pd.DataFrame:
    """How long the enrolments confirmed in the period took: seconds from the registration (the device's
    latest before its confirmation) to the confirming code, and how many enrolments took that long."""
    registered = AuditLog.alias("registered")
    seconds = _epoch(AuditLog.timestamp) - _epoch(fn.MAX(registered.timestamp))
    each = (
        AuditLog.select(seconds.alias("seconds"))
        .join(
            registered,
            on=(registered.device_id == AuditLog.device_id)
            & (registered.action == Action.DEVICE_REGISTERED)
            & registered.success
            & (registered.id < AuditLog.id),
        )
        .where(_in_period(start, end) & (AuditLog.action == Action.DEVICE_CONFIRMED) & AuditLog.success)
        .group_by(AuditLog.id, AuditLog.timestamp)
        .alias("confirmed")
    )
    query = each.select_from(each.c.seconds, fn.COUNT(SQL("*"))).group_by(each.c.seconds).order_by(each.c.seconds)
    return _frame(query, ["seconds", "enrolments"])


def median_seconds(times: pd.DataFrame) -> float | None:
    """The median of `confirmation_times` (None: no enrolment was confirmed)."""
    if times.empty:
        return None
    return float(times["seconds"].repeat(times["enrolments"]).median())


def resync_offsets(start: datetime, end: datetime) -> pd.DataFrame:
    """The clock offsets successful resyncs found in the period, in time steps (positive: the phone's clock
    is ahead), with the device's step length in seconds, and how many resyncs found each."""
    offset = _json_field(AuditLog.additional_data, "offset", "BIGINT")
    query = (
        AuditLog.select(offset.alias("offset_steps"), Device.interval, fn.COUNT(AuditLog.id))
        .join(Device, JOIN.LEFT_OUTER, on=(Device.device_id == AuditLog.device_id))
        .where(_in_period(start, end) & (AuditLog.action == Action.DEVICE_RESYNCED) & AuditLog.success)
        .group_by(SQL("offset_steps"), Device.interval)
        .order_by(SQL("offset_steps"), Device.interval)
    )
    return _frame(query, ["offset_steps", "step_seconds", "resyncs"])


EVENT_COLUMNS = [
    *("id", "time", "action", "success", "reason", "device_id", "user_id", "ip_address", "user_agent"),
    *("client", "request_id", "data", "chain", "seq", "entry_hash"),
]


def audit_events(start: datetime, end: datetime, user_id: str | None = None) -> Iterator[tuple]:
    """The raw audit records of the period (of one user, if given), in the order they were written, as stored:
    what every summary is counted from, for a reader who wants to count again. A stream, not a frame: a
    month can hold millions of rows."""
    query = AuditLog.select(
        AuditLog.id,
        AuditLog.timestamp,
        AuditLog.action,
        AuditLog.success,
        AuditLog.reason,
        AuditLog.device_id,
        AuditLog.user_id,
        AuditLog.ip_address,
        AuditLog.user_agent,
        AuditLog.actor,
        AuditLog.request_id,
        AuditLog.additional_data,
        AuditLog.chain,
        AuditLog.seq,
        AuditLog.entry_hash,
    ).where(_in_period(start, end))
    if user_id is not None:
        query = query.where(AuditLog.user_id == user_id)
    for row in query.order_by(AuditLog.id).tuples().iterator():
        yield (row[0], _iso(row[1]), *row[2:3], bool(row[3]), *row[4:])


def _iso(value) -> str | None:
    if isinstance(value, datetime):  # what both databases give; pd.Timestamp per row cost more than the query
        return value.isoformat(timespec="microseconds") + "Z"
    return None if value is None else pd.Timestamp(value).isoformat(timespec="microseconds") + "Z"


def user_devices(user_id: str, as_of: datetime) -> pd.DataFrame:
    """A user's devices as the service holds them now (state as `queries.describe` tells it), oldest first."""
    from ..service.queries import user_devices as described

    devices = described(user_id, as_of)["devices"]
    columns = {
        "device_id": "device",
        "status": "state",
        "created_at": "registered",
        "last_used": "last used",
        "usage_count": "verifications",
        "deactivated_at": "deactivated",
        "locked_until": "locked until",
        "failed_attempts": "failures counted",
        "key_version": "key version",
    }
    rows = [
        {
            **{label: "" if d[key] is None else d[key] for key, label in columns.items()},
            "codes": f"{d['digits']} digits, {d['interval']} s, {d['algorithm']}",
        }
        for d in devices
    ]
    return pd.DataFrame(rows, columns=[*columns.values(), "codes"])


def user_recovery_codes(user_id: str, as_of: datetime) -> pd.DataFrame:
    """The user's set of recovery codes, if any: how many are left, when issued and last used, whether locked."""
    from ..service.queries import user_devices as described

    codes = described(user_id, as_of)["recovery_codes"]
    columns = ["codes left", "codes issued", "issued", "last used", "failures counted", "locked until"]
    if codes is None:
        return pd.DataFrame([], columns=columns)
    locked = "until a new set is issued" if codes["hard_locked"] else codes["locked_until"] or ""
    row = (codes["remaining"], codes["total"], codes["created_at"], codes["last_used"] or "", codes["failed_attempts"])
    return pd.DataFrame([(*row, locked)], columns=columns)


def user_activity(user_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    """What the user's audit records of the period are, action by action: how many, done or refused, first, last."""
    ok = fn.SUM(Case(None, [(AuditLog.success, 1)], 0))
    query = (
        AuditLog.select(
            AuditLog.action,
            fn.COUNT(AuditLog.id),
            ok,
            fn.MIN(AuditLog.timestamp),
            fn.MAX(AuditLog.timestamp),
        )
        .where(_in_period(start, end) & (AuditLog.user_id == user_id))
        .group_by(AuditLog.action)
        .order_by(AuditLog.action)
    )
    frame = _frame(query, ["action", "records", "done", "first", "last"])
    frame.insert(3, "refused", frame["records"] - frame["done"])
    return _stringify_times(frame, ["first", "last"])


def user_trail(user_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The user's audit records of the period, oldest first, as a reader takes them in: when, what, the
    outcome and why, the device, the API client that asked, the address and program it came from."""
    query = (
        AuditLog.select(
            AuditLog.timestamp,
            AuditLog.action,
            AuditLog.success,
            AuditLog.reason,
            AuditLog.device_id,
            AuditLog.actor,
            AuditLog.ip_address,
            AuditLog.user_agent,
        )
        .where(_in_period(start, end) & (AuditLog.user_id == user_id))
        .order_by(AuditLog.id)
    )
    frame = _frame(query, ["time", "action", "success", "reason", "device", "client", "address", "user agent"])
    frame.insert(2, "outcome", frame.pop("success").map({True: "done", False: "refused"}))
    for column in ("reason", "device", "client", "address", "user agent"):
        frame[column] = frame[column].fillna("")
    return _stringify_times(frame, ["time"])


def _stringify_times(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Timestamps as ISO text: SQLite returns strings and PostgreSQL datetimes, and reports should read the same."""
    for column in columns:
        frame[column] = [
            None if v is None or v is pd.NaT else str(pd.Timestamp(v).isoformat(timespec="seconds")) + "Z"
            for v in frame[column]
        ]
    return frame


@dataclass
class ReportContext:
    """What a report notebook works on: the open database, the period and where its files go."""

    database: Database
    start: datetime
    end: datetime  # exclusive
    output: ReportOutput
    source: str  # the database, for the reader, without any password
    generated_at: str
    integrity: dict | None = None  # `audit verify` over the period's rows (audit_verify.Result.as_dict())
    generated_by: str = ""  # who or what asked for the report, in words

    def integrity_markdown(self) -> str:
        """The integrity statement a reader checks first: were these records altered?"""
        found = self.integrity
        if found is None:
            return "## Integrity of these records\n\n**Not checked**: the service's keys were not available."
        checkpoint = found.get("checkpoint")
        against = (
            f"the signed checkpoint #{checkpoint['id']} of {checkpoint['at'].replace('T', ' ').rstrip('Z')} UTC "
            f"(key {', '.join(checkpoint['signed_by'])}; SHA-256 of its text {checkpoint.get('sha256', '?')})"
            if checkpoint
            else "no signed checkpoint (none has been taken yet)"
        )
        if found["intact"]:
            verdict = (
                f"**Intact.** The {found['rows']:,} audit records written in this period were recomputed link by "
                f"link in their {found['chains']} hash chains and match, checked against {against}: none was "
                "edited, removed, inserted or reordered."
            )
        else:
            lines = "\n".join(f"- chain {b['chain']}: {b['kind']} — {b['detail']}" for b in found["breaks"])
            verdict = (
                f"**ALTERED.** Checking the {found['rows']:,} audit records of this period against {against} "
                f"found {len(found['breaks'])} break(s); the figures below include records that were changed:"
                f"\n\n{lines}"
            )
        return f"## Integrity of these records\n\n{verdict}"

    def header(self, title: str, settings: list[tuple[str, str]] = ()) -> str:
        """The report's first lines: what it covers, from which data, when, by whom and with which software, and
        the settings its figures depend on (in words, each a row)."""
        from .. import __version__

        last_day = (self.end - timedelta(days=1)).date()
        days = (last_day - self.start.date()).days + 1
        length = "1 day" if days == 1 else f"{days} days"
        rows = [
            ("Period (UTC)", f"{self.start:%-d %B %Y} to {last_day:%-d %B %Y}, both days included ({length})"),
            ("Data", self.source),
            ("Generated", f"{self.generated_at}, by {self.generated_by or 'this notebook, run by hand'}"),
            ("Software", f"otp-service {__version__}"),
            *settings,
        ]
        table = "".join(f"| {name} | {value} |\n" for name, value in rows)
        return f"# {title}\n\n| | |\n|---|---|\n{table}"

    def files_note(self) -> str:
        """Where the tables are, besides this page (never a folder of the machine that made it)."""
        tables = sorted(f for f in self.output.files if f.endswith(".csv"))
        raw = ", and every audit record counted (audit_events.csv)," if "audit_events.csv" in tables else ""
        return (
            f"## The data behind this report\n\nEvery table above{raw} is in the report's zip file as CSV "
            "(UTF-8, comma-separated; a cell a spreadsheet would run as a formula starts with an apostrophe): "
            f"{', '.join(tables)}. The file SHA256SUMS in the zip holds each file's SHA-256 hash (the command "
            "`sha256sum -c SHA256SUMS` checks them)."
        )


def prepare(
    data: str, start: str, end: str, output_dir: str | None, integrity: str = "", generated_by: str = ""
) -> ReportContext:
    """Open the report's database, parse the inclusive dates, make the output folder.

    `data`: "demo" builds the deterministic demo history in a temporary SQLite file, so the notebook runs
    anywhere with no set-up and shows the same figures every time; "DATABASE_URL" opens the database
    that environment variable names (the `report` command sets it: a URL given as a parameter, password
    and all, would be written into the executed notebook). `integrity`: the `report` command's verification
    of the period's audit rows, as JSON; without it the notebook verifies them itself (demo, or the service's
    keys in the environment).
    """
    from ..config import read
    from .demo import demo_database
    from .runner import period

    begin, until = period(date.fromisoformat(start), date.fromisoformat(end))
    if data == "demo":
        database_url = demo_database(f"sqlite:///{tempfile.mkdtemp(prefix='otp-demo-')}/demo.db")
        source = "demo history (synthetic: {devices} devices, 28 days to 2026-03-01, seed 7)"  # counted below
    elif data == "DATABASE_URL":
        database_url = read(os.environ, ["DATABASE_URL"])["database_url"]
        parsed = urlparse(database_url)
        # the server and database, never a password; for SQLite the file's name, not a folder of this machine
        source = (
            f"{parsed.scheme}://{parsed.hostname}{parsed.path}"
            if parsed.hostname
            else f"SQLite database {Path(parsed.path).name}"
        )
    else:
        raise ValueError(f'data must be "demo" or "DATABASE_URL", got {data!r}')
    database = open_database(database_url, 1)
    database.connect()
    if data == "demo":  # its 40 devices signing in, and those the lifecycle's stories enrol
        source = source.format(devices=Device.select().count())
    output = ReportOutput(output_dir or tempfile.mkdtemp(prefix="otp-report-"))
    generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    checked = json.loads(integrity) if integrity else _verify(database, database_url, data, begin, until)
    return ReportContext(database, begin, until, output, source, generated, checked, generated_by)


def _verify(database: Database, database_url: str, data: str, start: datetime, end: datetime) -> dict | None:
    """The period's audit rows verified here (demo: with the demo's keys; else the environment's, if set)."""
    from ..config import ConfigError, Settings
    from ..service import build_service
    from .demo import demo_settings

    try:
        settings = demo_settings(database_url) if data == "demo" else Settings.from_env()
    except ConfigError:
        return None
    if data != "demo" and "AUDIT_SIGNING_KEY" in settings.generated:
        return None  # no keys given: the one just generated would call every checkpoint forged
    service = build_service(settings, database)
    return service.verify_audit(start, end, record=False).as_dict()


MARKDOWN_SPECIALS = str.maketrans({c: f"&#{ord(c)};" for c in "\\`*_{}[]()#+-.!|<>&~"})


def in_markdown(text: str) -> str:
    """Text chosen by an API caller (a user id) put into Markdown as itself: no markup, no HTML, no table cell
    broken by a `|`."""
    return str(text).translate(MARKDOWN_SPECIALS)


def duration_words(seconds: float) -> str:
    """A number of seconds as a reader says it: "2 minutes", "90 seconds", "1 hour"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """OWASP's rule against CSV injection: a text cell that Excel or LibreOffice would read as a formula
    (it starts with = + - @, a tab or a carriage return) gets a leading apostrophe. User ids, user agents
    and the like are chosen by whoever calls the API; a report must not run them on a reader's machine."""
    safe = frame.copy()
    for column in safe.columns:
        if pd.api.types.is_string_dtype(safe[column]) or pd.api.types.is_object_dtype(safe[column]):
            safe[column] = safe[column].map(safe_cell)
    return safe


def safe_cell(value):
    """One cell, neutralised as `spreadsheet_safe` says."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class ReportOutput:
    """Where a report notebook writes its CSV tables and PNG figures."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Write `frame` as CSV, with every cell a spreadsheet would run as a formula neutralised; the
        frame itself is returned as it was, for the page."""
        # RFC 4180 line ends: a cell holding a carriage return is then quoted, not cut in two
        spreadsheet_safe(frame).to_csv(self.directory / f"{name}.csv", index=False, lineterminator="\r\n")
        self.files.append(f"{name}.csv")
        return frame

    def rows(self, name: str, columns: list[str], rows: Iterable[tuple]) -> int:
        """Write a stream of rows as CSV (neutralised like `table`'s), without holding them; returns how many."""
        count = 0
        with open(self.directory / f"{name}.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file, lineterminator="\r\n")
            writer.writerow(columns)
            for row in rows:  # `safe_cell`, inlined: this runs for every value of every raw audit record
                writer.writerow([f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v for v in row])
                count += 1
        self.files.append(f"{name}.csv")
        return count

    def figure(self, name: str, fig) -> None:
        fig.savefig(self.directory / f"{name}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        self.files.append(f"{name}.png")
