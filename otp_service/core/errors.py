"""The errors the API can answer with: an HTTP status, a stable machine code and a message for people.

Domain functions raise these; the web layer turns them into the JSON envelope. Codes are
part of the API contract: clients branch on them, so never rename one.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def _error(name: str, status: int, code: str) -> type[ServiceError]:
    return type(name, (ServiceError,), {"status": status, "code": code})


ValidationError = _error("ValidationError", 400, "VALIDATION_ERROR")
MalformedJSON = _error("MalformedJSON", 400, "MALFORMED_JSON")
InvalidActor = _error("InvalidActor", 400, "INVALID_ACTOR")
Unauthorized = _error("Unauthorized", 401, "UNAUTHORIZED")
InsufficientScope = _error("InsufficientScope", 403, "INSUFFICIENT_SCOPE")
NotFound = _error("NotFound", 404, "NOT_FOUND")
DeviceNotFound = _error("DeviceNotFound", 404, "DEVICE_NOT_FOUND")
MethodNotAllowed = _error("MethodNotAllowed", 405, "METHOD_NOT_ALLOWED")
DeviceExists = _error("DeviceExists", 409, "DEVICE_EXISTS")
DeviceInactive = _error("DeviceInactive", 409, "DEVICE_INACTIVE")
DevicePending = _error("DevicePending", 409, "DEVICE_PENDING")
AlreadyConfirmed = _error("AlreadyConfirmed", 409, "ALREADY_CONFIRMED")
EnrollmentExpired = _error("EnrollmentExpired", 410, "ENROLLMENT_EXPIRED")
ReportWithdrawn = _error("ReportWithdrawn", 410, "REPORT_WITHDRAWN")
NoRecoveryCodes = _error("NoRecoveryCodes", 404, "NO_RECOVERY_CODES")
RecoveryCodesLocked = _error("RecoveryCodesLocked", 429, "RECOVERY_CODES_LOCKED")
PayloadTooLarge = _error("PayloadTooLarge", 413, "PAYLOAD_TOO_LARGE")
HeadersTooLarge = _error("HeadersTooLarge", 431, "HEADERS_TOO_LARGE")
UnsupportedMediaType = _error("UnsupportedMediaType", 415, "UNSUPPORTED_MEDIA_TYPE")
DeviceLocked = _error("DeviceLocked", 429, "DEVICE_LOCKED")
RateLimited = _error("RateLimited", 429, "RATE_LIMITED")
DatabaseUnavailable = _error("DatabaseUnavailable", 503, "DATABASE_UNAVAILABLE")
KeyUnavailableError = _error("KeyUnavailableError", 503, "KEY_UNAVAILABLE")
AuditBroken = _error("AuditBroken", 409, "AUDIT_TRAIL_BROKEN")
InvalidWebhookUrl = _error("InvalidWebhookUrl", 400, "INVALID_WEBHOOK_URL")
InvalidEventType = _error("InvalidEventType", 400, "INVALID_EVENT_TYPE")
EndpointNotFound = _error("EndpointNotFound", 404, "WEBHOOK_ENDPOINT_NOT_FOUND")
DeliveryNotFound = _error("DeliveryNotFound", 404, "WEBHOOK_DELIVERY_NOT_FOUND")
TooManyEndpoints = _error("TooManyEndpoints", 409, "TOO_MANY_ENDPOINTS")
EndpointDisabled = _error("EndpointDisabled", 409, "WEBHOOK_ENDPOINT_DISABLED")
RateLimiterUnavailable = _error("RateLimiterUnavailable", 503, "RATE_LIMITER_UNAVAILABLE")
