"""What the audit trail records (`Action`) and what an API client may be allowed to do (`SCOPES`): names that
clients, reports and operators branch on, stored as text — so never rename one."""

from __future__ import annotations

from enum import StrEnum

# verify: check codes; enroll: register devices, issue recovery codes; manage: deactivate, unlock, erase, look up
# codes; read: device info, a user's devices and audit trail, statistics; reports: the reports API; metrics:
# /metrics — the scopes the routes need. admin: all of those, in the client's own tenant. operator: act in any
# tenant, named by the request's X-Tenant header (never implied by admin: a tenant's admin stays in it).
ROUTE_SCOPES = ("verify", "enroll", "manage", "read", "reports", "metrics")
SCOPES = (*ROUTE_SCOPES, "operator", "admin")
# The administrative scopes: their routes act on a person's decision (deactivate, unlock, erase, look up a code)
# or hand out personal data (reports), so they take an X-Actor header naming that person or ticket, recorded
# in every audit row the request writes beside the client. Verification, enrolment and reads do not.
ACTOR_SCOPES = ("manage", "reports")


class Action(StrEnum):
    """What an audit row records. Stored as text; clients and reports branch on these, so never rename one."""

    DEVICE_REGISTERED = "DEVICE_REGISTERED"
    OTP_VERIFICATION = "OTP_VERIFICATION"
    DEVICE_DEACTIVATED = "DEVICE_DEACTIVATED"
    DEVICE_LOCKED = "DEVICE_LOCKED"
    DEVICE_UNLOCKED = "DEVICE_UNLOCKED"
    AUTH_FAILED = "AUTH_FAILED"
    ACCESS_DENIED = "ACCESS_DENIED"  # a known client without the scope the operation needs
    RATE_LIMITED = "RATE_LIMITED"
    CLIENT_CREATED = "CLIENT_CREATED"
    CLIENT_ROTATED = "CLIENT_ROTATED"
    CLIENT_REVOKED = "CLIENT_REVOKED"
    DEVICE_CONFIRMED = "DEVICE_CONFIRMED"  # a pending enrolment's first code (refused: a failed attempt)
    ENROLLMENT_EXPIRED = "ENROLLMENT_EXPIRED"  # a pending enrolment not confirmed in time
    DEVICE_RESYNCED = "DEVICE_RESYNCED"  # two consecutive codes set the device's clock offset
    DRIFT_RESET = "DRIFT_RESET"
    RECOVERY_CODES_ISSUED = "RECOVERY_CODES_ISSUED"
    RECOVERY_CODE_VERIFICATION = "RECOVERY_CODE_VERIFICATION"
    RECOVERY_CODES_LOCKED = "RECOVERY_CODES_LOCKED"
    CODE_LOOKUP = "CODE_LOOKUP"  # an investigator asked when a code was valid
    USER_ERASED = "USER_ERASED"  # a user's devices, recovery codes and personal data removed (by pseudonym)
    AUDIT_PRUNED = "AUDIT_PRUNED"  # audit rows before a date exported and removed (retention)
    AUDIT_VERIFIED = "AUDIT_VERIFIED"  # a verification of the audit trail that found it broken
    TENANT_CHANGED = "TENANT_CHANGED"  # a tenant created, or its policy or rate limits set
    REPORT_GENERATED = "REPORT_GENERATED"  # a report made (report, scheduled-report, report regenerate)
    REPORTS_LISTED = "REPORTS_LISTED"  # the stored reports listed through the API (which ones were shown)
    REPORT_DOWNLOADED = "REPORT_DOWNLOADED"  # a stored report's file fetched through the API (HTML, zip, PDF)
    WEBHOOK_ENDPOINT_DISABLED = "WEBHOOK_ENDPOINT_DISABLED"  # reason GONE: its receiver answered 410 Gone
