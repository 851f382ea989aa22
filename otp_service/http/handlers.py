"""Thin Tornado handlers: parse the request, await one call of the service, answer in the JSON envelope.

Every response is `{"success", "message", "data"}`, errors add `"error": {"code", ...}`.
No request can produce an HTML error page or a traceback: `write_error` renders every
failure, expected or not, in the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import tornado.web

from .. import __version__, metrics
from ..audit.rows import RequestContext, normal_ip
from ..config import Settings
from ..core import errors, validation
from ..core.period import last_day
from ..db.models import Action
from ..reports.runner import report_name
from ..service import clients
from ..service.clients import Caller
from ..service.commands import AsyncOtpService
from .ratelimit import Decision, RateLimiter

log = logging.getLogger("otp_service.web")

compact = json.JSONEncoder(separators=(",", ":")).encode  # every answer's envelope; made once, not per call
MAX_JSON_BODY = 16 * 1024
MAX_HEADERS = 16 * 1024  # answered with 431 JSON; the server closes connections over its own, larger cap
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)
AUDITED_LIMIT_CACHE = 10_000


@dataclass
class AppState:
    """What every handler shares within one process."""

    settings: Settings
    service: AsyncOtpService
    limiter: RateLimiter
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    inflight: int = 0
    rate_limit_audited: OrderedDict = field(default_factory=OrderedDict)


def client_ip(remote_ip: str, forwarded_for: str | None, trusted_hops: int) -> str:
    """The client's address in normal form, trusting only as many X-Forwarded-For entries as there are
    proxies we run behind.

    Each trusted proxy appends the address it saw, so with N proxies the client's address
    is the N-th entry from the right; anything further left was written by the client.
    """
    own = normal_ip(remote_ip) or ""
    if trusted_hops == 0 or not forwarded_for:
        return own
    chain = [part.strip() for part in forwarded_for.split(",")]
    if len(chain) < trusted_hops:
        return own
    return normal_ip(chain[-trusted_hops]) or own


METRICS_SCRAPER = Caller("metrics-token", frozenset({"metrics"}))


@lru_cache(maxsize=4096)
def client_network(ip: str, ipv6_prefix: int) -> str:
    """`ip` itself for IPv4 (or no address), its /`ipv6_prefix` network for IPv6."""
    if ":" not in ip:
        return ip
    return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))


def bearer_matches(header: str, keys: tuple[str, ...]) -> bool:
    """`Authorization: Bearer <token>` naming one of `keys`. The SHA-256 of the token is compared with that of
    every key, with no early exit: equal-length values, so timing reveals neither which key matched, nor how
    much of one, nor any key's length."""
    scheme, _, token = header.partition(" ")
    found = clients.matching(token.strip(), _digests(keys))  # compared whatever the scheme, as before
    return scheme.lower() == "bearer" and found is not None


