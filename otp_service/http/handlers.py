"""The operations' handlers: parse the request, await one call of the service, answer in the JSON envelope.
Who may call each, and how often, is checked before (`access`), as its row of the route table says
(`routes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from .. import __version__, metrics
from ..core import errors, validation
from ..core.period import last_day
from ..reports.runner import report_name
from ..service.clients import Caller
from .access import METRICS_SCRAPER, ApiHandler, bearer_matches
from .base import AppState, BaseHandler, compact

if TYPE_CHECKING:
    from .route import Route


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        settings = self.state.settings
        database = "ok"
        try:
            async with asyncio.timeout(settings.db_timeout):
                await self.service.ping()
        except (TimeoutError, errors.ServiceError):
            database = "unreachable"
        status = "draining" if self.state.draining else ("ok" if database == "ok" else "degraded")
        ok = status == "ok"
        self.set_status(200 if ok else 503)
        data = {
            "status": status,
            "database": database,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.state.started_at, 1),
        }
        if self.request.method == "HEAD":
            self.finish()
            return
        envelope = {"success": ok, "message": "healthy" if ok else "unhealthy", "data": data}
        self.finish(compact(envelope))

    head = get


class RegisterHandler(ApiHandler):
    async def post(self) -> None:
        body = self.json_body()
        options = {
            name: parse(body[name])
            for name, parse in (
                ("digits", validation.digits),
                ("interval", validation.interval),
                ("algorithm", validation.algorithm),
                ("issuer", validation.issuer),
            )
            if body.get(name) is not None
        }
        options["confirm"] = validation.flag(body.get("confirm"), "confirm")
        options["qr"] = validation.qr_format(body.get("qr"))
        device_id = validation.device_id(body.get("device_id"))
        user_id = validation.user_id(body.get("user_id"))
        data = await self.service.register(device_id, user_id, self.context, **options)
        if data["status"] == "pending":
            message = "Device registered; confirm it with its first code by confirm_by. The key is never shown again."
        else:
            message = "Device registered successfully; store the key now, it is never shown again."
        self.respond(data, message, 201)


class ConfirmHandler(ApiHandler):
    """A pending enrolment's first code, from the app that registered it."""

    async def post(self, device_id: str) -> None:
        device_id = validation.device_id(device_id)
        otp = validation.required_otp(self.json_body(), "otp")
        data = await self.service.confirm(device_id, otp, self.context)
        self.respond(data, "Device confirmed" if data["valid"] else "Confirmation failed")


class ResyncHandler(ApiHandler):
    async def post(self, device_id: str) -> None:
        device_id = validation.device_id(device_id)
        body = self.json_body()
        otp1, otp2 = validation.required_otp(body, "otp1"), validation.required_otp(body, "otp2")
        data = await self.service.resync(device_id, otp1, otp2, self.context)
        self.respond(data, "Device resynchronised" if data["resynced"] else "Resynchronisation failed")


class DriftResetHandler(ApiHandler):
    async def post(self, device_id: str) -> None:
        data = await self.service.reset_drift(validation.device_id(device_id), self.context)
        self.respond(data, "Clock offset reset")


class RecoveryCodesHandler(ApiHandler):
    async def post(self, user_id: str) -> None:
        data = await self.service.issue_recovery_codes(validation.user_id(user_id), self.context)
        self.respond(data, "Recovery codes issued; show them to the user now, they are never shown again.", 201)


class RecoveryCodeVerifyHandler(ApiHandler):
    async def post(self, user_id: str) -> None:
        user_id = validation.user_id(user_id)
        body = self.json_body()
        if "code" not in body:
            raise errors.ValidationError("code is required", details={"field": "code"})
        data = await self.service.use_recovery_code(user_id, body["code"], self.context)
        self.respond(data, "Recovery code accepted" if data["valid"] else "Recovery code refused")


class CodeLookupHandler(ApiHandler):
    """For investigations: when was this code valid for this device? Read-only, audited; limited per client
    (RATE_LIMIT_CODE_LOOKUP), since a week of 15-second steps is some 40,000 HMACs of CPU."""

    async def post(self, device_id: str) -> None:
        message = "Too many code lookups from this client; try again later."
        await self._limit("lookup", f"client:{self.caller.name}", message, "CODE_LOOKUP")
        device_id = validation.device_id(device_id)
        body = self.json_body()
        otp = validation.required_otp(body, "otp")
        start, end = validation.time_range(body.get("from"), body.get("to"), validation.MAX_LOOKUP_RANGE)
        data = await self.service.lookup_code(device_id, otp, start, end, self.context)
        found = len(data["matches"])
        self.respond(data, f"{found} time step{'' if found == 1 else 's'} matched")


class VerifyHandler(ApiHandler):
    async def post(self) -> None:
        body = self.json_body()
        device_id = validation.device_id(body.get("device_id"))
        otp = validation.required_otp(body, "otp")
        data = await self.service.verify(device_id, otp, self.context)
        self.respond(data, "OTP verification completed")


class DeactivateHandler(ApiHandler):
    async def post(self, device_id: str) -> None:
        data = await self.service.deactivate(validation.device_id(device_id), self.context)
        self.respond(data, "Device deactivated")


class UnlockHandler(ApiHandler):
    """Unlocks of one device are limited (RATE_LIMIT_UNLOCK, whoever asks): with each unlock worth one more
    guess, that bounds what even a `manage` key can try."""

    async def post(self, device_id: str) -> None:
        device_id = validation.device_id(device_id)
        message = f"Device {device_id!r} was unlocked too often; try again later."
        await self._limit(
            "unlock", f"device:{self.context.tenant_id}:{device_id}", message, "UNLOCK", device_id=device_id
        )
        data = await self.service.unlock(device_id, self.context)
        self.respond(data, "Device unlocked")


