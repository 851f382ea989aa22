"""The read side: device info, a user's devices and audit trail, statistics, stored reports.

Plain functions over the models; the caller (`service.OtpService`) runs each in a unit of work. Nothing
here changes state or decides anything, and nothing returned can help derive a key.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from peewee import fn

from ..core import errors, recovery
from ..core.actions import Action
from ..core.period import last_day
from ..core.recovery import RecoveryState
from ..core.transitions import STATE_COLUMNS, DeviceState, isoformat, to_datetime
from ..db.models import AuditLog, Device, RecoveryCodes, Report, Tenant, UserSpelling


def device(key: tuple[int, str]) -> Device:
    """A device of a tenant; another tenant's device of that id is no more found than one that does not exist."""
    tenant_id, device_id = key
    found = Device.get_or_none((Device.tenant_id == tenant_id) & (Device.device_id == device_id))
    if found is None:
        raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
    return found


def device_info(key: tuple[int, str], at: datetime) -> dict[str, Any]:
    return describe(device(key), at)


def user_devices(tenant_id: int, user_id: str, at: datetime) -> dict[str, Any]:
    mine = (Device.tenant_id == tenant_id) & (Device.user_id == user_id)
    devices = Device.select().where(mine).order_by(Device.created_at, Device.device_id)
    codes = (
        RecoveryCodes.select()
        .where((RecoveryCodes.tenant_id == tenant_id) & (RecoveryCodes.user_id == user_id))
        .tuples()
        .first()
    )
    return {
        "user_id": user_id,
        "devices": [describe(d, at) for d in devices],
        "recovery_codes": recovery.describe(None if codes is None else RecoveryState.from_row(codes)),
    }


