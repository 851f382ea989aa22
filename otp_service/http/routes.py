"""The route table: every path the service serves, once — its handler, the API client scope it needs, the
rate limit it counts against, and what `/openapi.json` says of it (summary, request and response schema,
the error statuses it can answer). The Tornado router (`app.make_app`) and the OpenAPI description
(`openapi.build_spec`) are both built from it, so they cannot disagree.

A new operation is one row here, one handler (`handlers`) and one service method.
"""

from __future__ import annotations

from typing import Any

from . import handlers as h
from . import webhook_handlers as wh
from .route import Operation, Route


def post(summary: str, **kw: Any) -> Operation:
    return Operation("post", summary, **kw)


def get(summary: str, **kw: Any) -> Operation:
    return Operation("get", summary, **kw)


def hook(method: str, summary: str, **kw: Any) -> Operation:
    """An operation of the webhooks API (tag `webhooks`)."""
    return Operation(method, summary, tag="webhooks", **kw)


DEVICE, USER, REPORT = "/api/v1/devices/{device_id}", "/api/v1/users/{user_id}", "/api/v1/reports/{report_id}"
_REPORT_FILE = {"errors": (404, 410), "tag": "reports"}  # 410: withdrawn by an erasure
_OPS = "operations"
ENDPOINTS = "/api/v1/webhooks/endpoints"
ENDPOINT = f"{ENDPOINTS}/{{endpoint_id}}"