class DeviceHandler(ApiHandler):
    async def get(self, device_id: str) -> None:
        self.respond(await self.service.device_info(validation.device_id(device_id), self.context), "Device found")


class UserDevicesHandler(ApiHandler):
    async def get(self, user_id: str) -> None:
        self.respond(await self.service.user_devices(validation.user_id(user_id), self.context), "Devices of the user")


class UserAuditHandler(ApiHandler):
    async def get(self, user_id: str) -> None:
        uid = validation.user_id(user_id)
        limit = validation.limit(self.get_query_argument("limit", None))
        before = validation.cursor(self.get_query_argument("before", None))
        self.respond(await self.service.user_audit(uid, limit, before, self.context), "Audit trail of the user")


class StatsHandler(ApiHandler):
    async def get(self) -> None:
        self.respond(await self.service.stats(self.context), "Usage statistics")


class ReportsHandler(ApiHandler):
    async def get(self) -> None:
        limit = validation.limit(self.get_query_argument("limit", None))
        before = validation.cursor(self.get_query_argument("before", None))
        self.respond(await self.service.list_reports(limit, before, self.context), "Stored reports")


class ReportHtmlHandler(ApiHandler):
    """A stored report as a file: its self-contained HTML page (or, below, a zip of its CSV tables, or its PDF)."""

    part = "html"

    async def get(self, report_id: str) -> None:
        if not report_id.isascii() or not report_id.isdigit() or len(report_id) > 18:
            raise errors.NotFound(f"No report with id {report_id!r}.")
        report, content = await self.service.report_content(int(report_id), self.part, self.context)
        # named like the files the report command writes: by its first and last day, both included
        first, last = report.period_start.date(), last_day(report.period_end)
        name = report_name(report.kind, first, last, report.subject, report.tenant_name)
        if self.part == "html":
            self.set_header("Content-Type", "text/html; charset=utf-8")
            # The page needs no script and nothing from elsewhere; say so to the browser.
            self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
            # shown in the browser, and saved (`curl -OJ`) under the name the signed manifest lists it by
            self.set_header("Content-Disposition", f'inline; filename="{name}.html"')
        else:
            kind, extension = FILE_TYPES[self.part]
            self.set_header("Content-Type", kind)
            self.set_header("Content-Disposition", f'attachment; filename="{name}.{extension}"')
        self.finish(content)


# Each file of a stored report: its type, and its name's ending (as the `report` command names it on disk,
# which is the name the signed manifest lists it under).
FILE_TYPES = {
    "data": ("application/zip", "zip"),
    "pdf": ("application/pdf", "pdf"),
    "manifest": ("application/json", "manifest.json"),
    "signature": ("application/octet-stream", "manifest.sig"),
}


class ReportDataHandler(ReportHtmlHandler):
    part = "data"


class ReportPdfHandler(ReportHtmlHandler):
    part = "pdf"


class ReportManifestHandler(ReportHtmlHandler):
    """The signed manifest: every file of the report with its SHA-256, as the audit key signed it (exact bytes)."""

    part = "manifest"


class ReportSignatureHandler(ReportHtmlHandler):
    """The manifest's Ed25519 signature, raw (64 bytes), as `openssl pkeyutl -verify -rawin -sigfile` reads it."""

    part = "signature"


class AuditKeysHandler(ApiHandler):
    """The public keys that verify the audit trail's signed checkpoints (the current one, and older ones)."""

    async def get(self) -> None:
        self.respond({"keys": await self.service.audit_keys()}, "Audit checkpoint keys")


class EraseUserHandler(ApiHandler):
    """GDPR art. 17: delete a user's devices and recovery codes and the personal data in their audit rows."""

    async def post(self, user_id: str) -> None:
        data = await self.service.erase_user(validation.user_id(user_id), self.context)
        self.respond(data, "User erased; the audit trail keeps the events, without personal data")


class OpenApiHandler(BaseHandler):
    """The OpenAPI description of the routes this process serves, built once by the app (`app.make_app`)."""

    def initialize(self, state: AppState, route: Route, spec: str) -> None:
        super().initialize(state, route)
        self.spec = spec

    def get(self) -> None:
        self.finish(self.spec)


class MetricsHandler(ApiHandler):
    """Prometheus text format; rate limited and audited like /api, so it cannot be used to test keys. It
    needs METRICS_TOKEN when one is set (always in production), else a client with the `metrics` scope."""

    unauthorized = "Send Authorization: Bearer <METRICS_TOKEN> (or, when none is set, a key with the metrics scope)."

    def _known(self, token: str) -> tuple[bool, Caller | None]:
        expected = self.state.settings.metrics_token
        if not expected:
            return super()._known(token)
        return True, METRICS_SCRAPER if bearer_matches(
            self.request.headers.get("Authorization", ""), (expected,)
        ) else None

    async def get(self) -> None:
        with contextlib.suppress(errors.ServiceError):  # the database is down: the other metrics still say why
            metrics.audit_status(await self.service.audit_status())
            metrics.webhook_status(*await self.service.webhook_queue_status())
        body, content_type = metrics.exposition()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class DebugOtpHandler(ApiHandler):
    async def get(self, device_id: str) -> None:
        data = await self.service.current_code(validation.device_id(device_id), self.context)
        self.respond(data, "Current code (debug only)")
