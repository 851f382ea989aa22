"""The application factory: one place that wires settings, database, keyring, limiter and routes."""

from __future__ import annotations

import json
import re
from typing import Any

import tornado.web

from ..config import Settings
from ..service import AsyncOtpService, build_service
from . import docs
from .base import AppState, NotFoundHandler
from .handlers import OpenApiHandler
from .logs import access_log
from .openapi import build_spec
from .ratelimit import RateLimiter
from .route import Route
from .routes import served


def build_state(settings: Settings, database=None, clock=None) -> AppState:
    """Everything a process needs to serve. Call it after any fork: it opens the database pool."""
    service = AsyncOtpService(build_service(settings, database, clock))
    limiter = RateLimiter(
        {
            "verify": settings.rate_limit_verify,
            "default": settings.rate_limit_default,
            "unlock": settings.rate_limit_unlock,  # per device, whoever asks
            "lookup": settings.rate_limit_code_lookup,  # per API client: each lookup costs up to 40,000 HMACs
            **{f"client:{scope}": rate for scope, rate in settings.rate_limit_per_client.items()},
            **{f"tenant:{scope}": rate for scope, rate in settings.rate_limit_per_tenant.items()},
        },
        redis_url=settings.redis_url,
        fail_open=settings.rate_limit_fail_open,
    )
    return AppState(settings=settings, service=service, limiter=limiter)


def debug_enabled(settings: Settings) -> bool:
    return settings.debug and not settings.production


def route_table(settings: Settings) -> tuple[Route, ...]:
    """The routes this configuration serves."""
    return served(debug_enabled(settings))


def template_to_pattern(template: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "([^/]+)", template) + "$"


def make_app(state: AppState) -> tornado.web.Application:
    """The router and the OpenAPI description, both from the route table (the description built once, here)."""
    routes = route_table(state.settings)
    spec = json.dumps(build_spec(routes))
    handlers = []
    for route in routes:
        arguments: dict[str, Any] = {"state": state, "route": route}
        if route.handler is OpenApiHandler:
            arguments["spec"] = spec
        handlers.append((template_to_pattern(route.path), route.handler, arguments))
    if debug_enabled(state.settings):
        handlers += docs.routes()
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=access_log,
        compress_response=False,
        debug=False,  # never Tornado's debug mode (autoreload, HTML tracebacks), even with DEBUG=true
    )
