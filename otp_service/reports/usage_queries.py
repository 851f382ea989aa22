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


def _existing(as_of: datetime):
    """The report's tenant's devices registered before `as_of`: those the period's end knew (a device id
    registered again later holds only its newest registration, so the earlier one is not counted)."""
    return sql.of_tenant(Device) & (Device.created_at < as_of)


def _rows_of_device(alias, as_of: datetime | None = None, *, after: bool = False):
    """The audit rows of the outer query's device (this tenant, since its registration), before `as_of` or,
    with `after`, from `as_of` on."""
    when = alias.timestamp >= as_of if after else alias.timestamp < as_of
    return (
        (alias.device_id == Device.device_id)
        & (alias.tenant_id == Device.tenant_id)
        & (alias.timestamp >= Device.created_at)
        & when
    )


def _state_at(as_of: datetime):
    """A device's state at `as_of`, from the row as it is now and its audit rows since: an enrolment still
    unconfirmed is "awaiting confirmation" until its deadline and "enrolment expired" after it (or once ended);
    one confirmed only after `as_of` was still awaiting confirmation then; a device deactivated after `as_of`
    was active then."""
    later = AuditLog.alias("confirmed_later")
    confirmed_later = fn.EXISTS(
        later.select(SQL("1")).where(
            _rows_of_device(later, as_of, after=True) & (later.action == Action.DEVICE_CONFIRMED) & later.success
        )
    )
    ended = Device.deactivated_at.is_null(False) & (Device.deactivated_at < as_of)
    pending = Device.pending_until.is_null(False)
    return Case(
        None,
        [
            (pending & (ended | (Device.pending_until <= as_of)), "enrolment expired"),
            (ended, "deactivated"),
            (pending | confirmed_later, "awaiting confirmation"),
        ],
        "active",
    )


def device_states(as_of: datetime) -> pd.DataFrame:
    """Devices registered before `as_of`, by their state at `as_of` (`_state_at`): the same figures however
    long after the period the report is made."""
    state = _state_at(as_of)
    query = (
        Device.select(state.alias("state"), fn.COUNT(Device.device_id))
        .where(_existing(as_of))
        .group_by(SQL("state"))
        .order_by(SQL("state"))
    )
    return sql.frame(query, ["state", "devices"])


USAGE_BUCKETS = ((0, 0, "0"), (1, 9, "1-9"), (10, 49, "10-49"), (50, 99, "50-99"), (100, None, "100+"))


def _uses_at(as_of: datetime):
    """A device's successful verifications up to `as_of`: its count now less those the audit trail records
    from `as_of` on (so a trail pruned before the period does not lower it)."""
    later = AuditLog.alias("used_later")
    since = later.select(fn.COUNT(later.id)).where(
        _rows_of_device(later, as_of, after=True) & (later.action == VERIFY) & later.success
    )
    return Device.usage_count - since


def usage_distribution(as_of: datetime) -> pd.DataFrame:
    """Devices registered before `as_of` by how many successful verifications they had had by then, in the
    `USAGE_BUCKETS` (an empty bucket as 0): whether the devices registered are used at all."""
    each = Device.select(_uses_at(as_of).alias("uses")).where(_existing(as_of)).alias("each")
    uses = each.c.uses
    bucket = Case(
        None,
        [
            ((uses >= lo) & (uses <= hi), label) if hi is not None else (uses >= lo, label)
            for lo, hi, label in USAGE_BUCKETS
        ],
    )
    counts = dict(each.select_from(bucket, fn.COUNT(SQL("*"))).group_by(bucket).tuples())
    return pd.DataFrame(
        [(label, counts.get(label, 0)) for *_, label in USAGE_BUCKETS], columns=["verifications", "devices"]
    )


USED = (VERIFY, Action.DEVICE_CONFIRMED, Action.DEVICE_RESYNCED)  # the accepted codes that set `last_used`