ROUTES: tuple[Route, ...] = (
    Route(
        "/health",
        h.HealthHandler,
        (
            get("Liveness and database check", tag=_OPS, responses="health", auth=False),
            Operation("head", "Liveness and database check, no body", tag=_OPS, responses="health-head", auth=False),
        ),
    ),
    Route("/openapi.json", h.OpenApiHandler, (get("This description", tag=_OPS, responses="openapi", auth=False),)),
    Route(
        "/metrics",
        h.MetricsHandler,
        (
            get(
                "Prometheus metrics (Bearer METRICS_TOKEN, or an API key when none is set; rate limited)",
                tag=_OPS,
                responses="metrics",
            ),
        ),
        scope="metrics",
        tenanted=False,
    ),
    Route(
        "/api/v1/devices/register",
        h.RegisterHandler,
        (
            post(
                "Register a device; the response holds its key, shown this once",
                ok=201,
                response="Registration",
                errors=(409,),
                body="RegisterRequest",
            ),
        ),
        scope="enroll",
    ),
    Route(
        "/api/v1/otp/verify",
        h.VerifyHandler,
        (
            post(
                "Verify a code (replay-safe, throttled)",
                response="Verification",
                errors=(404, 409),
                body="VerifyRequest",
                tag="verification",
            ),
        ),
        scope="verify",
        rate="verify",
    ),
    Route(
        f"{DEVICE}/deactivate",
        h.DeactivateHandler,
        (post("Deactivate a device (idempotent)", response="Deactivation", errors=(404,)),),
        scope="manage",
    ),
    Route(
        f"{DEVICE}/unlock",
        h.UnlockHandler,
        (post("Lift a device's lock and reset its clock offset", response="Unlock", errors=(404,)),),
        scope="manage",
    ),
    Route(
        f"{DEVICE}/confirm",
        h.ConfirmHandler,
        (
            post(
                "Confirm a pending enrolment with its first code",
                response="Confirmation",
                errors=(404, 409, 410),
                body="ConfirmRequest",
            ),
        ),
        scope="enroll",
        rate="verify",
    ),
    Route(
        f"{DEVICE}/resync",
        h.ResyncHandler,
        (
            post(
                "Resynchronise a device's clock with two consecutive codes",
                response="Resync",
                errors=(404, 409, 410),
                body="ResyncRequest",
                tag="verification",
            ),
        ),
        scope="verify",
        rate="verify",
    ),
    Route(
        f"{DEVICE}/drift/reset",
        h.DriftResetHandler,
        (post("Forget a device's clock offset", response="DriftReset", errors=(404,)),),
        scope="manage",
    ),
    Route(
        f"{DEVICE}/code-lookup",
        h.CodeLookupHandler,
        (
            post(
                "When was this code valid for this device? (investigations; audited)",
                response="CodeLookup",
                errors=(404,),
                body="CodeLookupRequest",
            ),
        ),
        scope="manage",
    ),
    Route(
        DEVICE, h.DeviceHandler, (get("A device's state (never its key)", response="Device", errors=(404,)),), "read"
    ),
    Route(
        f"{USER}/devices", h.UserDevicesHandler, (get("A user's devices", response="UserDevices", tag="users"),), "read"
    ),
    Route(
        f"{USER}/audit",
        h.UserAuditHandler,
        (get("A user's audit trail, newest first", response="AuditPage", paged=True, tag="users"),),
        scope="read",
    ),
    Route(
        f"{USER}/recovery-codes",
        h.RecoveryCodesHandler,
        (
            post(
                "Issue 10 one-time recovery codes, shown this once (replaces any earlier set)",
                ok=201,
                response="RecoveryCodes",
                tag="users",
            ),
        ),
        scope="enroll",
    ),
    Route(
        f"{USER}/recovery-codes/verify",
        h.RecoveryCodeVerifyHandler,
        (
            post(
                "Check a recovery code (valid once; wrong ones are counted)",
                response="RecoveryCodeCheck",
                errors=(404,),
                body="RecoveryCodeRequest",
                tag="verification",
            ),
        ),
        scope="verify",
        rate="verify",
    ),
    Route(
        f"{USER}/erase",
        h.EraseUserHandler,
        (
            post(
                "Erase a user (GDPR art. 17): devices, recovery codes, personal data in the audit trail",
                response="Erasure",
                tag="users",
            ),
        ),
        scope="manage",
    ),
    Route(
        "/api/v1/audit/keys",
        h.AuditKeysHandler,
        (get("The public keys that verify the audit trail's signed checkpoints", response="AuditKeys", tag="reports"),),
        scope="reports",
    ),
    Route("/api/v1/stats", h.StatsHandler, (get("Usage statistics", response="Stats", tag="reports"),), "read"),
    Route(
        "/api/v1/reports",
        h.ReportsHandler,
        (get("Stored reports, newest first", response="ReportList", paged=True, tag="reports"),),
        scope="reports",
    ),
    Route(
        REPORT,
        h.ReportHtmlHandler,
        (get("A stored report as a self-contained HTML page", content="text/html", **_REPORT_FILE),),
        scope="reports",
    ),
    Route(
        f"{REPORT}/data",
        h.ReportDataHandler,
        (
            get(
                "A stored report's tables (and raw audit events) as CSV files in a zip, with SHA256SUMS",
                content="application/zip",
                **_REPORT_FILE,
            ),
        ),
        scope="reports",
    ),
    Route(
        f"{REPORT}/pdf",
        h.ReportPdfHandler,
        (
            get(
                "A stored report as a PDF, for archiving (404 if it was made without one)",
                content="application/pdf",
                **_REPORT_FILE,
            ),
        ),
        scope="reports",
    ),
    Route(
        f"{REPORT}/manifest",
        h.ReportManifestHandler,
        (
            get(
                "A stored report's signed manifest: each of its files (HTML, PDF, zip and every file in the zip) with "
                "its SHA-256 and size, as the audit key signed it (404 if it was made without the key)",
                content="application/json",
                **_REPORT_FILE,
            ),
        ),
        scope="reports",
    ),
    Route(
        f"{REPORT}/signature",
        h.ReportSignatureHandler,
        (
            get(
                "The manifest's Ed25519 signature, raw (64 bytes): `openssl pkeyutl -verify -rawin` checks it",
                content="application/octet-stream",
                **_REPORT_FILE,
            ),
        ),
        scope="reports",
    ),
    Route(
        "/api/v1/webhooks/event-types",
        wh.WebhookEventTypesHandler,
        (hook("get", "The event types an endpoint can take, with what each means", response="WebhookEventTypes"),),
        scope="webhooks",
    ),
    Route(
        ENDPOINTS,
        wh.WebhookEndpointsHandler,
        (
            hook(
                "get",
                "The tenant's webhook endpoints (never their secrets)",
                response="WebhookEndpointList",
                errors=(404,),
            ),
            hook(
                "post",
                "Create a webhook endpoint; the response holds its signing secret, shown this once",
                ok=201,
                response="WebhookEndpointWithSecret",
                errors=(404, 409),  # 404: an operator's X-Tenant names no tenant
                body="WebhookEndpointRequest",
            ),
        ),
        scope="webhooks",
    ),
    Route(
        ENDPOINT,
        wh.WebhookEndpointHandler,
        (
            hook(
                "get",
                "A webhook endpoint, with its deliveries counted by status",
                response="WebhookEndpointDetail",
                errors=(404,),
            ),
            hook(
                "delete",
                "Delete a webhook endpoint, its deliveries (pending ones are never sent) and the messages only it had",
                response="WebhookEndpointDeleted",
                errors=(404,),
            ),
        ),
        scope="webhooks",
    ),
    Route(
        f"{ENDPOINT}/rotate",
        wh.WebhookRotateHandler,
        (
            hook(
                "post",
                "A new signing secret, shown this once; the previous one keeps signing for grace_seconds",
                response="WebhookEndpointWithSecret",
                errors=(404,),
                body="WebhookRotateRequest",
                body_required=False,
            ),
        ),
        scope="webhooks",
    ),
    Route(
        f"{ENDPOINT}/disable",
        wh.WebhookDisableHandler,
        (
            hook(
                "post",
                "Stop sending to an endpoint (idempotent); its pending deliveries are cancelled",
                response="WebhookEndpointDisabled",
                errors=(404,),
            ),
        ),
        scope="webhooks",
    ),
    Route(
        f"{ENDPOINT}/enable",
        wh.WebhookEnableHandler,
        (hook("post", "Send to an endpoint again (idempotent)", response="WebhookEndpoint", errors=(404,)),),
        scope="webhooks",
    ),
    Route(
        f"{ENDPOINT}/deliveries",
        wh.WebhookDeliveriesHandler,
        (
            hook(
                "get",
                "An endpoint's deliveries, newest first",
                response="WebhookDeliveryPage",
                errors=(404,),
                paged=True,
                query=("status",),
            ),
        ),
        scope="webhooks",
    ),
    Route(
        f"{ENDPOINT}/deliveries/{{delivery_id}}/replay",
        wh.WebhookReplayHandler,
        (
            hook(
                "post",
                "Queue a delivery's message again for the endpoint (same webhook-id); refused while it is disabled",
                ok=202,
                response="WebhookReplay",
                errors=(404, 409),
            ),
        ),
        scope="webhooks",
    ),
    Route(
        "/api/v1/debug/devices/{device_id}/otp",
        h.DebugOtpHandler,
        (get("The device's current code (DEBUG only)", response="DebugCode", errors=(404,), tag="debug"),),
        scope="read",
        debug=True,
    ),
)


def served(debug: bool) -> tuple[Route, ...]:
    """The routes a process serves: the debug route only with DEBUG=true outside production."""
    return tuple(r for r in ROUTES if debug or not r.debug)
