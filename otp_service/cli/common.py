"""What every command shares: its environment (with the development secrets), its settings, the database URL
it was given, and how it fails.

A failure is one line on stderr and an exit code, never a traceback (see `main`'s exit codes).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

from ..config import ConfigError, Settings, database_url, environment, read

if TYPE_CHECKING:
    from ..service.commands import OtpService

DEV_SECRETS_FILE = Path(".dev-secrets")
DEV_SECRETS = ("MASTER_SECRET", "API_KEY", "AUDIT_SIGNING_KEY")  # 32 random bytes each (URL-safe base64)


def fail(message: str, code: int = 2) -> int:
    """One line on stderr (a driver's message may span several) and the exit code."""
    print(f"otp-service: {' '.join(message.split())}", file=sys.stderr)
    return code


def dev_environment() -> dict[str, str]:
    """The environment, plus development secrets kept in .dev-secrets so devices survive a restart.

    Production never reads or writes the file: there the secrets must come from the environment.
    """
    env = dict(os.environ)
    if environment(env) == "production":
        return env
    stored: dict[str, str] = {}
    if DEV_SECRETS_FILE.exists():
        for line in DEV_SECRETS_FILE.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                stored[name.strip()] = value.strip()
    fresh = {name: stored.get(name) or secrets.token_urlsafe(32) for name in DEV_SECRETS}
    if fresh != {k: stored.get(k) for k in fresh}:
        # Created readable by its owner only (not written first and restricted after).
        descriptor = os.open(DEV_SECRETS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("".join(f"{k}={v}\n" for k, v in fresh.items()))
        DEV_SECRETS_FILE.chmod(0o600)  # a file left from an older version may have been created wider
    for name, value in fresh.items():
        if not env.get(name):
            env[name] = value
    return env


def load_settings(dev_secrets: bool = True) -> Settings:
    return Settings.from_env(dev_environment() if dev_secrets else None)


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings, with the database `--database-url` names (when given) in place of DATABASE_URL."""
    env = dev_environment()
    if getattr(args, "database_url", None):
        env["DATABASE_URL"] = args.database_url
    return Settings.from_env(env)


def url_for(args: argparse.Namespace) -> str:
    """Commands that only touch the database (migrate, report) need no secrets, only its URL."""
    if args.database_url:
        try:
            return database_url(args.database_url)
        except ValueError as exc:
            raise ConfigError("--database-url", str(exc)) from None
    return read(os.environ, ["DATABASE_URL"])["database_url"]


def masked_url(url: str) -> str:
    """A database URL fit to print: its password replaced by ***."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    return urlunparse(parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)))


def service_for(args: argparse.Namespace) -> OtpService:
    """The service over the database `args` names (default DATABASE_URL), checked to be current; or a reason."""
    from ..db.database import open_database, pending_migrations
    from ..service.commands import build_service

    settings = settings_for(args)
    database = open_database(settings.database_url, 2, settings.db_timeout)
    if pending_migrations(database):
        raise ConfigError("DATABASE_URL", "the schema is out of date: run `python -m otp_service migrate` first")
    return build_service(settings, database)