@lru_cache(maxsize=8)
def _digests(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(clients.digest(key)) for key in keys)


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Bodies are streamed in, so an oversized one is refused (413, JSON) from its Content-Length before a
    byte of it is read, and a chunked one stops being kept once it passes the limit."""

    def initialize(self, state: AppState) -> None:
        self.state = state
        state.inflight += 1
        self._counted_out = False
        self._body = bytearray()
        self._body_too_large = False

    def prepare(self):
        if sum(len(name) + len(value) + 4 for name, value in self.request.headers.get_all()) > MAX_HEADERS:
            raise errors.HeadersTooLarge(f"The request headers are larger than {MAX_HEADERS} bytes.")
        length = self.request.headers.get("Content-Length", "0")
        if length.isascii() and length.isdigit() and int(length) > MAX_JSON_BODY:
            raise errors.PayloadTooLarge(f"The body is larger than {MAX_JSON_BODY} bytes.")

    def data_received(self, chunk: bytes) -> None:
        if len(self._body) + len(chunk) > MAX_JSON_BODY:
            self._body_too_large = True
            self._body.clear()
        elif not self._body_too_large:
            self._body += chunk

    def on_finish(self) -> None:
        self._ended()

    def on_connection_close(self) -> None:
        """The client hung up before the answer (perhaps mid-body): the request has ended too."""
        super().on_connection_close()
        self._ended()

    def _ended(self) -> None:
        """Counted out of `inflight` exactly once, whichever of finish and connection close comes first."""
        if not self._counted_out:
            self._counted_out = True
            self.state.inflight -= 1

    @property
    def service(self) -> AsyncOtpService:
        return self.state.service

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        if not hasattr(self, "request_id"):  # called again by clear() before an error response
            sent = self.request.headers.get("X-Request-ID", "")
            self.request_id = sent if REQUEST_ID.fullmatch(sent) else secrets.token_hex(16)
            self.kept_headers: dict[str, str] = {}
        self.set_header("X-Request-ID", self.request_id)
        for name, value in self.kept_headers.items():
            self.set_header(name, value)

    def keep_header(self, name: str, value: str) -> None:
        """A header that survives into an error response (Tornado clears headers before write_error)."""
        self.kept_headers[name] = value
        self.set_header(name, value)

    @cached_property
    def ip(self) -> str:
        return client_ip(
            self.request.remote_ip or "",
            self.request.headers.get("X-Forwarded-For"),
            self.state.settings.trusted_proxy_hops,
        )

    @cached_property
    def limit_key(self) -> str:
        """What the rate limits count: an IPv4 client by its address, an IPv6 client by its network
        (RATE_LIMIT_IPV6_PREFIX, /64): one subscriber usually holds a whole /64 and could rotate within it."""
        return client_network(self.ip, self.state.settings.rate_limit_ipv6_prefix)

    @property
    def context(self) -> RequestContext:
        caller = getattr(self, "caller", None)
        return RequestContext(
            ip_address=self.ip,
            user_agent=self.request.headers.get("User-Agent"),
            request_id=self.request_id,
            actor=caller.name if caller is not None else None,
        )

    def respond(self, data: dict[str, Any], message: str, status: int = 200) -> None:
        self.set_status(status)
        self.finish(compact({"success": True, "message": message, "data": data}))

    def json_body(self) -> dict[str, Any]:
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise errors.UnsupportedMediaType("Send the body as JSON with Content-Type: application/json.")
        if self._body_too_large:
            raise errors.PayloadTooLarge(f"The body is larger than {MAX_JSON_BODY} bytes.")
        try:
            body = json.loads(bytes(self._body) or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):  # nesting deeper than Python's stack: not JSON we take
            raise errors.MalformedJSON("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise errors.MalformedJSON("The body must be a JSON object.")
        return body

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, errors.ServiceError):
            status, code, message, details = exc.status, exc.code, exc.message, exc.details
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError) or exc is None:
            status, details = status_code, {}
            code, message = HTTP_ERRORS.get(status, ("HTTP_ERROR", self._reason))
        else:
            status, code, message, details = 500, "INTERNAL_ERROR", "An unexpected error occurred.", {}
            if self.state.settings.debug:
                details = {"exception": type(exc).__name__, "detail": str(exc)}
        self.set_status(status)
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="otp-service"')
        error = {"code": code, "request_id": self.request_id, **details}
        self.finish(compact({"success": False, "message": message, "data": {}, "error": error}))

    def log_exception(self, typ, value, tb) -> None:  # type: ignore[override]
        if isinstance(value, (errors.ServiceError, tornado.web.HTTPError)):
            return  # expected outcomes; the access log records the status
        log.error(
            "unhandled error in %s %s (request %s)",
            self.request.method,
            self.request.path,
            self.request_id,
            exc_info=(typ, value, tb),
        )


HTTP_ERRORS = {
    400: ("BAD_REQUEST", "The request could not be understood."),
    404: ("NOT_FOUND", "There is no such resource."),
    405: ("METHOD_NOT_ALLOWED", "This method is not allowed on this resource."),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large."),
    500: ("INTERNAL_ERROR", "An unexpected error occurred."),
}


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise errors.NotFound("There is no such resource.")


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


class ApiHandler(BaseHandler):
    """Every /api route: rate limited per client IP, then authenticated with a Bearer API key whose client
    must hold the route's scope (`permission`)."""

    scope = "default"  # which rate limit
    permission = "admin"  # which client scope (`clients.SCOPES`)
    unauthorized = "A valid API key is required: send Authorization: Bearer <key>."
    caller: Caller | None = None

    async def prepare(self) -> None:
        super().prepare()
        token = self._bearer()
        known, caller = self._known(token)
        checks = [(self.scope, self.limit_key)]
        client_scope = f"client:{self.permission}"
        if known and caller is not None and self.state.limiter.has(client_scope):
            checks.append((client_scope, caller.name))  # a key this process knows: both limits in one round trip
        decisions = await self.state.limiter.check(checks)
        self.keep_header("X-RateLimit-Limit", str(decisions[0].limit))
        self.keep_header("X-RateLimit-Remaining", str(decisions[0].remaining))
        await self._enforce(decisions[0], self.limit_key, self.scope, "Too many requests; slow down.")
        self.caller = caller if known else await self.service.caller(token)  # the database's answer
        if self.caller is None:
            metrics.AUTH_FAILURES.inc()
            await self.service.record(Action.AUTH_FAILED, self.context)
            raise errors.Unauthorized(self.unauthorized)
        metrics.CLIENT_REQUESTS.labels(self.caller.name).inc()
        if len(decisions) > 1 or self.state.limiter.has(client_scope):
            limiter = self.state.limiter
            decision = decisions[1] if len(decisions) > 1 else await limiter.hit(client_scope, self.caller.name)
            message = f"Too many requests from client {self.caller.name} for {self.permission!r}; slow down."
            await self._enforce(decision, self.caller.name, client_scope, message, client=self.caller.name)
        if not self.caller.may(self.permission):
            metrics.AUTH_FAILURES.inc()
            data = {"route": self.request.path[:200], "scope": self.permission}
            await self.service.record(Action.ACCESS_DENIED, self.context, reason="INSUFFICIENT_SCOPE", data=data)
            raise errors.InsufficientScope(
                f"This API key's client ({self.caller.name}) may not do this: it needs the {self.permission!r} scope.",
                details={"scope": self.permission},
            )

    def _known(self, token: str) -> tuple[bool, Caller | None]:
        """(True, caller or None) when this process knows who sent `token` without the database."""
        return self.service.known_caller(token) if token else (True, None)

    def _bearer(self) -> str:
        """The Bearer token sent, or "" (no header, another scheme, an empty token)."""
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    async def _limit(self, scope: str, key: str, message: str, reason: str, **data: str) -> None:
        """A limit of its own for one operation (`scope` in the limiter, counted by `key`)."""
        await self._enforce(await self.state.limiter.hit(scope, key), key, scope, message, reason, **data)

    async def _enforce(
        self, decision: Decision, key: str, scope: str, message: str, reason: str = "", **data: str
    ) -> None:
        """Nothing when `decision` allows; else 429 with Retry-After and the headers of the limit that refused,
        audited once per limited party and window."""
        if decision.allowed:
            return
        self.keep_header("X-RateLimit-Limit", str(decision.limit))
        self.keep_header("X-RateLimit-Remaining", "0")
        metrics.RATE_LIMITED.labels(scope).inc()
        await self._audit_rate_limit((key, scope), decision.retry_after, reason or scope.upper(), **data)
        raise errors.RateLimited(
            message, headers={"Retry-After": str(decision.retry_after)}, details={"retry_after": decision.retry_after}
        )

    async def _audit_rate_limit(self, key: tuple, retry_after: int, reason: str, **data: str) -> None:
        """One RATE_LIMITED row per limited party (an address, a client, a device) and window, so a flood
        cannot turn into a flood of writes."""
        seen, now = self.state.rate_limit_audited, time.monotonic()
        if seen.get(key, 0) > now:
            return
        seen[key] = now + retry_after
        seen.move_to_end(key)
        while len(seen) > AUDITED_LIMIT_CACHE:
            seen.popitem(last=False)
        data = {"route": self.request.path[:200], **data}
        await self.service.record(Action.RATE_LIMITED, self.context, reason=reason, data=data)