def _last_used_at(as_of: datetime):
    """When a device last accepted a code before `as_of`: its `last_used` if that is before `as_of`, else the
    latest accepted code the audit trail records before `as_of` (NULL: none)."""
    earlier = AuditLog.alias("used_before")
    latest = earlier.select(fn.MAX(earlier.timestamp)).where(
        _rows_of_device(earlier, as_of) & earlier.action.in_(USED) & earlier.success
    )
    return Case(None, [(Device.last_used < as_of, Device.last_used)], latest)


def _stale(as_of: datetime, days: int):
    """Devices active at `as_of` not used in the `days` days before it (never used counts as stale once that
    old)."""
    cutoff = as_of - timedelta(days=days)
    last_used = _last_used_at(as_of)
    unused = last_used.is_null() | (last_used < cutoff)
    return _existing(cutoff) & (_state_at(as_of) == "active") & unused


def stale_device_count(as_of: datetime, days: int = 14) -> int:
    """How many devices are stale (`_stale`): the total beside the capped list of `stale_devices`."""
    return Device.select(fn.COUNT(Device.device_id)).where(_stale(as_of, days)).scalar()


def stale_devices(as_of: datetime, days: int = 14, limit: int = 50) -> pd.DataFrame:
    """The `limit` stale devices (`_stale`) unused longest, with what they were at `as_of`."""
    last_used = _last_used_at(as_of)
    query = (
        Device.select(Device.device_id, Device.user_id, Device.created_at, last_used, _uses_at(as_of))
        .where(_stale(as_of, days))
        .order_by(last_used.asc(nulls="first"), Device.device_id)
        .limit(limit)
    )
    frame = sql.frame(query, ["device_id", "user_id", "created_at", "last_used", "verifications"])
    return sql.stringify_times(frame, ["created_at", "last_used"])


# The accepted audit rows that set a device's clock offset, and where each records the offset it set.
DRIFT_SETTERS = (
    VERIFY,
    Action.DEVICE_CONFIRMED,
    Action.DEVICE_RESYNCED,
    Action.DRIFT_RESET,
    Action.DEVICE_UNLOCKED,
    Action.DEVICE_REGISTERED,
)


def _drift_at(as_of: datetime):
    """A device's clock offset at `as_of`: the one set by its latest audit row before `as_of` that sets it (an
    accepted code's `drift`, a resync's `offset`, 0 after a reset, an unlock or the registration); the device's
    offset now when the trail holds no such row (pruned)."""
    latest = AuditLog.alias("drift_set")
    last_id = latest.select(fn.MAX(latest.id)).where(
        _rows_of_device(latest, as_of) & latest.action.in_(DRIFT_SETTERS) & latest.success
    )
    setter = AuditLog.alias("setter")
    row = setter.select(
        Case(
            None,
            [
                (
                    setter.action.in_([VERIFY, Action.DEVICE_CONFIRMED]),
                    sql.json_field(setter.additional_data, "drift", "BIGINT"),
                ),
                (setter.action == Action.DEVICE_RESYNCED, sql.json_field(setter.additional_data, "offset", "BIGINT")),
            ],
            0,
        )
    ).where(setter.id == last_id)
    return fn.COALESCE(row, Device.drift)


def drift_distribution(as_of: datetime) -> pd.DataFrame:
    """The clock offsets (in time steps) the service had learned by `as_of` for the devices registered
    before it (`_drift_at`)."""
    each = Device.select(_drift_at(as_of).alias("drift")).where(_existing(as_of)).alias("each")
    query = each.select_from(each.c.drift, fn.COUNT(SQL("*"))).group_by(each.c.drift).order_by(each.c.drift)
    return sql.frame(query, ["drift_steps", "devices"])


def parameter_mix(as_of: datetime) -> pd.DataFrame:
    """Devices registered before `as_of` by algorithm, digits and time step, the most common first: the code
    settings in use (a device's settings never change after its registration)."""
    query = (
        Device.select(Device.algorithm, Device.digits, Device.interval, fn.COUNT(Device.device_id).alias("n"))
        .where(_existing(as_of))
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