def user_audit(tenant_id: int, user_id: str, limit: int = 50, before: int | None = None) -> dict[str, Any]:
    """Newest first, keyset-paginated on the row id so deep pages cost the same as the first."""
    spellings = UserSpelling.of(tenant_id, user_id)  # rows from before ids were normalised keep theirs
    query = AuditLog.select().where((AuditLog.tenant_id == tenant_id) & AuditLog.user_id.in_(spellings))
    if before is not None:
        query = query.where(AuditLog.id < before)
    rows = list(query.order_by(AuditLog.id.desc()).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return {"user_id": user_id, "entries": [audit_entry(r) for r in rows], "next_before": rows[-1].id if more else None}


def stats(tenant_id: int, now: float) -> dict[str, Any]:
    """The tenant's devices and recent activity."""
    windows = {"last_24h": to_datetime(now - 86400), "last_7d": to_datetime(now - 7 * 86400)}
    by_state = dict(
        Device.select(Device.is_active, fn.COUNT(Device.device_id))
        .where(Device.tenant_id == tenant_id)
        .group_by(Device.is_active)
        .tuples()
    )
    by_version = {
        str(v): {"active": a or 0, "total": t}
        for v, t, a in Device.select(
            Device.key_version, fn.COUNT(Device.device_id), fn.SUM(Device.is_active.cast("integer"))
        )
        .where(Device.tenant_id == tenant_id)
        .group_by(Device.key_version)
        .tuples()
    }
    activity = {name: _activity(tenant_id, since) for name, since in windows.items()}
    active, inactive = by_state.get(True, 0), by_state.get(False, 0)
    return {
        "devices": {"total": active + inactive, "active": active, "inactive": inactive},
        "by_key_version": by_version,
        **activity,
        "generated_at": isoformat(to_datetime(now)),
    }


def _activity(tenant_id: int, since: datetime) -> dict[str, int]:
    counted = AuditLog.action.in_([Action.DEVICE_REGISTERED, Action.OTP_VERIFICATION])
    counts = {
        (action, bool(ok)): n
        for action, ok, n in AuditLog.select(AuditLog.action, AuditLog.success, fn.COUNT(AuditLog.id))
        .where((AuditLog.timestamp >= since) & counted & (AuditLog.tenant_id == tenant_id))
        .group_by(AuditLog.action, AuditLog.success)
        .tuples()
    }
    return {
        "registrations": counts.get((Action.DEVICE_REGISTERED, True), 0),
        "verifications_succeeded": counts.get((Action.OTP_VERIFICATION, True), 0),
        "verifications_failed": counts.get((Action.OTP_VERIFICATION, False), 0),
    }


def list_reports(tenant_id: int, limit: int = 50, before: int | None = None) -> dict[str, Any]:
    """The tenant's reports, newest first. Periods as their first and last day, both included (the days a person
    would write, and the days in the files' names); stored half-open, [first day 00:00, day after the last 00:00)."""
    query = Report.select(
        Report.id,
        Report.kind,
        Report.subject,
        Report.period_start,
        Report.period_end,
        Report.created_at,
        Report.pdf.is_null(False).alias("has_pdf"),
        Report.manifest.is_null(False).alias("has_manifest"),
        Report.withdrawn_at,
    ).where(Report.tenant_id == tenant_id)
    if before is not None:
        query = query.where(Report.id < before)
    rows = list(query.order_by(Report.id.desc()).limit(limit + 1))
    more = len(rows) > limit
    entries = [
        {
            "id": r.id,
            "kind": r.kind,
            "user_id": r.subject,
            "period_start": f"{r.period_start:%Y-%m-%d}",
            "period_end": f"{last_day(r.period_end):%Y-%m-%d}",
            "created_at": isoformat(r.created_at),
            "html_url": f"/api/v1/reports/{r.id}",
            "pdf_url": f"/api/v1/reports/{r.id}/pdf" if r.has_pdf else None,
            "data_url": f"/api/v1/reports/{r.id}/data",
            "manifest_url": f"/api/v1/reports/{r.id}/manifest" if r.has_manifest else None,
            "signature_url": f"/api/v1/reports/{r.id}/signature" if r.has_manifest else None,
            "withdrawn": r.withdrawn_at is not None,  # by an erasure, until it is made again
        }
        for r in rows[:limit]
    ]
    return {"reports": entries, "next_before": entries[-1]["id"] if more else None}


REPORT_PARTS = {
    "html": Report.html,
    "data": Report.data_zip,
    "pdf": Report.pdf,
    "manifest": Report.manifest,
    "signature": Report.manifest_signature,
}
MISSING_PART = {
    "pdf": "has no PDF: WeasyPrint could not run where it was made",
    "manifest": "has no signed manifest: it was made without the service's audit key",
    "signature": "has no signed manifest: it was made without the service's audit key",
}


def report_content(tenant_id: int, report_id: int, part: str, hold: bool = False) -> tuple[Report, bytes | str]:
    """One of the tenant's stored reports: its HTML, CSV zip or PDF (only the requested column is read). With
    `hold` (PostgreSQL) the row is held (FOR SHARE) until the caller's transaction ends, so the download's audit row,
    written in it, is committed before an erasure of the report's subject can delete the report — and so
    before the erasure empties that user's rows (`retention.erase` deletes their reports first)."""
    column = REPORT_PARTS[part]
    fields = (Report.id, Report.kind, Report.subject, Report.period_start, Report.period_end, Report.withdrawn_at)
    query = (
        Report.select(*fields, column, Tenant.name.alias("tenant_name"))  # the tenant names the files, as on disk
        .join(Tenant, on=Report.tenant_id == Tenant.id)
        .where((Report.id == report_id) & (Report.tenant_id == tenant_id))
        .objects()
    )
    if hold:
        query = query.for_update("FOR SHARE", of=Report)  # the report alone: a tenant stays free to change
    row = query.first()
    if row is None:
        raise errors.NotFound(f"No report with id {report_id}.")
    if row.withdrawn_at is not None:
        raise errors.ReportWithdrawn(
            f"Report {report_id} was withdrawn by an erasure of personal data it held; it is being made again."
        )
    content = getattr(row, column.name)
    if content is None:
        raise errors.NotFound(f"Report {report_id} {MISSING_PART[part]}.")
    if part == "signature":
        return row, base64.b64decode(content)  # raw, as `openssl pkeyutl -sigfile` reads it
    return row, content if part in ("html", "manifest") else bytes(content)


def describe(device: Device, at: datetime) -> dict[str, Any]:
    """Everything about a device except anything that could help derive its key."""
    state = DeviceState(*(getattr(device, c) for c in STATE_COLUMNS))  # its rules decide what it is now
    expired = state.enrollment_expired(at)
    return {
        "device_id": device.device_id,
        "user_id": device.user_id,
        "status": state.status(at),
        "is_active": device.is_active and not expired,
        "confirm_by": None if expired else isoformat(device.pending_until),
        "enrollment_expired": expired,
        "locked": state.locked(at),
        "drift": device.drift,
        "created_at": isoformat(device.created_at),
        "last_used": isoformat(device.last_used),
        "usage_count": device.usage_count,
        "deactivated_at": isoformat(device.deactivated_at),
        "digits": device.digits,
        "interval": device.interval,
        "algorithm": device.algorithm,
        "issuer": device.issuer,
        "key_version": device.key_version,
        "failed_attempts": device.failed_attempts,
        "locked_until": None if state.hard_locked else isoformat(device.locked_until),
        "hard_locked": state.hard_locked,
    }


def audit_entry(row: AuditLog) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": isoformat(row.timestamp),
        "action": row.action,
        "success": row.success,
        "reason": row.reason,
        "device_id": row.device_id,
        "user_id": row.user_id,
        "ip_address": row.ip_address,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "additional_data": json.loads(row.additional_data) if row.additional_data else None,
        "actor": row.actor,
    }