class RegisterHandler(ApiHandler):
    permission = "enroll"

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

    scope = "verify"
    permission = "enroll"

    async def post(self, device_id: str) -> None:
        device_id = validation.device_id(device_id)
        otp = validation.required_otp(self.json_body(), "otp")
        data = await self.service.confirm(device_id, otp, self.context)
        self.respond(data, "Device confirmed" if data["valid"] else "Confirmation failed")


class ResyncHandler(ApiHandler):
    scope = "verify"
    permission = "verify"

    async def post(self, device_id: str) -> None:
        device_id = validation.device_id(device_id)
        body = self.json_body()
        otp1, otp2 = validation.required_otp(body, "otp1"), validation.required_otp(body, "otp2")
        data = await self.service.resync(device_id, otp1, otp2, self.context)
        self.respond(data, "Device resynchronised" if data["resynced"] else "Resynchronisation failed")


class DriftResetHandler(ApiHandler):
    permission = "manage"

    async def post(self, device_id: str) -> None:
        data = await self.service.reset_drift(validation.device_id(device_id), self.context)
        self.respond(data, "Clock offset reset")


class RecoveryCodesHandler(ApiHandler):
    permission = "enroll"

    async def post(self, user_id: str) -> None:
        data = await self.service.issue_recovery_codes(validation.user_id(user_id), self.context)
        self.respond(data, "Recovery codes issued; show them to the user now, they are never shown again.", 201)


