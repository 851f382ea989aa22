"""What every command shares: its environment (with the development secrets), its settings, the database it
was given, and how it fails.

A failure is one line on stderr and an exit code, never a traceback (see `main`'s exit codes): `fail` for
the command that returns it, `Failed` for the helper that raises it, `command_database` for a database that
cannot be reached or whose schema is behind — written here once for every command.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse, urlunparse

from ..config import ConfigError, Settings, database_url, environment, read

if TYPE_CHECKING:
    from peewee import Database

    from ..service import OtpService

Schema = Literal["current", "migrate"] | None

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


ACTOR_HELP = "the person or ticket this is done for, recorded in the audit rows it writes (beside command-line)"


def actor_of(args: argparse.Namespace) -> str | None:
    """`--actor`, checked as the API checks X-Actor (`validation.actor`): None when not given; a bad one ends the
    command with exit code 2 before anything is done."""
    from ..core import errors, validation

    given = getattr(args, "actor", None)
    if given is None:
        return None
    try:
        return validation.actor(given, "--actor")
    except errors.ServiceError as exc:
        raise Failed(exc.message, 2) from None


class Failed(Exception):
    """The command cannot go on: `main()` prints `message` as one line and exits with `code`. Raised by the
    helpers below, which cannot end the command by returning `fail(...)` themselves."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message, self.code = message, code


@contextmanager
def command_database(
    url: str, timeout: float, pool_size: int = 1, *, schema: Schema = None, stale_code: int = 1
) -> Iterator[Database]:
    """The database a command works in, for the `with` block that does the work.

    `schema`: "current" refuses a schema with migrations pending (`Failed` with `stale_code`: audit and
    users have always answered 2 there, serve and clients 1); "migrate" applies them first; None leaves it
    to the caller. A database that cannot be reached, on opening or in the block (peewee's errors, or the
    service's DatabaseUnavailable), ends the command with exit code 1 and the driver's reason.
    """
    from ..core.errors import DatabaseUnavailable
    from ..db.database import UNAVAILABLE_ERRORS, migrate, open_database, pending_migrations

    try:
        database = open_database(url, pool_size, timeout)
        if schema == "migrate":
            migrate(database)
        elif schema == "current" and (pending := pending_migrations(database)):
            raise Failed(
                f"the database schema is out of date ({', '.join(pending)} pending): "
                "run `python -m otp_service migrate` first",
                stale_code,
            )
        yield database
    except UNAVAILABLE_ERRORS + (DatabaseUnavailable,) as exc:
        raise Failed(f"cannot reach the database: {exc}", 1) from None


@contextmanager
def service_for(args: argparse.Namespace) -> Iterator[OtpService]:
    """The service over the database `args` names (default DATABASE_URL), whose schema must be current."""
    from ..service import build_service

    settings = settings_for(args)
    with command_database(settings.database_url, settings.db_timeout, 2, schema="current", stale_code=2) as database:
        yield build_service(settings, database)
