"""`serve`: check that the port is free and the schema current, then hand over to `http.server.serve`."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ..config import Settings, read
from .common import DEV_SECRETS_FILE, command_database, fail, load_settings, masked_url


def _prepare_multiprocess_metrics(processes: int) -> str | None:
    """Several processes share metrics through files; the folder must be set (and empty) before
    prometheus_client is first imported, and its files from an earlier run must go. Returns the folder
    when this process made it (and so removes it when it is done)."""
    if processes <= 1:
        return None
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = given or tempfile.mkdtemp(prefix="otp-metrics-")
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return None if given else folder


def cmd_serve(args: argparse.Namespace) -> int:
    defaults = read(os.environ, ["WEB_CONCURRENCY", "SHUTDOWN_GRACE_SECONDS"])
    if args.processes is None:
        args.processes = defaults["web_concurrency"]
    if args.grace is None:
        args.grace = defaults["shutdown_grace_seconds"]
    if args.processes < 1:
        return fail("--processes (or WEB_CONCURRENCY) must be at least 1")
    made = _prepare_multiprocess_metrics(args.processes)
    try:
        return _serve(args)
    finally:
        if made and os.getpid() == _MAIN_PID:  # forked workers return through here too
            shutil.rmtree(made, ignore_errors=True)


_MAIN_PID = os.getpid()


def _serve(args: argparse.Namespace) -> int:
    from ..http.logs import configure_logging
    from ..http.server import serve

    settings = load_settings()
    configure_logging(settings.log_level)
    problem = _cannot_listen(settings.host, settings.port)
    if problem:
        return fail(f"cannot listen on {settings.host}:{settings.port}: {problem}", 1)
    # Production changes its schema only when told to (`migrate`, or `serve --migrate`); development keeps up.
    schema = "current" if settings.production and not args.migrate else "migrate"
    with command_database(settings.database_url, settings.db_timeout, schema=schema) as database:
        database.close_all()  # the workers open their own pools (after any fork)
    if not settings.production:
        _print_welcome(settings, key_from_environment=bool(os.environ.get("API_KEY", "").strip()))
    return serve(settings, processes=args.processes, grace_seconds=args.grace)


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the service could not bind its port (already in use, not allowed), or None: checked before the
    banner invites anyone to connect, and before any worker starts."""
    from tornado.netutil import bind_sockets

    try:
        for sock in bind_sockets(port, host):
            sock.close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _print_welcome(settings: Settings, key_from_environment: bool) -> None:
    """The development banner. A key the operator set in the environment is never printed (the banner may
    end up in a platform's logs); one generated into .dev-secrets is, so a newcomer can try the API."""
    base = f"http://{settings.host}:{settings.port}"
    if key_from_environment:
        key, where = "<your API_KEY>", "from the environment; not shown"
    else:
        key, where = settings.api_keys[0], f"development only; kept in {DEV_SECRETS_FILE}"
    print(
        f"""
otp-service {settings.environment} on {base}  (database: {masked_url(settings.database_url)})
  API key:  {key}   ({where})
  Try:      curl -s -X POST {base}/api/v1/devices/register -H 'Authorization: Bearer {key}' \\
              -H 'Content-Type: application/json' -d '{{"device_id": "DEVICE-123", "user_id": "user@example.com"}}'
""",
        flush=True,
    )
