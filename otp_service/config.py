"""Settings read once from the environment.

Every value is checked at start-up so that a bad deployment fails with one line naming
the variable, instead of failing later on the first request that needs it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from limits import parse_many

from .totp import ALGORITHMS, DIGITS_RANGE, INTERVAL_RANGE

MIN_MASTER_SECRET_LENGTH = 32
DEFAULT_DATABASE_URL = "sqlite:///otp_service.db"


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the variable."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    master_secret: str = ""
    master_secret_version: int = 1
    master_secrets_previous: dict[int, str] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    environment: str = "development"
    debug: bool = False
    otp_digits: int = 6
    otp_interval: int = 30
    otp_algorithm: str = "SHA1"
    otp_window: int = 1
    otp_max_drift: int = 10
    otp_max_failures: int = 5
    otp_lockout_seconds: int = 60
    rate_limit_verify: str = "60/minute"
    rate_limit_default: str = "120/minute"
    rate_limit_fail_open: bool = True
    redis_url: str = ""
    metrics_token: str = ""
    trusted_proxy_hops: int = 0
    host: str = "127.0.0.1"
    port: int = 8000
    db_pool_size: int = 8
    db_timeout: float = 5.0
    access_log: bool = True
    generated: tuple[str, ...] = ()  # names of secrets generated for this development run

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def master_secrets(self) -> dict[int, str]:
        return {**self.master_secrets_previous, self.master_secret_version: self.master_secret}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return _parse(env)


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value if value else default


def _int(env: Mapping[str, str], name: str, default: int, allowed: range) -> int:
    raw = _get(env, name, str(default))
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise ConfigError(name, f"must be a whole number, got {raw!r}")
    value = int(raw)
    if value not in allowed:
        raise ConfigError(name, f"must be between {allowed.start} and {allowed.stop - 1}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name, "true" if default else "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _get(env, name, default)
    if raw not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _get(env, name, default)
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(name, f"must be a rate such as '60/minute', got {raw!r}") from None
    return raw


def _previous_secrets(raw: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        version, sep, secret = item.partition(":")
        if not sep or not version.isascii() or not version.isdigit() or not secret:
            raise ConfigError("MASTER_SECRETS_PREVIOUS", "must be 'version:secret' pairs separated by commas")
        if len(secret) < MIN_MASTER_SECRET_LENGTH:
            raise ConfigError(
                "MASTER_SECRETS_PREVIOUS",
                f"version {version}: secret shorter than {MIN_MASTER_SECRET_LENGTH} characters",
            )
        found[int(version)] = secret
    return found


def check_database_url(raw: str) -> str:
    if not re.match(r"^(sqlite|postgres|postgresql)(\+pool)?://", raw):
        raise ConfigError("DATABASE_URL", "must start with sqlite://, postgres:// or postgresql://")
    return raw


def _parse(env: Mapping[str, str]) -> Settings:
    environment = _choice(env, "ENVIRONMENT", "development", ("development", "production", "test"))
    production = environment == "production"
    debug = _bool(env, "DEBUG", False)
    if production and debug:
        raise ConfigError("DEBUG", "must be false when ENVIRONMENT=production")

    generated = []
    master_secret = _get(env, "MASTER_SECRET", "")
    if not master_secret:
        if production:
            raise ConfigError("MASTER_SECRET", "is required in production (32+ characters)")
        master_secret = secrets.token_urlsafe(32)
        generated.append("MASTER_SECRET")
    if len(master_secret) < MIN_MASTER_SECRET_LENGTH:
        raise ConfigError("MASTER_SECRET", f"must be at least {MIN_MASTER_SECRET_LENGTH} characters")

    api_keys = tuple(k.strip() for k in _get(env, "API_KEY", "").split(",") if k.strip())
    if not api_keys:
        if production:
            raise ConfigError("API_KEY", "is required in production")
        api_keys = (secrets.token_urlsafe(24),)
        generated.append("API_KEY")
    if production and any(len(k) < 16 for k in api_keys):
        raise ConfigError("API_KEY", "every key must be at least 16 characters in production")

    version = _int(env, "MASTER_SECRET_VERSION", 1, range(1, 1_000_000))
    previous = _previous_secrets(_get(env, "MASTER_SECRETS_PREVIOUS", ""))
    if version in previous:
        raise ConfigError("MASTER_SECRETS_PREVIOUS", f"must not repeat the current version {version}")

    return Settings(
        database_url=check_database_url(_get(env, "DATABASE_URL", DEFAULT_DATABASE_URL)),
        master_secret=master_secret,
        master_secret_version=version,
        master_secrets_previous=previous,
        api_keys=api_keys,
        environment=environment,
        debug=debug,
        otp_digits=_int(env, "OTP_DIGITS", 6, DIGITS_RANGE),
        otp_interval=_int(env, "OTP_INTERVAL", 30, INTERVAL_RANGE),
        otp_algorithm=_choice(env, "OTP_ALGORITHM", "SHA1", tuple(ALGORITHMS)),
        otp_window=_int(env, "OTP_WINDOW", 1, range(0, 11)),
        otp_max_drift=_int(env, "OTP_MAX_DRIFT", 10, range(0, 101)),
        otp_max_failures=_int(env, "OTP_MAX_FAILURES", 5, range(1, 101)),
        otp_lockout_seconds=_int(env, "OTP_LOCKOUT_SECONDS", 60, range(1, 3601)),
        rate_limit_verify=_rate(env, "RATE_LIMIT_VERIFY", "60/minute"),
        rate_limit_default=_rate(env, "RATE_LIMIT_DEFAULT", "120/minute"),
        rate_limit_fail_open=_choice(env, "RATE_LIMIT_ON_REDIS_ERROR", "open", ("open", "closed")) == "open",
        redis_url=_redis_url(_get(env, "REDIS_URL", "")),
        metrics_token=_get(env, "METRICS_TOKEN", ""),
        trusted_proxy_hops=_int(env, "TRUSTED_PROXY_HOPS", 0, range(0, 11)),
        host=_get(env, "HOST", "127.0.0.1"),
        port=_int(env, "PORT", 8000, range(1, 65536)),
        db_pool_size=_int(env, "DB_POOL_SIZE", 8, range(1, 201)),
        db_timeout=float(_int(env, "DB_TIMEOUT", 5, range(1, 61))),
        access_log=_bool(env, "ACCESS_LOG", True),
        generated=tuple(generated),
    )


def _redis_url(raw: str) -> str:
    if raw and not re.match(r"^rediss?://", raw):
        raise ConfigError("REDIS_URL", "must start with redis:// or rediss://")
    return raw
