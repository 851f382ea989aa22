"""The OpenAPI 3.0 description served at /openapi.json, built from the route table (`routes`) and the body
schemas (`schemas`): the paths, methods, scopes and error statuses the router serves are the ones described.
Tests check every response the suite sees against it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..core import validation
from .route import Operation, Route
from .schemas import (
    API_ERRORS,
    ERRORS,
    OPERATIONAL,
    PATH_PARAMETERS,
    QUERY_PARAMETERS,
    SCHEMAS,
    WEBHOOKS,
    _json,
    _obj,
    _ref,
    _s,
)

_PAGE = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": validation.PAGE_LIMIT_MAX},
        "description": f"page size (default {validation.PAGE_LIMIT_DEFAULT})",
    },
    {
        "name": "before",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "`next_before` of the previous page",
    },
]


_ACTOR = {
    "name": "X-Actor",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": validation.MAX_ACTOR},
    "description": "the person or ticket this administrative request is made for (UTF-8; 1-128 printable "
    "characters, no control characters, no surrounding spaces; NFKC-normalised), recorded as `by` in every audit "
    "row the request writes, beside the client. Invalid: 400 `INVALID_ACTOR`, nothing written",
    "example": "alice@example.com (INC-4711)",
}


def _envelope(data_schema: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        ["success", "message", "data"], success={"type": "boolean", "enum": [True]}, message=_s(), data=data_schema
    )


def _parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
        for name in re.findall(r"\{([a-z_]+)\}", path)
    ]


def _operation(route: Route, op: Operation) -> dict[str, Any]:
    summary = op.summary + (f" (scope: {route.scope})" if route.scope else "")
    described: dict[str, Any] = {"summary": summary, "tags": [op.tag]}
    if op.responses is not None:
        described["responses"] = OPERATIONAL[op.responses]
    else:
        ok = (
            {"description": "OK", "content": {op.content: {}}}
            if op.content
            else _json(_envelope(_ref(op.response) if op.response else {"type": "object"}), "OK")
        )
        responses = {str(op.ok): ok}
        for code in sorted(set(API_ERRORS) | set(op.errors) | ({413, 415} if op.body else set())):
            responses[str(code)] = _json(_ref("Error"), ERRORS[code])
        described["responses"] = responses
        parameters = (
            _parameters(route.path)
            + [QUERY_PARAMETERS[name] for name in op.query]
            + (_PAGE if op.paged else [])
            + ([_ACTOR] if route.takes_actor else [])
        )
        if parameters:
            described["parameters"] = parameters
        if op.body:
            content = {"application/json": {"schema": _ref(op.body)}}
            described["requestBody"] = {"required": op.body_required, "content": content}
    if not op.auth:
        described["security"] = []
    if route.scope:
        described["x-required-scope"] = route.scope
    return described


def build_spec(routes: Iterable[Route]) -> dict[str, Any]:
    """The description of `routes` (those one configuration serves: `routes.served`)."""
    paths = {route.path: {op.method: _operation(route, op) for op in route.operations} for route in routes}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "otp-service",
            "version": __version__,
            "description": "TOTP (RFC 6238) device registration and verification. Every response is "
            "`{success, message, data}`; errors add `error.code`. The webhooks the service sends (Standard "
            "Webhooks v1) are under `x-webhooks`, one per event type.",
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
        # What the service sends to a tenant's webhook endpoints. OpenAPI 3.1 calls this `webhooks`; this is a 3.0
        # document (Swagger UI 4 renders 3.0 only), where the same object goes in the extension Redoc reads.
        "x-webhooks": WEBHOOKS,
    }