class RecoveryCodeVerifyHandler(ApiHandler):
    scope = "verify"
    permission = "verify"

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

    permission = "manage"

    async def post(self, device_id: str) -> None:
        message = "Too many code lookups from this client; try again later."
        await self._limit("lookup", f"client:{self.caller.name}", message, "CODE_LOOKUP")
        device_id = validation.device_id(device_id)
        body = self.json_body()
        otp = validation.required_otp(body, "otp")
        start, end = validation.time_range(body.get("from"), body.get("to"), validation.MAX_LOOKUP_RANGE)
        data = await self.service.lookup_code(device_id, otp, start, end, self.context)
        self.respond(data, f"{len(data['matches'])} time steps matched")


class VerifyHandler(ApiHandler):
    scope = "verify"
    permission = "verify"

    async def post(self) -> None:
        body = self.json_body()
        device_id = validation.device_id(body.get("device_id"))
        otp = validation.required_otp(body, "otp")
        data = await self.service.verify(device_id, otp, self.context)
        self.respond(data, "OTP verification completed")


class DeactivateHandler(ApiHandler):
    permission = "manage"

    async def post(self, device_id: str) -> None:
        data = await self.service.deactivate(validation.device_id(device_id), self.context)
        self.respond(data, "Device deactivated")


class UnlockHandler(ApiHandler):
    """Unlocks of one device are limited (RATE_LIMIT_UNLOCK, whoever asks): with each unlock worth one more
    guess, that bounds what even a `manage` key can try."""

    permission = "manage"

    async def post(self, device_id: str) -> None:
        device_id = validation.device_id(device_id)
        message = f"Device {device_id!r} was unlocked too often; try again later."
        await self._limit("unlock", f"device:{device_id}", message, "UNLOCK", device_id=device_id)
        data = await self.service.unlock(device_id, self.context)
        self.respond(data, "Device unlocked")


