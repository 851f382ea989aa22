"""Command line: `python -m otp_service serve|migrate|report|demo-data`.

Configuration errors end the command with one line naming the variable and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from .config import ConfigError, Settings

DEV_SECRETS_FILE = Path(".dev-secrets")


def _dev_environment() -> dict[str, str]:
    """The environment, plus development secrets kept in .dev-secrets so devices survive a restart.

    Production never reads or writes the file: there the secrets must come from the environment.
    """
    env = dict(os.environ)
    if env.get("ENVIRONMENT", "development") == "production":
        return env
    stored: dict[str, str] = {}
    if DEV_SECRETS_FILE.exists():
        for line in DEV_SECRETS_FILE.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                stored[name.strip()] = value.strip()
    fresh = {name: stored.get(name) or secrets.token_urlsafe(32) for name in ("MASTER_SECRET", "API_KEY")}
    if fresh != {k: stored.get(k) for k in fresh}:
        DEV_SECRETS_FILE.write_text("".join(f"{k}={v}\n" for k, v in fresh.items()))
        DEV_SECRETS_FILE.chmod(0o600)
    for name, value in fresh.items():
        if not env.get(name):
            env[name] = value
    return env


def load_settings(dev_secrets: bool = True) -> Settings:
    return Settings.from_env(_dev_environment() if dev_secrets else None)


def _fail(message: str, code: int = 2) -> int:
    print(f"otp-service: {message}", file=sys.stderr)
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from .database import UNAVAILABLE_ERRORS, migrate, open_database

    settings = Settings.from_env(_with_url(args))
    try:
        database = open_database(settings.database_url, 1, settings.db_timeout)
        applied = migrate(database)
    except UNAVAILABLE_ERRORS as exc:
        return _fail(f"cannot reach the database: {exc}".strip(), 1)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .database import UNAVAILABLE_ERRORS, migrate, open_database, pending_migrations
    from .logs import configure_logging
    from .server import serve

    settings = load_settings()
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        database = open_database(settings.database_url, 1, settings.db_timeout)
        if settings.production and not args.migrate:
            pending = pending_migrations(database)
            if pending:
                return _fail(
                    f"the database schema is out of date ({', '.join(pending)} pending): "
                    "run `python -m otp_service migrate` first",
                    1,
                )
        else:
            migrate(database)
        database.close_all()
    except UNAVAILABLE_ERRORS as exc:
        return _fail(f"cannot reach the database: {exc}".strip(), 1)
    if not settings.production:
        _print_welcome(settings)
    return serve(settings, processes=args.processes, grace_seconds=args.grace)


def _print_welcome(settings: Settings) -> None:
    base = f"http://{settings.host}:{settings.port}"
    key = settings.api_keys[0]
    print(
        f"""
otp-service {settings.environment} on {base}  (database: {settings.database_url})
  API key:  {key}   (development only; kept in {DEV_SECRETS_FILE})
  Try:      curl -s -X POST {base}/api/v1/devices/register -H 'Authorization: Bearer {key}' \\
              -H 'Content-Type: application/json' -d '{{"device_id": "DEVICE-123", "user_id": "user@example.com"}}'
""",
        flush=True,
    )


def _with_url(args: argparse.Namespace) -> dict[str, str]:
    env = _dev_environment()
    if getattr(args, "database_url", None):
        env["DATABASE_URL"] = args.database_url
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otp_service", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the HTTP API")
    p.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="worker processes (default: WEB_CONCURRENCY or 1)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("SHUTDOWN_GRACE_SECONDS", "20")),
        help="seconds to let requests finish after SIGTERM",
    )
    p.add_argument("--migrate", action="store_true", help="apply pending migrations first (also in production)")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.add_argument("--database-url")
    p.set_defaults(run=cmd_migrate)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
