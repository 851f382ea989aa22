"""Checks real responses against the service's own OpenAPI description.

Every response the API tests receive goes through `check_response`, so the spec is tested by
the whole suite rather than by a handful of examples.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache

from jsonschema import Draft202012Validator

from otp_service.http.openapi import build_spec
from otp_service.http.routes import served


@lru_cache(maxsize=1)
def spec() -> dict:
    return build_spec(served(debug=True))


def to_json_schema(node):
    """OpenAPI 3.0 schema → JSON Schema: `nullable: true` becomes a union with null."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@lru_cache(maxsize=1)
def _components() -> dict:
    return to_json_schema(copy.deepcopy(spec()["components"]))


@lru_cache(maxsize=1)
def _templates() -> list[tuple[re.Pattern, str]]:
    # Literal paths first, so /api/v1/devices/register is not taken for /api/v1/devices/{device_id}.
    paths = sorted(spec()["paths"], key=lambda p: (p.count("{"), -len(p)))
    return [(re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", p) + "$"), p) for p in paths]


def template_for(path: str) -> str | None:
    return next((t for pattern, t in _templates() if pattern.match(path.split("?")[0])), None)


def check_response(method: str, path: str, status: int, content_type: str, body) -> None:
    if path.startswith("/docs"):
        return  # the Swagger UI pages (DEBUG only) document the API; they are not part of it
    template = template_for(path)
    if template is None:
        assert status in (404, 429, 401), f"{method} {path} is not in the spec but answered {status}"
        return
    operation = spec()["paths"][template].get(method.lower())
    if operation is None:
        assert status in (405, 429, 401), f"{method} {template} is not in the spec but answered {status}"
        return
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {template} answered {status}, which the spec does not list"
    content = response.get("content")
    if not content or method == "HEAD":
        return
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method} {template} {status} sent {media}, spec says {list(content)}"
    schema = content[media].get("schema")
    if schema is not None:
        root = {**to_json_schema(copy.deepcopy(schema)), "components": _components()}
        errors = sorted(Draft202012Validator(root).iter_errors(body), key=str)
        assert not errors, f"{method} {template} {status}: {errors[0].message} at {list(errors[0].path)}"
