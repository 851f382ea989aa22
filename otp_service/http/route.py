"""What a row of the route table is (`routes.ROUTES`): a path, its handler, the scope and rate limit it
needs, and its operations as the OpenAPI description states them. Apart from the table, so that handlers can
know their row without importing the table that imports them."""

from __future__ import annotations

from dataclasses import dataclass

import tornado.web

from ..core.actions import ACTOR_SCOPES


@dataclass(frozen=True)
class Operation:
    """One method of a path, as the OpenAPI description states it."""

    method: str
    summary: str
    ok: int = 200
    response: str | None = None  # the schema of `data` in the envelope (components/schemas)
    errors: tuple[int, ...] = ()  # statuses beyond those every /api operation can answer (`schemas.API_ERRORS`)
    body: str | None = None  # the request body's schema (JSON)
    body_required: bool = True  # False: the body may be left out (every field has a default)
    query: tuple[str, ...] = ()  # query parameters beyond ?limit= and ?before= (`schemas.QUERY_PARAMETERS`)
    paged: bool = False  # takes ?limit= and ?before=
    tag: str = "devices"
    content: str | None = None  # the media type of a 200 that is not the JSON envelope (a report's file)
    responses: str | None = None  # the operational routes outside /api: their answers, as `schemas.OPERATIONAL`
    auth: bool = True  # needs a Bearer key


@dataclass(frozen=True)
class Route:
    path: str  # an OpenAPI path template: `{device_id}` is one path segment
    handler: type[tornado.web.RequestHandler]
    operations: tuple[Operation, ...]
    scope: str | None = None  # the API client scope it needs (`core.actions.SCOPES`); None: no API key
    rate: str = "default"  # the per-address rate limit it counts against
    debug: bool = False  # served only with DEBUG=true outside production
    tenanted: bool = True  # acts in a tenant (/metrics does not: it must answer while the database is down)

    @property
    def takes_actor(self) -> bool:
        """An administrative route (`core.actions.ACTOR_SCOPES`): it reads X-Actor, the person or ticket behind
        the request, and records it in the audit rows the request writes."""
        return self.scope in ACTOR_SCOPES