class DeviceHandler(ApiHandler):
    permission = "read"

    async def get(self, device_id: str) -> None:
        self.respond(await self.service.device_info(validation.device_id(device_id)), "Device found")


class UserDevicesHandler(ApiHandler):
    permission = "read"

    async def get(self, user_id: str) -> None:
        self.respond(await self.service.user_devices(validation.user_id(user_id)), "Devices of the user")


class UserAuditHandler(ApiHandler):
    permission = "read"

    async def get(self, user_id: str) -> None:
        uid = validation.user_id(user_id)
        limit = validation.limit(self.get_query_argument("limit", None))
        before = validation.cursor(self.get_query_argument("before", None))
        self.respond(await self.service.user_audit(uid, limit, before), "Audit trail of the user")


class StatsHandler(ApiHandler):
    permission = "read"

    async def get(self) -> None:
        self.respond(await self.service.stats(), "Usage statistics")


class ReportsHandler(ApiHandler):
    permission = "reports"

    async def get(self) -> None:
        limit = validation.limit(self.get_query_argument("limit", None))
        before = validation.cursor(self.get_query_argument("before", None))
        self.respond(await self.service.list_reports(limit, before), "Stored reports")


class ReportHtmlHandler(ApiHandler):
    """A stored report as a file: its self-contained HTML page (or, below, a zip of its CSV tables, or its PDF)."""

    permission = "reports"
    part = "html"

    async def get(self, report_id: str) -> None:
        if not report_id.isascii() or not report_id.isdigit() or len(report_id) > 18:
            raise errors.NotFound(f"No report with id {report_id!r}.")
        report, content = await self.service.report_content(int(report_id), self.part)
        # named like the files the report command writes: by its first and last day, both included
        name = report_name(report.kind, report.period_start.date(), last_day(report.period_end), report.subject)
        if self.part == "html":
            self.set_header("Content-Type", "text/html; charset=utf-8")
            # The page needs no script and nothing from elsewhere; say so to the browser.
            self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        else:
            kind, extension = {"data": ("application/zip", "zip"), "pdf": ("application/pdf", "pdf")}[self.part]
            self.set_header("Content-Type", kind)
            self.set_header("Content-Disposition", f'attachment; filename="{name}.{extension}"')
        self.finish(content)


class ReportDataHandler(ReportHtmlHandler):
    part = "data"


class ReportPdfHandler(ReportHtmlHandler):
    part = "pdf"


class AuditKeysHandler(ApiHandler):
    """The public keys that verify the audit trail's signed checkpoints (the current one, and older ones)."""

    permission = "reports"

    async def get(self) -> None:
        self.respond({"keys": await self.service.audit_keys()}, "Audit checkpoint keys")


class EraseUserHandler(ApiHandler):
    """GDPR art. 17: delete a user's devices and recovery codes and the personal data in their audit rows."""

    permission = "manage"

    async def post(self, user_id: str) -> None:
        data = await self.service.erase_user(validation.user_id(user_id), self.context)
        self.respond(data, "User erased; the audit trail keeps the events, without personal data")


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        from .openapi import build_spec

        spec = self.application.settings.get("openapi_json")
        if spec is None:  # built once per process
            debug = self.state.settings.debug and not self.state.settings.production
            spec = self.application.settings["openapi_json"] = json.dumps(build_spec(debug=debug))
        self.finish(spec)


class MetricsHandler(ApiHandler):
    """Prometheus text format; rate limited and audited like /api, so it cannot be used to test keys. It
    needs METRICS_TOKEN when one is set (always in production), else a client with the `metrics` scope."""

    permission = "metrics"
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
        body, content_type = metrics.exposition()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class DebugOtpHandler(ApiHandler):
    permission = "read"

    async def get(self, device_id: str) -> None:
        data = await self.service.current_code(validation.device_id(device_id))
        self.respond(data, "Current code (debug only)")
