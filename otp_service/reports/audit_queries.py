"""The audit report's figures (notebook 03): how verifications went, who failed most, refused requests,
deactivated devices still in use, what each API client and every administrator did, key versions.
The brute-force episodes are in `bursts`, the raw records in `events`.
"""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
from peewee import SQL, Case, fn

from ..core.actions import Action
from ..db.models import AuditLog, Device
from . import sql
from .sql import VERIFY


def audit_totals(start: datetime, end: datetime) -> dict[str, int | float | None]:
    """The audit report's summary. A verification refused as `REPLAYED` is a double submit (a right code sent
    again, usually a second click): it is neither a success nor a guess, so the success rate leaves it out —
    accepted / (verifications - double submits); None when there was nothing to divide by."""
    count = sql.outcome_counts(sql.in_period(start, end))

    verifications, succeeded = count(VERIFY), count(VERIFY, True)
    wrong, replayed = count(VERIFY, False, "INVALID_CODE"), count(VERIFY, False, "REPLAYED")
    attempts = verifications - replayed
    devices_locked = (
        AuditLog.select(fn.COUNT(fn.DISTINCT(AuditLog.device_id)))
        .where(sql.in_period(start, end) & (AuditLog.action == Action.DEVICE_LOCKED))
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
        "authentication_failures": _auth_failures(start, end),
        "rate_limit_hits": count(Action.RATE_LIMITED),
    }


def failures_by_reason(start: datetime, end: datetime) -> pd.DataFrame:
    """The period's refused verifications per reason (wrong code, double submit, device locked…), the most
    frequent first: why sign-ins failed."""
    query = (
        AuditLog.select(AuditLog.reason, fn.COUNT(AuditLog.id).alias("n"))
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success)
        .group_by(AuditLog.reason)
        .order_by(SQL("n").desc(), AuditLog.reason)
    )
    return sql.frame(query, ["reason", "failures"])


def daily_verifications(start: datetime, end: datetime) -> pd.DataFrame:
    """Per day: verifications accepted, refused for a wrong code, double submits (`REPLAYED`), and refused for
    another reason (device locked, deactivated, unknown…); every day of the period, with 0 where none."""
    day = sql.day(AuditLog.timestamp)

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
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY))
        .group_by(day)
        .order_by(day)
    )
    columns = ["day", "accepted", "wrong code", "double submit", "refused otherwise"]
    frame = sql.frame(query, columns)
    days = sql.every_day(start, end)
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
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success & field.is_null(False))
        .scalar()
    )


def _refusals():
    """How many refusals the rows stand for: one each, but a row of a window's repeated ones stands for as many
    as it says (`http.refusals`)."""
    return fn.SUM(fn.COALESCE(sql.json_field(AuditLog.additional_data, "repeated", "BIGINT"), 1))


def _auth_failures(start: datetime, end: datetime) -> int:
    where = sql.in_period(start, end) & (AuditLog.action == Action.AUTH_FAILED)
    return AuditLog.select(_refusals()).where(where).scalar() or 0


def refused_requests(start: datetime, end: datetime) -> pd.DataFrame:
    """Where requests refused before any device was looked at came from: a wrong or missing API key
    (`AUTH_FAILED`) and rate limiting (`RATE_LIMITED`), per client address, with the API client (if the key was
    known), how many, the user agents seen, and the first and last time. A scanner shows up here."""
    query = (
        AuditLog.select(
            AuditLog.ip_address,
            AuditLog.action,
            AuditLog.actor,
            _refusals().alias("n"),  # a row of repeated refusals counts them all
            fn.COUNT(fn.DISTINCT(AuditLog.user_agent)),
            fn.MIN(AuditLog.user_agent),
            fn.MIN(AuditLog.timestamp),
            fn.MAX(AuditLog.timestamp),
        )
        .where(sql.in_period(start, end) & AuditLog.action.in_([Action.AUTH_FAILED, Action.RATE_LIMITED]))
        .group_by(AuditLog.ip_address, AuditLog.action, AuditLog.actor)
        .order_by(SQL("n").desc(), AuditLog.ip_address, AuditLog.action)
    )
    frame = sql.frame(
        query, ["client address", "refused for", "client", "requests", "user agents", "a user agent", "first", "last"]
    )
    frame["refused for"] = frame["refused for"].map(
        {Action.AUTH_FAILED: "wrong or missing API key", Action.RATE_LIMITED: "rate limit"}
    )
    frame["client"] = frame["client"].fillna("(none)")
    frame["client address"] = frame["client address"].fillna("(not recorded)")
    return sql.stringify_times(frame, ["first", "last"])


def top_failing(column: str, start: datetime, end: datetime, limit: int = 10) -> pd.DataFrame:
    """The devices, users or client IPs with the most refused verifications (any reason), first and last."""
    field = getattr(AuditLog, column)
    query = (
        AuditLog.select(field, fn.COUNT(AuditLog.id).alias("n"), fn.MIN(AuditLog.timestamp), fn.MAX(AuditLog.timestamp))
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success & field.is_null(False))
        .group_by(field)
        .order_by(SQL("n").desc(), field)
        .limit(limit)
    )
    frame = sql.frame(query, [column, "refused", "first", "last"])
    return sql.stringify_times(frame, ["first", "last"])


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


def inactive_device_attempts(start: datetime, end: datetime) -> pd.DataFrame:
    """Verifications of deactivated devices: a lost or stolen phone still being used, or a stale integration."""
    query = (
        _per_device()
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & (AuditLog.reason == "DEVICE_INACTIVE"))
        .group_by(AuditLog.device_id, AuditLog.user_id)
        .order_by(SQL("n").desc(), AuditLog.device_id)
    )
    frame = sql.frame(query, ["device_id", "user_id", "attempts", "client_ips", "first", "last"])
    return sql.stringify_times(frame, ["first", "last"])


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
        .where(sql.in_period(start, end))
        .group_by(AuditLog.actor, AuditLog.action)
        .order_by(AuditLog.actor, AuditLog.action)
    )
    frame = sql.frame(query, ["client", "action", "audit rows", "of which succeeded"])
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
        .where(sql.in_period(start, end) & AuditLog.action.in_(ADMIN_ACTIONS))
        .order_by(AuditLog.id)
    )
    frame = sql.frame(query, ["time", "client", "action", "device_id", "success", "reason", "details"])
    frame["client"] = frame["client"].fillna(NO_CLIENT)
    frame["result"] = frame.pop("success").map({True: "done", False: "refused"})  # 1 and 0 too
    frame["reason"] = frame.pop("reason").fillna("")
    frame["device_id"] = frame["device_id"].fillna("")
    frame["details"] = frame.pop("details").map(_admin_details)
    return sql.stringify_times(frame, ["time"])


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
    """Devices (all, and active) by the master-secret version their key derives from, now: how far a rotation
    of the master secret has got."""
    active = fn.SUM(Case(None, [(Device.is_active, 1)], 0))
    query = (
        Device.select(Device.key_version, fn.COUNT(Device.device_id), active)
        .where(sql.of_tenant(Device))
        .group_by(Device.key_version)
        .order_by(Device.key_version)
    )
    return sql.frame(query, ["key_version", "devices", "active"])
