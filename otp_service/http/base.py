"""What every HTTP answer shares: the JSON envelope, the error rendering, bodies streamed and bounded, the
request id, the client's address as the audit trail and the rate limits see it, and the state a process's
handlers share.

Every response is `{"success", "message", "data"}`, errors add `"error": {"code", ...}`.
No request can produce an HTML error page or a traceback: `write_error` renders every
failure, expected or not, in the same shape.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import tornado.web

from ..audit.rows import RequestContext, normal_ip
from ..config import Settings
from ..core import errors
from ..core.transitions import DEFAULT_TENANT
from ..service import AsyncOtpService
from .ratelimit import RateLimiter
from .refusals import RefusalLog

if TYPE_CHECKING:
    from .route import Route

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
    refusals: RefusalLog = field(default_factory=RefusalLog)


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


@lru_cache(maxsize=4096)
def client_network(ip: str, ipv6_prefix: int) -> str:
    """`ip` itself for IPv4 (or no address), its /`ipv6_prefix` network for IPv6."""
    if ":" not in ip:
        return ip
    return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Bodies are streamed in, so an oversized one is refused (413, JSON) from its Content-Length before a
    byte of it is read, and a chunked one stops being kept once it passes the limit."""

    def initialize(self, state: AppState, route: Route | None = None) -> None:
        """`route`: the row of the route table this handler serves (None: no route matched)."""
        self.state, self.route = state, route
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

    def finish(self, chunk: str | bytes | dict | None = None):  # type: ignore[override]
        """An answer sent before the request's body was read (a refusal in `prepare`: 401, 403, 404, 413, 429)
        ends the connection — Tornado cannot find the next request without reading this one's body, so it closes
        once the answer is out — and says so: without `Connection: close` a client that pipelined or reuses the
        connection would wait for answers that never come, or take the close for a failure of its next request."""
        if not self._body_read():
            self.set_header("Connection", "close")
        return super().finish(chunk)

    def _body_read(self) -> bool:
        """Whether the whole request body has been received (or the client went away): Tornado resolves the
        request's body future then, and only after `prepare` has let the body be read."""
        future = getattr(self.request, "_body_future", None)
        return future is None or future.done()

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
        caller, tenant = getattr(self, "caller", None), getattr(self, "tenant", None)
        # the tenant the request acts in; refused before that was known: the client's own, or the default
        own = caller.tenant_id if caller is not None else DEFAULT_TENANT
        tenant_id = tenant.id if tenant is not None else own
        return RequestContext(
            ip_address=self.ip,
            user_agent=self.request.headers.get("User-Agent"),
            request_id=self.request_id,
            actor=caller.name if caller is not None else None,
            tenant_id=tenant_id,
            by=getattr(self, "by", None),  # X-Actor: read only once the request got through `access` (see there)
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
            self.route.path if self.route is not None else "(no route)",  # the template: a path holds ids
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
