"""The application factory: one place that wires settings, database, keyring, limiter and routes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import tornado.web

from . import web
from .config import Settings
from .database import open_database
from .keys import Keyring
from .logs import access_log
from .ratelimit import RateLimiter
from .service import OtpService

DEVICE = r"([^/]+)"


def build_state(settings: Settings, database=None, clock=None) -> web.AppState:
    """Everything a process needs to serve. Call it after any fork: it opens the database pool."""
    database = database or open_database(settings.database_url, settings.db_pool_size, settings.db_timeout)
    keyring = Keyring(settings.master_secrets, settings.master_secret_version)
    service = OtpService(settings, keyring, database, **({"clock": clock} if clock else {}))
    limiter = RateLimiter(
        {"verify": settings.rate_limit_verify, "default": settings.rate_limit_default},
        redis_url=settings.redis_url,
        fail_open=settings.rate_limit_fail_open,
    )
    executor = ThreadPoolExecutor(max_workers=settings.db_pool_size, thread_name_prefix="db")
    return web.AppState(settings=settings, service=service, executor=executor, limiter=limiter)


def routes(state: web.AppState) -> list:
    api = "/api/v1"
    table = [
        (r"/health", web.HealthHandler),
        (rf"{api}/devices/register", web.RegisterHandler),
        (rf"{api}/otp/verify", web.VerifyHandler),
        (rf"{api}/devices/{DEVICE}/deactivate", web.DeactivateHandler),
        (rf"{api}/devices/{DEVICE}/unlock", web.UnlockHandler),
        (rf"{api}/devices/{DEVICE}", web.DeviceHandler),
        (rf"{api}/users/{DEVICE}/devices", web.UserDevicesHandler),
        (rf"{api}/users/{DEVICE}/audit", web.UserAuditHandler),
        (rf"{api}/stats", web.StatsHandler),
    ]
    if state.settings.debug and not state.settings.production:
        table.append((rf"{api}/debug/devices/{DEVICE}/otp", web.DebugOtpHandler))
    return [(pattern, handler, {"state": state}) for pattern, handler in table]


def make_app(state: web.AppState) -> tornado.web.Application:
    return tornado.web.Application(
        routes(state),
        default_handler_class=web.NotFoundHandler,
        default_handler_args={"state": state},
        log_function=access_log,
        compress_response=False,
        debug=False,  # never Tornado's debug mode (autoreload, HTML tracebacks), even with DEBUG=true
    )
