"""JSON logs, one object a line, for the application and the access log.

Log records never carry a code, key or secret: callers pass ids and reasons only, and
the access log records the route pattern and status, never bodies or headers.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from . import metrics

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
    """Tornado's `log_function`: one structured line per request, and the request metrics."""
    request = handler.request
    status = handler.get_status()
    name = type(handler).__name__
    metrics.REQUESTS.labels(name, request.method, str(status)).inc()
    metrics.LATENCY.labels(name).observe(request.request_time())
    state = getattr(handler, "state", None)
    if state is not None:
        pg = state.service.pg
        metrics.DB_POOL_IN_USE.set(len(getattr(state.service.database, "_in_use", ())) + (pg.in_use if pg else 0))
    logging.getLogger("otp_service.access").log(
        logging.INFO if status < 500 else logging.ERROR,
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "handler": name,
            "status": status,
            "duration_ms": round(1000.0 * request.request_time(), 2),
            "request_id": getattr(handler, "request_id", None),
            "client_ip": handler.ip if hasattr(handler, "state") else request.remote_ip,
        },
    )
