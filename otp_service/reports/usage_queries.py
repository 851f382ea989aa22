"""The usage report's figures (notebook 04): registrations and activity per day, device states, how much
devices are used, stale devices, clock drift, code parameters, and the lifecycle — enrolment confirmation,
resynchronisation, recovery codes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from peewee import JOIN, SQL, Case, fn

from ..core.actions import Action
from ..db.models import AuditLog, Device
from . import sql
from .sql import VERIFY


def daily_activity(start: datetime, end: datetime) -> pd.DataFrame:
    """One row per day and action: succeeded and failed counts (days with no rows are filled with 0)."""
    day = sql.day(AuditLog.timestamp)
    ok = fn.SUM(Case(None, [(AuditLog.success, 1)], 0))
    query = (
        AuditLog.select(day.alias("day"), AuditLog.action, ok, fn.COUNT(AuditLog.id) - ok)
        .where(sql.in_period(start, end))
        .group_by(day, AuditLog.action)
        .order_by(day, AuditLog.action)
    )
    frame = sql.frame(query, ["day", "action", "succeeded", "failed"])
    days = sql.every_day(start, end)
    actions = sorted(set(frame["action"])) or [VERIFY]
    full = pd.MultiIndex.from_product([days, actions], names=["day", "action"])
    return (
        frame.set_index(["day", "action"])
        .reindex(full, fill_value=0)
        .reset_index()
        .astype({"succeeded": int, "failed": int})
    )


def registrations_per_day(start: datetime, end: datetime) -> pd.DataFrame:
    """Devices registered on each day of the period, 0 on a day with none (from `daily_activity`)."""
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
        .where((Device.created_at < as_of) & sql.of_tenant(Device))
        .group_by(SQL("state"))
        .order_by(SQL("state"))
    )
    return sql.frame(query, ["state", "devices"])


USAGE_BUCKETS = ((0, 0, "0"), (1, 9, "1-9"), (10, 49, "10-49"), (50, 99, "50-99"), (100, None, "100+"))


def usage_distribution() -> pd.DataFrame:
    """Devices by how many successful verifications they have had, in the `USAGE_BUCKETS` (an empty bucket
    as 0): whether the devices registered are used at all."""
    bucket = Case(
        None,
        [
            ((Device.usage_count >= lo) & (Device.usage_count <= hi), label)
            if hi is not None
            else (Device.usage_count >= lo, label)
            for lo, hi, label in USAGE_BUCKETS
        ],
    )
    counts = dict(
        Device.select(bucket, fn.COUNT(Device.device_id)).where(sql.of_tenant(Device)).group_by(bucket).tuples()
    )
    return pd.DataFrame(
        [(label, counts.get(label, 0)) for *_, label in USAGE_BUCKETS], columns=["verifications", "devices"]
    )


def _stale(as_of: datetime, days: int):
    """Active devices not used in `days` days before `as_of` (never used counts as stale once that old)."""
    cutoff = as_of - timedelta(days=days)
    unused = Device.last_used.is_null() | (Device.last_used < cutoff)
    return sql.of_tenant(Device) & Device.is_active & (Device.created_at < cutoff) & unused


def stale_device_count(as_of: datetime, days: int = 14) -> int:
    """How many devices are stale (`_stale`): the total beside the capped list of `stale_devices`."""
    return Device.select(fn.COUNT(Device.device_id)).where(_stale(as_of, days)).scalar()


def stale_devices(as_of: datetime, days: int = 14, limit: int = 50) -> pd.DataFrame:
    """The `limit` stale devices (`_stale`) unused longest."""
    query = (
        Device.select(Device.device_id, Device.user_id, Device.created_at, Device.last_used, Device.usage_count)
        .where(_stale(as_of, days))
        .order_by(Device.last_used.asc(nulls="first"), Device.device_id)
        .limit(limit)
    )
    frame = sql.frame(query, ["device_id", "user_id", "created_at", "last_used", "verifications"])
    return sql.stringify_times(frame, ["created_at", "last_used"])


def drift_distribution() -> pd.DataFrame:
    """The clock offsets (in time steps) the service has learned for devices."""
    query = (
        Device.select(Device.drift, fn.COUNT(Device.device_id))
        .where(sql.of_tenant(Device))
        .group_by(Device.drift)
        .order_by(Device.drift)
    )
    return sql.frame(query, ["drift_steps", "devices"])


def parameter_mix() -> pd.DataFrame:
    """Devices by algorithm, digits and time step, the most common first: the code settings in use."""
    query = (
        Device.select(Device.algorithm, Device.digits, Device.interval, fn.COUNT(Device.device_id).alias("n"))
        .where(sql.of_tenant(Device))
        .group_by(Device.algorithm, Device.digits, Device.interval)
        .order_by(SQL("n").desc(), Device.algorithm, Device.digits)
    )
    return sql.frame(query, ["algorithm", "digits", "interval", "devices"])


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
    count = sql.outcome_counts(sql.in_period(start, end) & AuditLog.action.in_(LIFECYCLE_ACTIONS))

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
    field = sql.json_field(AuditLog.additional_data, key, sql_type)
    where = field if sql_type == "BOOLEAN" else field.is_null(False)
    return (
        AuditLog.select(fn.COUNT(AuditLog.id))
        .where(sql.in_period(start, end) & (AuditLog.action == action) & AuditLog.success & where)
        .scalar()
    )


def confirmation_times(start: datetime, end: datetime) -> pd.DataFrame:
    """How long the enrolments confirmed in the period took: seconds from the registration (the device's
    latest before its confirmation) to the confirming code, and how many enrolments took that long."""
    registered = AuditLog.alias("registered")
    seconds = sql.epoch(AuditLog.timestamp) - sql.epoch(fn.MAX(registered.timestamp))
    each = (
        AuditLog.select(seconds.alias("seconds"))
        .join(
            registered,
            on=(registered.device_id == AuditLog.device_id)
            & (registered.action == Action.DEVICE_REGISTERED)
            & registered.success
            & (registered.id < AuditLog.id),
        )
        .where(sql.in_period(start, end) & (AuditLog.action == Action.DEVICE_CONFIRMED) & AuditLog.success)
        .group_by(AuditLog.id, AuditLog.timestamp)
        .alias("confirmed")
    )
    query = each.select_from(each.c.seconds, fn.COUNT(SQL("*"))).group_by(each.c.seconds).order_by(each.c.seconds)
    return sql.frame(query, ["seconds", "enrolments"])


def median_seconds(times: pd.DataFrame) -> float | None:
    """The median of `confirmation_times` (None: no enrolment was confirmed)."""
    if times.empty:
        return None
    return float(times["seconds"].repeat(times["enrolments"]).median())


def resync_offsets(start: datetime, end: datetime) -> pd.DataFrame:
    """The clock offsets successful resyncs found in the period, in time steps (positive: the phone's clock
    is ahead), with the device's step length in seconds, and how many resyncs found each."""
    offset = sql.json_field(AuditLog.additional_data, "offset", "BIGINT")
    query = (
        AuditLog.select(offset.alias("offset_steps"), Device.interval, fn.COUNT(AuditLog.id))
        .join(Device, JOIN.LEFT_OUTER, on=(Device.device_id == AuditLog.device_id))
        .where(sql.in_period(start, end) & (AuditLog.action == Action.DEVICE_RESYNCED) & AuditLog.success)
        .group_by(SQL("offset_steps"), Device.interval)
        .order_by(SQL("offset_steps"), Device.interval)
    )
    return sql.frame(query, ["offset_steps", "step_seconds", "resyncs"])
