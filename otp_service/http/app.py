"""The application factory: one place that wires settings, database, keyring, limiter and routes."""

from __future__ import annotations

import re

import tornado.web

from ..config import Settings
from ..service import AsyncOtpService, build_service
from . import docs
from . import handlers as web
from .logs import access_log
from .ratelimit import RateLimiter

# Routes are written as OpenAPI path templates, so the spec and the router name paths the same way.
API_ROUTES = [
    ("/health", web.HealthHandler),
    ("/openapi.json", web.OpenApiHandler),
    ("/metrics", web.MetricsHandler),
    ("/api/v1/devices/register", web.RegisterHandler),
    ("/api/v1/otp/verify", web.VerifyHandler),
    ("/api/v1/devices/{device_id}/deactivate", web.DeactivateHandler),
    ("/api/v1/devices/{device_id}/unlock", web.UnlockHandler),
    ("/api/v1/devices/{device_id}/confirm", web.ConfirmHandler),
    ("/api/v1/devices/{device_id}/resync", web.ResyncHandler),
    ("/api/v1/devices/{device_id}/drift/reset", web.DriftResetHandler),
    ("/api/v1/devices/{device_id}/code-lookup", web.CodeLookupHandler),
    ("/api/v1/devices/{device_id}", web.DeviceHandler),
    ("/api/v1/users/{user_id}/devices", web.UserDevicesHandler),
    ("/api/v1/users/{user_id}/audit", web.UserAuditHandler),
    ("/api/v1/users/{user_id}/recovery-codes", web.RecoveryCodesHandler),
    ("/api/v1/users/{user_id}/recovery-codes/verify", web.RecoveryCodeVerifyHandler),
    ("/api/v1/users/{user_id}/erase", web.EraseUserHandler),
    ("/api/v1/audit/keys", web.AuditKeysHandler),
    ("/api/v1/stats", web.StatsHandler),
    ("/api/v1/reports", web.ReportsHandler),
    ("/api/v1/reports/{report_id}", web.ReportHtmlHandler),
    ("/api/v1/reports/{report_id}/data", web.ReportDataHandler),
    ("/api/v1/reports/{report_id}/pdf", web.ReportPdfHandler),
]
DEBUG_ROUTES = [("/api/v1/debug/devices/{device_id}/otp", web.DebugOtpHandler)]


def build_state(settings: Settings, database=None, clock=None) -> web.AppState:
    """Everything a process needs to serve. Call it after any fork: it opens the database pool."""
    service = AsyncOtpService(build_service(settings, database, clock))
    limiter = RateLimiter(
        {
            "verify": settings.rate_limit_verify,
            "default": settings.rate_limit_default,
            "unlock": settings.rate_limit_unlock,  # per device, whoever asks
            "lookup": settings.rate_limit_code_lookup,  # per API client: each lookup costs up to 40,000 HMACs
            **{f"client:{scope}": rate for scope, rate in settings.rate_limit_per_client.items()},
        },
        redis_url=settings.redis_url,
        fail_open=settings.rate_limit_fail_open,
    )
    return web.AppState(settings=settings, service=service, limiter=limiter)


def debug_enabled(settings: Settings) -> bool:
    return settings.debug and not settings.production


def route_table(settings: Settings) -> list[tuple[str, type]]:
    """(OpenAPI path template, handler) for every API route this configuration serves."""
    return API_ROUTES + (DEBUG_ROUTES if debug_enabled(settings) else [])


def template_to_pattern(template: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "([^/]+)", template) + "$"


def make_app(state: web.AppState) -> tornado.web.Application:
    handlers = [(template_to_pattern(t), h, {"state": state}) for t, h in route_table(state.settings)]
    if debug_enabled(state.settings):
        handlers += docs.routes()
    return tornado.web.Application(
        handlers,
        default_handler_class=web.NotFoundHandler,
        default_handler_args={"state": state},
        log_function=access_log,
        compress_response=False,
        debug=False,  # never Tornado's debug mode (autoreload, HTML tracebacks), even with DEBUG=true
    )
