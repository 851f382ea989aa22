"""The user report's figures (notebook 06): one user's devices and recovery codes as the service holds them
now, and what their audit records of the period say. Their raw records are in `events`.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from peewee import Case, fn

from ..db.models import AuditLog
from . import sql


def user_devices(user_id: str, as_of: datetime) -> pd.DataFrame:
    """A user's devices as the service holds them now (state as `queries.describe` tells it), oldest first."""
    from ..service.queries import user_devices as described

    devices = described(sql.TENANT.get(), user_id, as_of)["devices"]
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

    codes = described(sql.TENANT.get(), user_id, as_of)["recovery_codes"]
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
        .where(sql.in_period(start, end) & sql.of_user(user_id))
        .group_by(AuditLog.action)
        .order_by(AuditLog.action)
    )
    frame = sql.frame(query, ["action", "records", "done", "first", "last"])
    frame.insert(3, "refused", frame["records"] - frame["done"])
    return sql.stringify_times(frame, ["first", "last"])


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
        .where(sql.in_period(start, end) & sql.of_user(user_id))
        .order_by(AuditLog.id)
    )
    frame = sql.frame(query, ["time", "action", "success", "reason", "device", "client", "address", "user agent"])
    frame.insert(2, "outcome", frame.pop("success").map({True: "done", False: "refused"}))
    for column in ("reason", "device", "client", "address", "user agent"):
        frame[column] = frame[column].fillna("")
    return sql.stringify_times(frame, ["time"])
