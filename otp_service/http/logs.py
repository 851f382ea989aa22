"""JSON logs, one object a line, for the application and the access log.

Log records never carry a code, key or secret: callers pass ids and reasons only, and
the access log records the route pattern and status, never bodies or headers.
"""

from __future__ import annotations

import functools
import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

from .. import metrics

HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class MalformedRequestsWithoutTheirHeaders(logging.Filter):
    """Tornado logs a malformed request with the text it choked on ("Invalid header value
    'Bearer <key>\\r'"), and that text may be a credential: the record keeps only why it was refused."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and str(record.msg).startswith("Malformed HTTP message"):
            error = str(record.args[-1])
            why = re.split(r"""['"]""", error, maxsplit=1)[0].rstrip(": ")
            if why != error:
                record.args = (*record.args[:-1], f"{why} (its content is not logged)")
        return True


logging.getLogger("tornado.general").addFilter(MalformedRequestsWithoutTheirHeaders())
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def access_log(handler) -> None:
    """Tornado's `log_function`: the request metrics, and one structured line per request (ACCESS_LOG)."""
    request = handler.request
    status = handler.get_status()
    name = type(handler).__name__
    duration = request.request_time()
    method = request.method if request.method in HTTP_METHODS else "OTHER"  # a client can send any token
    _request_counter(name, method, status).inc()
    _latency_histogram(name).observe(duration)
    state = getattr(handler, "state", None)
    if state is not None:
        _set_pool_gauge(state.service.connections_in_use)
        if not state.settings.access_log:
            return
    logging.getLogger("otp_service.access").log(
        logging.INFO if status < 500 else logging.ERROR,
        "request",
        extra={
            "method": request.method,
            # the route's template, not the path: a path holds user and device ids, and logs outlive erasures
            "path": handler.route.path if getattr(handler, "route", None) is not None else None,
            "handler": name,
            "status": status,
            "duration_ms": round(1000.0 * duration, 2),
            "request_id": getattr(handler, "request_id", None),
            "client_ip": handler.ip if state is not None else request.remote_ip,
        },
    )


# Per-request metric updates, with the labelled children looked up once (the lookup costs as much as the update).


@functools.lru_cache(maxsize=1024)
def _request_counter(handler: str, method: str, status: int):
    return metrics.REQUESTS.labels(handler, method, str(status))


@functools.lru_cache(maxsize=64)
def _latency_histogram(handler: str):
    return metrics.LATENCY.labels(handler)


_pool_in_use = [-1]


def _set_pool_gauge(value: int) -> None:
    if value != _pool_in_use[0]:
        _pool_in_use[0] = value
        metrics.DB_POOL_IN_USE.set(value)
