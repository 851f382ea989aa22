"""The OpenAPI 3.0 schemas of every request and response body, and what each error status means: declarative
data, which `openapi` assembles with the route table. Bounds and patterns come from the validation that
enforces them (`core.validation`, `core.totp`, `core.recovery`), so the description cannot drift from it."""

from __future__ import annotations

from typing import Any

from ..audit.rows import AUDIT_COLUMNS
from ..core import recovery, totp, validation
from ..service import webhooks as hooks
from ..webhooks import addresses, catalogue
from .base import MAX_HEADERS, MAX_JSON_BODY


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
_CODE = f"^[0-9]{{{min(totp.DIGITS_RANGE)},{max(totp.DIGITS_RANGE)}}}$"
_GROUP = f"[{''.join(recovery.ALPHABET)}]{{4}}"
_RECOVERY_CODE = "^" + "-".join([_GROUP] * (recovery.CODE_LENGTH // 4)) + "$"


def _whole(allowed: range) -> dict[str, Any]:
    return {"type": "integer", "minimum": allowed.start, "maximum": allowed.stop - 1}


DEVICE_ID = _s(pattern=f"^{validation.DEVICE_ID.pattern}$")
USER_ID = _s(minLength=1, maxLength=validation.MAX_USER_ID)
REPORT_ID = {"type": "integer"}
ENDPOINT_ID = {"type": "integer", "minimum": 0}
PATH_PARAMETERS = {  # by template name
    "device_id": DEVICE_ID,
    "user_id": USER_ID,
    "report_id": REPORT_ID,
    "endpoint_id": ENDPOINT_ID,
    "delivery_id": {"type": "integer", "minimum": 0},
}
QUERY_PARAMETERS = {  # by name (`Operation.query`)
    "status": {
        "name": "status",
        "in": "query",
        "required": False,
        "schema": _s(enum=list(hooks.DELIVERY_STATUSES)),
        "description": "only deliveries in this state",
    },
}
EVENT_TYPE = _s(enum=list(catalogue.EVENT_TYPES))
_WEBHOOK_ENDPOINT = {
    "id": ENDPOINT_ID,
    "url": _s("uri", maxLength=addresses.MAX_URL),
    "description": _s(nullable=True),
    "event_types": {
        "type": "array",
        "items": EVENT_TYPE,
        "nullable": True,
        "description": "the event types it takes; null: every one",
    },
    "enabled": BOOL,
    "created_at": TIME,
    "disabled_at": TIME_OR_NULL,
    "disabled_reason": {
        **_s(enum=["DISABLED", "GONE"], nullable=True),
        "description": "DISABLED: through the API; GONE: the receiver answered 410 Gone",
    },
    "previous_secret_valid_until": {
        **TIME_OR_NULL,
        "description": "after a rotation: until when the previous secret signs too (each delivery carries both "
        "signatures)",
    },
}
_SECRET = _s(
    pattern="^whsec_[A-Za-z0-9+/]+={0,2}$",
    description="the signing secret (Standard Webhooks: `whsec_` and the key, base64); shown in this answer only",
)
_COUNTS = _obj(
    list(hooks.DELIVERY_STATUSES), **dict.fromkeys(hooks.DELIVERY_STATUSES, {"type": "integer", "minimum": 0})
)
OTP = {
    "oneOf": [_s(pattern=_CODE), {"type": "integer", "minimum": 0, "maximum": 10 ** max(totp.DIGITS_RANGE) - 1}],
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
        user_id=USER_ID,
        digits=_whole(totp.DIGITS_RANGE),
        interval=_whole(totp.INTERVAL_RANGE),
        algorithm=_s(enum=list(totp.ALGORITHMS)),
        issuer=_s(maxLength=validation.MAX_ISSUER),
        confirm={
            **BOOL,
            "description": "keep the device pending until its first code (always: ENROLLMENT_CONFIRMATION=required)",
        },
        qr={
            **_s(enum=list(validation.QR_FORMATS)),
            "description": "also return the otpauth URI's QR code as a data: URI",
        },
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
        codes={"type": "array", "items": _s(pattern=_RECOVERY_CODE)},
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
        **{"from": TIME, "to": {**TIME, "description": f"at most {validation.MAX_LOOKUP_RANGE.days} days after from"}},
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
        [
            "user_id",
            "subject",
            "devices",
            "recovery_codes",
            "audit_rows",
            "webhook_messages",
            "user_reports",
            "reports_withdrawn",
        ],
        user_id=_s(),
        subject=_s(description="the user's pseudonym, by which the erasure is audited"),
        devices=INT,
        recovery_codes=INT,
        audit_rows={**INT, "description": "audit rows whose personal data was removed"},
        webhook_messages={
            **INT,
            "description": "webhook messages (queued or delivered) that named the user, now naming the pseudonym only",
        },
        user_reports={**INT, "description": "stored user reports about the user, deleted"},
        reports_withdrawn={
            **INT,
            "description": "other stored reports that may name the user, withdrawn until `report regenerate`",
        },
        checkpoint={
            **INT,
            "nullable": True,
            "description": "the signed checkpoint sealing the erasure; null: the rows since the last checkpoint do "
            "not verify, so nothing was signed (the erasure is done, and audited)",
        },
    ),
    "AuditKeys": _obj(
        ["keys"],
        keys={
            "type": "array",
            "items": _obj(
                ["key_id", "public_key", "public_key_pem", "fingerprint", "current"],
                key_id=_s(),
                public_key=_s(description="Ed25519 public key, 32 bytes, base64"),
                public_key_pem=_s(description="the same key as PEM (SubjectPublicKeyInfo), for `openssl pkeyutl`"),
                fingerprint=_s(description="SHA-256 of the raw 32-byte key, hex: compare with the key published"),
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
        ["id", *(c for c in AUDIT_COLUMNS if c != "tenant_id")],  # a trail is read within its tenant
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
                manifest_url=_s(nullable=True),  # null: made without the service's audit key (no manifest)
                signature_url=_s(nullable=True),
                withdrawn={**BOOL, "description": "its content removed by an erasure, until it is made again"},
            ),
        },
    ),
    "DebugCode": _obj(["device_id", "otp"], device_id=DEVICE_ID, otp=_s(pattern=_CODE)),
    "WebhookEndpointRequest": _obj(
        ["url"],
        url=_s(
            "uri",
            maxLength=addresses.MAX_URL,
            description="https (http only outside production); no user name or password; its host's every address "
            "public (not loopback, private, link-local, CGNAT or metadata) unless WEBHOOK_ALLOW_PRIVATE",
        ),
        event_types={
            "type": "array",
            "items": EVENT_TYPE,
            "minItems": 1,
            "nullable": True,
            "description": "the event types to send (GET /api/v1/webhooks/event-types); left out or null: all",
        },
        description=_s(minLength=1, maxLength=hooks.MAX_DESCRIPTION, nullable=True),
    ),
    "WebhookEndpoint": _obj(list(_WEBHOOK_ENDPOINT), **_WEBHOOK_ENDPOINT),
    "WebhookEndpointWithSecret": _obj([*_WEBHOOK_ENDPOINT, "secret"], **_WEBHOOK_ENDPOINT, secret=_SECRET),
    "WebhookEndpointDetail": _obj(
        [*_WEBHOOK_ENDPOINT, "deliveries"],
        **_WEBHOOK_ENDPOINT,
        deliveries={**_COUNTS, "description": "the endpoint's deliveries, counted by status"},
    ),
    "WebhookEndpointDisabled": _obj(
        [*_WEBHOOK_ENDPOINT, "pending_cancelled"],
        **_WEBHOOK_ENDPOINT,
        pending_cancelled={**INT, "description": "pending deliveries cancelled now (0: it was disabled already)"},
    ),
    "WebhookEndpointList": _obj(["endpoints"], endpoints={"type": "array", "items": _ref("WebhookEndpoint")}),
    "WebhookEndpointDeleted": _obj(
        ["id", "deleted", "pending_cancelled", "messages_deleted"],
        id=ENDPOINT_ID,
        deleted={"type": "boolean", "enum": [True]},
        pending_cancelled={**INT, "description": "deliveries that were still pending, never to be sent"},
        messages_deleted={**INT, "description": "messages no other endpoint had a delivery of, deleted with it"},
    ),
    "WebhookRotateRequest": _obj(
        [],
        grace_seconds={
            **_whole(range(0, hooks.MAX_GRACE + 1)),
            "description": f"how long the previous secret keeps signing (default {hooks.DEFAULT_GRACE}: a day)",
        },
    ),
    "WebhookDeliveryPage": _obj(
        ["endpoint_id", "deliveries", "next_before"],
        endpoint_id=ENDPOINT_ID,
        next_before={"type": "integer", "nullable": True},
        deliveries={
            "type": "array",
            "items": _obj(
                [
                    "id",
                    "message_id",
                    "event_type",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "last_attempt_at",
                    "last_status",
                    "last_error",
                    "delivered_at",
                    "created_at",
                ],
                id=INT,
                message_id=_s(pattern="^msg_[0-9]+$", description="the webhook-id header it is sent with"),
                event_type=EVENT_TYPE,
                status=_s(enum=list(hooks.DELIVERY_STATUSES)),
                attempts=INT,
                next_attempt_at={**TIME_OR_NULL, "description": "when pending: due from then"},
                last_attempt_at=TIME_OR_NULL,
                last_status={**INT, "nullable": True, "description": "the receiver's HTTP status (null: no answer)"},
                last_error=_s(nullable=True),
                delivered_at=TIME_OR_NULL,
                created_at=TIME,
            ),
        },
    ),
    "WebhookReplay": _obj(
        ["endpoint_id", "delivery_id", "replay_of", "message_id", "event_type", "status", "next_attempt_at"],
        endpoint_id=ENDPOINT_ID,
        delivery_id={**INT, "description": "the new delivery"},
        replay_of={**INT, "description": "the delivery replayed"},
        message_id=_s(pattern="^msg_[0-9]+$", description="the same message: the same webhook-id"),
        event_type=EVENT_TYPE,
        status=_s(enum=["pending"]),
        next_attempt_at=TIME,
    ),
    "WebhookEventTypes": _obj(
        ["event_types"],
        event_types={
            "type": "array",
            "items": _obj(["type", "description"], type=EVENT_TYPE, description=_s()),
        },
    ),
    "WebhookPayload": _obj(
        ["type", "timestamp", "data"],
        type=EVENT_TYPE,
        timestamp=TIME,
        data=_obj(
            [
                "message_id",
                "tenant_id",
                "device_id",
                "user_id",
                "subject",
                "client",
                "request_id",
                "reason",
                "details",
            ],
            message_id=_s(pattern="^msg_[0-9]+$", description="as in the webhook-id header"),
            tenant_id=INT,
            device_id=_s(nullable=True),
            user_id=_s(nullable=True, description="null after the user's erasure"),
            subject=_s(nullable=True, description="the user's pseudonym (what an erasure leaves)"),
            client=_s(nullable=True, description="the API client that caused the event (null: the service)"),
            request_id=_s(nullable=True),
            reason=_s(nullable=True),
            details={"type": "object", "description": 'the audit row\'s details ({"truncated": true} if over 64 KiB)'},
        ),
    ),
}

ERRORS = {
    400: "Invalid input (`VALIDATION_ERROR` with `error.field`, `MALFORMED_JSON`, `INVALID_ACTOR`: the X-Actor "
    "header of an administrative route, `INVALID_WEBHOOK_URL`, `INVALID_EVENT_TYPE`)",
    401: "Missing or wrong API key (`UNAUTHORIZED`)",
    403: "The key's client lacks the operation's scope (`INSUFFICIENT_SCOPE`, with `error.scope`)",
    404: "No such resource (`NOT_FOUND`, `DEVICE_NOT_FOUND`, `WEBHOOK_ENDPOINT_NOT_FOUND`, "
    "`WEBHOOK_DELIVERY_NOT_FOUND`; another tenant's is answered the same)",
    405: "Method not allowed (`METHOD_NOT_ALLOWED`)",
    409: "Conflict (`DEVICE_EXISTS`, `DEVICE_INACTIVE`, `DEVICE_PENDING`, `ALREADY_CONFIRMED`, "
    f"`TOO_MANY_ENDPOINTS`: a tenant has at most {hooks.MAX_ENDPOINTS}, `WEBHOOK_ENDPOINT_DISABLED`)",
    410: "The enrolment was not confirmed in time (`ENROLLMENT_EXPIRED`): register the device again; or a report "
    "was withdrawn by an erasure (`REPORT_WITHDRAWN`) until it is made again",
    413: f"Body over {MAX_JSON_BODY // 1024} KiB (`PAYLOAD_TOO_LARGE`)",
    415: "Body is not application/json (`UNSUPPORTED_MEDIA_TYPE`)",
    431: f"Request headers over {MAX_HEADERS // 1024} KiB (`HEADERS_TOO_LARGE`)",
    429: "Too many requests (`RATE_LIMITED`), device or recovery codes locked (`DEVICE_LOCKED`, "
    "`RECOVERY_CODES_LOCKED`); see `Retry-After`",
    500: "Unexpected error (`INTERNAL_ERROR`): nothing internal is disclosed",
    503: "Dependency unavailable (`DATABASE_UNAVAILABLE`, `KEY_UNAVAILABLE`, `RATE_LIMITER_UNAVAILABLE`)",
}
API_ERRORS = (400, 401, 403, 405, 429, 431, 500, 503)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_HEALTH = {"description": "Service and database status", "content": {"application/json": {"schema": _ref("Health")}}}
OPERATIONAL: dict[str, dict[str, Any]] = {  # the answers of the routes outside /api, written out whole
    "health": {"200": _HEALTH, "503": _HEALTH, "431": _json(_ref("Error"), ERRORS[431])},
    "health-head": {"200": {"description": "healthy"}, "503": {"description": "unhealthy"}},
    "openapi": {"200": {"description": "OpenAPI 3.0 document", "content": {"application/json": {}}}},
    "metrics": {
        "200": {"description": "text exposition format", "content": {"text/plain": {}}},
        **{str(code): _json(_ref("Error"), ERRORS[code]) for code in (401, 403, 429, 431, 503)},
    },
}


_WEBHOOK_HEADERS = {
    "webhook-id": (
        "the message's id (`msg_…`): the same on every retry and replay — deduplicate on it",
        "^msg_[0-9]+$",
    ),
    "webhook-timestamp": ("when this attempt was signed, Unix seconds: refuse one more than 5 minutes off", "^[0-9]+$"),
    "webhook-signature": (
        "space-separated `v1,<base64 HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}` under the secret's "
        "key; two during a rotation's grace period (either may match)",
        None,
    ),
}


def _webhook(event_type: str) -> dict[str, Any]:
    """One event type as OpenAPI 3.1 describes a webhook: the request the service makes to an endpoint."""
    return {
        "post": {
            "summary": catalogue.DESCRIPTIONS[event_type],
            "tags": ["webhooks"],
            "description": "Sent after Standard Webhooks v1 to every enabled endpoint of the tenant that takes "
            f"`{event_type}`. Answer 2xx within WEBHOOK_TIMEOUT_SECONDS; anything else is retried with backoff, "
            "and 410 Gone disables the endpoint.",
            "parameters": [
                {"name": name, "in": "header", "required": True, "description": text, "schema": _s(pattern=pattern)}
                if pattern
                else {"name": name, "in": "header", "required": True, "description": text, "schema": _s()}
                for name, (text, pattern) in _WEBHOOK_HEADERS.items()
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"allOf": [_ref("WebhookPayload"), _obj([], type=_s(enum=[event_type]))]}
                    }
                },
            },
            "responses": {"2XX": {"description": "received (the body is not read)"}},
            "security": [],
        }
    }


WEBHOOKS: dict[str, Any] = {event_type: _webhook(event_type) for event_type in catalogue.EVENT_TYPES}
