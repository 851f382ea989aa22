"""The OpenAPI 3.0 description of the API, served at /openapi.json.

Written by hand next to the routes (not generated from them) so that it states the contract;
tests check that every route is described, every described path is routed, and every
response the test suite sees validates against it.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..audit.rows import AUDIT_COLUMNS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _s(fmt: str | None = None, nullable: bool = False, **kw: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **kw}
    if fmt:
        schema["format"] = fmt
    if nullable:
        schema["nullable"] = True
    return schema


INT = {"type": "integer"}
BOOL = {"type": "boolean"}
TIME = _s("date-time")
DATE = _s("date")
TIME_OR_NULL = _s("date-time", nullable=True)
DEVICE_ID = _s(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")
OTP = {
    "oneOf": [_s(pattern="^[0-9]{6,8}$"), {"type": "integer", "minimum": 0, "maximum": 99999999}],
    "description": "exactly `digits` ASCII digits, or an integer (zero-padded)",
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj(
        ["success", "message", "data", "error"],
        success={"type": "boolean", "enum": [False]},
        message=_s(),
        data={"type": "object"},
        error={
            **_obj(
                ["code", "request_id"],
                code=_s(),
                request_id=_s(),
                field=_s(),
                retry_after=INT,
                locked_until=_s("date-time"),
            ),
            "additionalProperties": True,
        },
    ),
    "Health": _obj(
        ["success", "message", "data"],
        success=BOOL,
        message=_s(),
        data=_obj(
            ["status", "database", "version", "uptime_seconds"],
            status=_s(enum=["ok", "degraded", "draining"]),
            database=_s(enum=["ok", "unreachable"]),
            version=_s(),
            uptime_seconds={"type": "number"},
        ),
    ),
    "RegisterRequest": _obj(
        ["device_id", "user_id"],
        device_id=DEVICE_ID,
        user_id=_s(minLength=1, maxLength=254),
        digits={"type": "integer", "minimum": 6, "maximum": 8},
        interval={"type": "integer", "minimum": 15, "maximum": 300},
        algorithm=_s(enum=["SHA1", "SHA256", "SHA512"]),
        issuer=_s(maxLength=64),
        confirm={
            **BOOL,
            "description": "keep the device pending until its first code (always: ENROLLMENT_CONFIRMATION=required)",
        },
        qr={**_s(enum=["svg", "png"]), "description": "also return the otpauth URI's QR code as a data: URI"},
    ),
    "Registration": _obj(
        [
            "device_id",
            "user_id",
            "derived_key",
            "secret_base32",
            "otpauth_uri",
            "digits",
            "interval",
            "algorithm",
            "issuer",
            "key_version",
            "created_at",
            "status",
            "confirm_by",
        ],
        device_id=DEVICE_ID,
        user_id=_s(),
        status=_s(enum=["pending", "active"]),
        confirm_by={**TIME_OR_NULL, "description": "a pending device expires unless confirmed by then"},
        qr=_s(description="present when asked for: data:image/svg+xml or data:image/png URI of the otpauth URI"),
        derived_key=_s("byte", description="the key, standard base64; shown once"),
        secret_base32=_s(description="the key, RFC 4648 base32 without padding"),
        otpauth_uri=_s(),
        digits=INT,
        interval=INT,
        algorithm=_s(),
        issuer=_s(nullable=True),
        key_version=INT,
        created_at=TIME,
    ),
    "VerifyRequest": _obj(["device_id", "otp"], device_id=DEVICE_ID, otp=OTP),
    "Verification": _obj(
        ["device_id", "valid"],
        device_id=DEVICE_ID,
        valid=BOOL,
        reason=_s(enum=["INVALID_CODE", "REPLAYED"]),
        locked_until={**TIME_OR_NULL, "description": "present when this failure locked the device: until when"},
        hard_locked={**BOOL, "description": "present (true) when this failure locked the device until an unlock"},
    ),
    "ConfirmRequest": _obj(["otp"], otp=OTP),
    "Confirmation": _obj(
        ["device_id", "valid", "status"],
        device_id=DEVICE_ID,
        valid=BOOL,
        status=_s(enum=["pending", "active"]),
        reason=_s(enum=["INVALID_CODE", "REPLAYED"]),
        locked_until=TIME_OR_NULL,
        hard_locked=BOOL,
    ),
    "ResyncRequest": _obj(["otp1", "otp2"], otp1=OTP, otp2={**OTP, "description": "the code shown right after otp1"}),
    "Resync": _obj(
        ["device_id", "resynced"],
        device_id=DEVICE_ID,
        resynced=BOOL,
        drift={**INT, "description": "the device's clock offset now, in steps"},
        reason=_s(enum=["INVALID_CODE", "REPLAYED"]),
        locked_until=TIME_OR_NULL,
        hard_locked=BOOL,
    ),
    "DriftReset": _obj(["device_id", "drift", "previous_drift"], device_id=DEVICE_ID, drift=INT, previous_drift=INT),
    "RecoveryCodes": _obj(
        ["user_id", "codes", "created_at"],
        user_id=_s(),
        codes={"type": "array", "items": _s(pattern="^[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}$")},
        created_at=TIME,
    ),
    "RecoveryCodeRequest": _obj(["code"], code=_s(description="any case; hyphens and spaces are ignored")),
    "RecoveryCodeCheck": _obj(
        ["user_id", "valid"],
        user_id=_s(),
        valid=BOOL,
        remaining=INT,
        reason=_s(enum=["INVALID_CODE", "REPLAYED"]),
        locked_until=TIME_OR_NULL,
        hard_locked=BOOL,
    ),
    "RecoveryCodesState": {
        **_obj(
            ["remaining", "total", "created_at", "last_used", "failed_attempts", "locked_until", "hard_locked"],
            remaining=INT,
            total=INT,
            created_at=TIME,
            last_used=TIME_OR_NULL,
            failed_attempts=INT,
            locked_until=TIME_OR_NULL,
            hard_locked=BOOL,
        ),
        "nullable": True,
    },
    "CodeLookupRequest": _obj(
        ["otp", "from", "to"],
        otp=OTP,
        **{"from": TIME, "to": {**TIME, "description": "at most 7 days after from"}},
    ),
    "CodeLookup": _obj(
        ["device_id", "from", "to", "searched_to", "matches"],
        device_id=DEVICE_ID,
        searched_to={
            **TIME,
            "description": "steps the device could still accept are never searched: the search ends here",
        },
        matches={
            "type": "array",
            "items": _obj(["step", "valid_from", "valid_to"], step=INT, valid_from=TIME, valid_to=TIME),
        },
        **{"from": TIME, "to": TIME},
    ),
    "Erasure": _obj(
        ["user_id", "subject", "devices", "recovery_codes", "audit_rows", "user_reports"],
        user_id=_s(),
        subject=_s(description="the user's pseudonym, by which the erasure is audited"),
        devices=INT,
        recovery_codes=INT,
        audit_rows={**INT, "description": "audit rows whose personal data was removed"},
        user_reports={**INT, "description": "stored user reports about the user, deleted"},
    ),
    "AuditKeys": _obj(
        ["keys"],
        keys={
            "type": "array",
            "items": _obj(
                ["key_id", "public_key", "current"],
                key_id=_s(),
                public_key=_s(description="Ed25519 public key, 32 bytes, base64"),
                current=BOOL,
            ),
        },
    ),
    "Deactivation": _obj(
        ["device_id", "is_active", "deactivated_at"],
        device_id=DEVICE_ID,
        is_active={"type": "boolean", "enum": [False]},
        deactivated_at=TIME,
    ),
    "Unlock": _obj(
        ["device_id", "failed_attempts", "locked_until"],
        device_id=DEVICE_ID,
        failed_attempts=INT,
        locked_until=_s(nullable=True),
    ),
    "Device": _obj(
        [
            "device_id",
            "user_id",
            "is_active",
            "created_at",
            "last_used",
            "usage_count",
            "deactivated_at",
            "digits",
            "interval",
            "algorithm",
            "issuer",
            "key_version",
            "failed_attempts",
            "locked_until",
        ],
        device_id=DEVICE_ID,
        user_id=_s(),
        is_active=BOOL,
        created_at=TIME,
        last_used=TIME_OR_NULL,
        usage_count=INT,
        deactivated_at=TIME_OR_NULL,
        digits=INT,
        interval=INT,
        algorithm=_s(),
        issuer=_s(nullable=True),
        key_version=INT,
        failed_attempts=INT,
        locked_until=TIME_OR_NULL,
        hard_locked=BOOL,
        status=_s(enum=["pending", "active", "deactivated"]),
        confirm_by=TIME_OR_NULL,
        enrollment_expired={**BOOL, "description": "deactivated because its enrolment was not confirmed in time"},
        locked=BOOL,
        drift={**INT, "description": "the device's remembered clock offset, in steps"},
    ),
    "UserDevices": _obj(
        ["user_id", "devices", "recovery_codes"],
        user_id=_s(),
        devices={"type": "array", "items": _ref("Device")},
        recovery_codes=_ref("RecoveryCodesState"),
    ),
    "AuditEntry": _obj(
        ["id", *AUDIT_COLUMNS],
        id=INT,
        timestamp=TIME,
        action=_s(),
        success=BOOL,
        reason=_s(nullable=True),
        device_id=_s(nullable=True),
        user_id=_s(nullable=True),
        ip_address=_s(nullable=True),
        user_agent=_s(nullable=True),
        request_id=_s(nullable=True),
        additional_data={"type": "object", "nullable": True},
        actor=_s(nullable=True, description="the API client that asked (null: the service itself)"),
    ),
    "AuditPage": _obj(
        ["user_id", "entries", "next_before"],
        user_id=_s(),
        entries={"type": "array", "items": _ref("AuditEntry")},
        next_before={"type": "integer", "nullable": True},
    ),
    "Activity": _obj(
        ["registrations", "verifications_succeeded", "verifications_failed"],
        registrations=INT,
        verifications_succeeded=INT,
        verifications_failed=INT,
    ),
    "Stats": _obj(
        ["devices", "by_key_version", "last_24h", "last_7d", "generated_at"],
        devices=_obj(["total", "active", "inactive"], total=INT, active=INT, inactive=INT),
        by_key_version={"type": "object", "additionalProperties": _obj(["active", "total"], active=INT, total=INT)},
        last_24h=_ref("Activity"),
        last_7d=_ref("Activity"),
        generated_at=TIME,
    ),
    "ReportList": _obj(
        ["reports", "next_before"],
        next_before={"type": "integer", "nullable": True},
        reports={
            "type": "array",
            "items": _obj(
                [
                    "id",
                    "kind",
                    "user_id",
                    "period_start",
                    "period_end",
                    "created_at",
                    "html_url",
                    "pdf_url",
                    "data_url",
                ],
                id=INT,
                kind=_s(enum=["audit", "usage", "user"]),
                user_id=_s(nullable=True),  # the user of a user report
                period_start=DATE,  # the first day
                period_end=DATE,  # the last day, included
                created_at=TIME,
                html_url=_s(),
                pdf_url=_s(nullable=True),  # null: no PDF (WeasyPrint could not run where it was made)
                data_url=_s(),
            ),
        },
    ),
    "DebugCode": _obj(["device_id", "otp"], device_id=DEVICE_ID, otp=_s(pattern="^[0-9]{6,8}$")),
}

ERRORS = {
    400: "Invalid input (`VALIDATION_ERROR` with `error.field`, or `MALFORMED_JSON`)",
    401: "Missing or wrong API key (`UNAUTHORIZED`)",
    403: "The key's client lacks the operation's scope (`INSUFFICIENT_SCOPE`, with `error.scope`)",
    404: "No such resource (`NOT_FOUND`, `DEVICE_NOT_FOUND`)",
    405: "Method not allowed (`METHOD_NOT_ALLOWED`)",
    409: "Conflict (`DEVICE_EXISTS`, `DEVICE_INACTIVE`, `DEVICE_PENDING`, `ALREADY_CONFIRMED`)",
    410: "The enrolment was not confirmed in time (`ENROLLMENT_EXPIRED`): register the device again",
    413: "Body over 16 KiB (`PAYLOAD_TOO_LARGE`)",
    415: "Body is not application/json (`UNSUPPORTED_MEDIA_TYPE`)",
    431: "Request headers over 16 KiB (`HEADERS_TOO_LARGE`)",
    429: "Too many requests (`RATE_LIMITED`), device or recovery codes locked (`DEVICE_LOCKED`, "
    "`RECOVERY_CODES_LOCKED`); see `Retry-After`",
    500: "Unexpected error (`INTERNAL_ERROR`): nothing internal is disclosed",
    503: "Dependency unavailable (`DATABASE_UNAVAILABLE`, `KEY_UNAVAILABLE`, `RATE_LIMITER_UNAVAILABLE`)",
}
API_ERRORS = (400, 401, 403, 405, 429, 431, 500, 503)


def _envelope(data_schema: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        ["success", "message", "data"], success={"type": "boolean", "enum": [True]}, message=_s(), data=data_schema
    )


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: int,
    schema: dict[str, Any] | None,
    errors: tuple[int, ...] = API_ERRORS,
    *,
    body: str | None = None,
    params: list[dict] | None = None,
    tag: str = "devices",
    auth: bool = True,
    ok_content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if ok_content is not None:
        responses[str(ok)] = {"description": "OK", "content": ok_content}
    else:
        responses[str(ok)] = _json(_envelope(schema or {"type": "object"}), "OK")
    for code in sorted(set(errors) | ({413, 415} if body else set())):
        responses[str(code)] = _json(_ref("Error"), ERRORS[code])
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if not auth:
        op["security"] = []
    return op


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _mark_scopes(paths: dict[str, Any]) -> None:
    """Each operation names the client scope it needs, read from its handler (`permission`)."""
    from .app import API_ROUTES, DEBUG_ROUTES

    for template, handler in API_ROUTES + DEBUG_ROUTES:
        scope = getattr(handler, "permission", None)
        for operation in paths.get(template, {}).values() if scope else ():
            operation["x-required-scope"] = scope
            operation["summary"] += f" (scope: {scope})"


def build_spec(debug: bool = False) -> dict[str, Any]:
    device = [_path_param("device_id", DEVICE_ID)]
    user = [_path_param("user_id", _s(minLength=1, maxLength=254))]
    report = [_path_param("report_id", {"type": "integer"})]
    page = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size (default 50)"),
        _query("before", {"type": "integer", "minimum": 0}, "`next_before` of the previous page"),
    ]
    with_404 = (*API_ERRORS, 404)
    health = {"description": "Service and database status", "content": {"application/json": {"schema": _ref("Health")}}}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness and database check",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": health, "503": health, "431": _json(_ref("Error"), ERRORS[431])},
            },
            "head": {
                "summary": "Liveness and database check, no body",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": {"description": "healthy"}, "503": {"description": "unhealthy"}},
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This description",
                "tags": ["operations"],
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0 document", "content": {"application/json": {}}}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (Bearer METRICS_TOKEN, or an API key when none is set; rate limited)",
                "tags": ["operations"],
                "responses": {
                    "200": {"description": "text exposition format", "content": {"text/plain": {}}},
                    **{str(code): _json(_ref("Error"), ERRORS[code]) for code in (401, 403, 429, 431, 503)},
                },
            }
        },
        "/api/v1/devices/register": {
            "post": _op(
                "Register a device; the response holds its key, shown this once",
                201,
                _ref("Registration"),
                (*API_ERRORS, 409),
                body="RegisterRequest",
            )
        },
        "/api/v1/otp/verify": {
            "post": _op(
                "Verify a code (replay-safe, throttled)",
                200,
                _ref("Verification"),
                (*with_404, 409),
                body="VerifyRequest",
                tag="verification",
            )
        },
        "/api/v1/devices/{device_id}/deactivate": {
            "post": _op("Deactivate a device (idempotent)", 200, _ref("Deactivation"), with_404, params=device)
        },
        "/api/v1/devices/{device_id}/unlock": {
            "post": _op("Lift a device's lock and reset its clock offset", 200, _ref("Unlock"), with_404, params=device)
        },
        "/api/v1/devices/{device_id}/confirm": {
            "post": _op(
                "Confirm a pending enrolment with its first code",
                200,
                _ref("Confirmation"),
                (*with_404, 409, 410),
                params=device,
                body="ConfirmRequest",
            )
        },
        "/api/v1/devices/{device_id}/resync": {
            "post": _op(
                "Resynchronise a device's clock with two consecutive codes",
                200,
                _ref("Resync"),
                (*with_404, 409, 410),
                params=device,
                body="ResyncRequest",
                tag="verification",
            )
        },
        "/api/v1/devices/{device_id}/drift/reset": {
            "post": _op("Forget a device's clock offset", 200, _ref("DriftReset"), with_404, params=device)
        },
        "/api/v1/devices/{device_id}/code-lookup": {
            "post": _op(
                "When was this code valid for this device? (investigations; audited)",
                200,
                _ref("CodeLookup"),
                with_404,
                params=device,
                body="CodeLookupRequest",
            )
        },
        "/api/v1/devices/{device_id}": {
            "get": _op("A device's state (never its key)", 200, _ref("Device"), with_404, params=device)
        },
        "/api/v1/users/{user_id}/devices": {
            "get": _op("A user's devices", 200, _ref("UserDevices"), params=user, tag="users")
        },
        "/api/v1/users/{user_id}/audit": {
            "get": _op("A user's audit trail, newest first", 200, _ref("AuditPage"), params=user + page, tag="users")
        },
        "/api/v1/users/{user_id}/recovery-codes": {
            "post": _op(
                "Issue 10 one-time recovery codes, shown this once (replaces any earlier set)",
                201,
                _ref("RecoveryCodes"),
                params=user,
                tag="users",
            )
        },
        "/api/v1/users/{user_id}/recovery-codes/verify": {
            "post": _op(
                "Check a recovery code (valid once; wrong ones are counted)",
                200,
                _ref("RecoveryCodeCheck"),
                (*API_ERRORS, 404),
                params=user,
                body="RecoveryCodeRequest",
                tag="verification",
            )
        },
        "/api/v1/users/{user_id}/erase": {
            "post": _op(
                "Erase a user (GDPR art. 17): devices, recovery codes, personal data in the audit trail",
                200,
                _ref("Erasure"),
                params=user,
                tag="users",
            )
        },
        "/api/v1/audit/keys": {
            "get": _op(
                "The public keys that verify the audit trail's signed checkpoints",
                200,
                _ref("AuditKeys"),
                tag="reports",
            )
        },
        "/api/v1/stats": {"get": _op("Usage statistics", 200, _ref("Stats"), tag="reports")},
        "/api/v1/reports": {
            "get": _op("Stored reports, newest first", 200, _ref("ReportList"), params=page, tag="reports")
        },
        "/api/v1/reports/{report_id}": {
            "get": _op(
                "A stored report as a self-contained HTML page",
                200,
                None,
                with_404,
                params=report,
                tag="reports",
                ok_content={"text/html": {}},
            )
        },
        "/api/v1/reports/{report_id}/data": {
            "get": _op(
                "A stored report's tables (and raw audit events) as CSV files in a zip, with SHA256SUMS",
                200,
                None,
                with_404,
                params=report,
                tag="reports",
                ok_content={"application/zip": {}},
            )
        },
        "/api/v1/reports/{report_id}/pdf": {
            "get": _op(
                "A stored report as a PDF, for archiving (404 if it was made without one)",
                200,
                None,
                with_404,
                params=report,
                tag="reports",
                ok_content={"application/pdf": {}},
            )
        },
    }
    if debug:
        paths["/api/v1/debug/devices/{device_id}/otp"] = {
            "get": _op(
                "The device's current code (DEBUG only)", 200, _ref("DebugCode"), with_404, params=device, tag="debug"
            )
        }
    _mark_scopes(paths)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "otp-service",
            "version": __version__,
            "description": "TOTP (RFC 6238) device registration and verification. Every response is "
            "`{success, message, data}`; errors add `error.code`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API client's key (`python -m otp_service clients create`) or one in API_KEY "
                    "(every scope); each operation's `x-required-scope` is the scope it needs",
                }
            },
            "schemas": SCHEMAS,
        },
        "paths": paths,
    }
