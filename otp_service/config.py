"""Settings, read once from the environment, from one table: each variable's name, parser and default.

Every value is checked at start-up so that a bad deployment fails with one line naming the variable,
instead of failing later on the first request that needs it. No other module reads the environment
(but for PROMETHEUS_MULTIPROC_DIR, prometheus_client's own, which `serve` sets before importing it).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from limits import parse_many

from .core.actions import ROUTE_SCOPES
from .core.secret_strength import PUBLISHED_SECRETS, spellings, weakness
from .core.signing import key_bytes, new_signing_seed
from .core.totp import ALGORITHMS, DIGITS_RANGE, INTERVAL_RANGE

MIN_MASTER_SECRET_LENGTH = 32
MIN_PRODUCTION_API_KEY_LENGTH = 16
MIN_METRICS_TOKEN_LENGTH = 32
HARD_LOCK_PER_BUDGET = 10  # OTP_HARD_LOCK_FAILURES, when unset, is this many times OTP_MAX_FAILURES
DEFAULT_DATABASE_URL = "sqlite:///otp_service.db"
ENVIRONMENTS = ("development", "production", "test")
SEED_BYTES = 32  # an Ed25519 seed (AUDIT_SIGNING_KEY)
GENERATE = "generate one, e.g. openssl rand -base64 32"
# After the first attempt, the delays between a webhook's attempts (each ±20 % jitter): 5 s … 24 h, about 3 days
DEFAULT_RETRY_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 86400)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names the variable."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


# -- parsers: text in, value out, ValueError with the problem ------------------------------------


def whole(allowed: range) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise ValueError(f"must be a whole number, got {raw!r}")
        if int(raw) not in allowed:
            raise ValueError(f"must be between {allowed.start} and {allowed.stop - 1}, got {int(raw)}")
        return int(raw)

    return parse


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """None for an empty value (the setting then follows from others), else `parse`."""
    return lambda raw: None if raw == "" else parse(raw)


def seconds(allowed: range) -> Callable[[str], float]:
    parse_whole = whole(allowed)
    return lambda raw: float(parse_whole(raw))


def schedule(raw: str) -> tuple[float, ...]:
    """Seconds between attempts, e.g. "5 300 1800": each a positive number of at most a day, 1 to 20 of them."""
    parts = raw.replace(",", " ").split()
    try:
        delays = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"must be seconds separated by spaces, got {raw!r}") from None
    if not 1 <= len(delays) <= 20 or not all(0 < d <= 86400 for d in delays):
        raise ValueError(f"must be 1-20 delays, each more than 0 and at most 86400 seconds, got {raw!r}")
    return delays


def boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def choice(*choices: str, fold: bool = False) -> Callable[[str], str]:
    """One of `choices`; with `fold`, in any case (and answered in the case written here)."""
    canonical = {c.lower() if fold else c: c for c in choices}

    def parse(raw: str) -> str:
        value = canonical.get(raw.lower() if fold else raw)
        if value is None:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def rate(raw: str) -> str:
    try:
        items = parse_many(raw)
    except ValueError:
        raise ValueError(f"must be a rate such as '60/minute', got {raw!r}") from None
    if any(item.amount < 1 for item in items):
        raise ValueError(f"must allow at least one request, got {raw!r}")
    return raw


def per_scope_rates(raw: str) -> dict[str, str]:
    """`verify=6000/minute read=1200/minute …`: a rate (in `limits`' notation) for each client scope."""
    rates = {}
    for pair in raw.split():
        scope, sep, text = pair.partition("=")
        if not sep or scope not in ROUTE_SCOPES:
            raise ValueError(
                f"must be scope=rate pairs separated by spaces (scopes: {', '.join(ROUTE_SCOPES)}), got {pair!r}"
            )
        rates[scope] = rate(text)
    return rates


def database_url(raw: str) -> str:
    if not re.match(r"^(sqlite|postgres|postgresql)(\+pool)?://", raw):
        raise ValueError("must start with sqlite://, postgres:// or postgresql:// (each also as …+pool://)")
    return raw


def redis_url(raw: str) -> str:
    if raw and not re.match(r"^rediss?://", raw):
        raise ValueError("must start with redis:// or rediss://")
    return raw


def text(raw: str) -> str:
    return raw


def key_list(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def previous_secrets(raw: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        version, sep, secret = item.partition(":")
        if not sep or not version.isascii() or not version.isdigit() or not secret:
            raise ValueError("must be 'version:secret' pairs separated by commas")
        if len(secret) < MIN_MASTER_SECRET_LENGTH:
            raise ValueError(f"version {version}: secret shorter than {MIN_MASTER_SECRET_LENGTH} characters")
        found[int(version)] = secret
    return found


def master_secret(raw: str) -> str:
    if raw and len(raw) < MIN_MASTER_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_MASTER_SECRET_LENGTH} characters")
    return raw


def audit_key(raw: str) -> str:
    """An Ed25519 key (seed or public key): 32 bytes in base64."""
    if raw:
        key_bytes(raw)
    return raw


def named_keys(raw: str) -> dict[str, str]:
    """'id:base64key' pairs separated by commas."""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, key = item.rpartition(":")
        if not sep or not name or not key:
            raise ValueError("must be 'key-id:base64-key' pairs separated by commas")
        try:
            audit_key(key)
        except ValueError as exc:
            raise ValueError(f"key {name!r} {exc}") from None
        found[name] = key
    return found


@dataclass(frozen=True)
class Variable:
    name: str
    parse: Callable[[str], Any]
    default: str  # as it would be written in the environment; an empty or unset variable takes it

    @property
    def field(self) -> str:
        return self.name.lower()


VARIABLES = (
    Variable("ENVIRONMENT", choice(*ENVIRONMENTS, fold=True), "development"),
    Variable("DATABASE_URL", database_url, DEFAULT_DATABASE_URL),
    Variable("MASTER_SECRET", master_secret, ""),
    Variable("MASTER_SECRET_VERSION", whole(range(1, 1_000_000)), "1"),
    Variable("MASTER_SECRETS_PREVIOUS", previous_secrets, ""),
    Variable("API_KEY", key_list, ""),
    Variable("DEBUG", boolean, "false"),
    Variable("OTP_DIGITS", whole(DIGITS_RANGE), "6"),
    Variable("OTP_INTERVAL", whole(INTERVAL_RANGE), "30"),
    Variable("OTP_ALGORITHM", choice(*ALGORITHMS, fold=True), "SHA1"),
    Variable("OTP_WINDOW", whole(range(0, 11)), "1"),
    Variable("OTP_MAX_DRIFT", whole(range(0, 101)), "10"),
    Variable("OTP_MAX_FAILURES", whole(range(1, 101)), "5"),
    Variable("OTP_LOCKOUT_SECONDS", whole(range(1, 3601)), "60"),
    Variable("OTP_HARD_LOCK_FAILURES", optional(whole(range(2, 10001))), ""),  # "": 10 × OTP_MAX_FAILURES
    Variable("OTP_RESYNC_WINDOW", whole(range(1, 201)), "40"),
    Variable("AUDIT_CHAINS", whole(range(1, 65)), "16"),
    Variable("AUDIT_SIGNING_KEY", audit_key, ""),
    Variable("AUDIT_SIGNING_KEY_ID", text, ""),  # "": a fingerprint of the public key
    Variable("AUDIT_PREVIOUS_SIGNING_KEY", named_keys, ""),
    Variable("AUDIT_VERIFY_KEYS", named_keys, ""),
    Variable("AUDIT_CHECKPOINT_SECONDS", whole(range(10, 86401)), "300"),
    Variable("AUDIT_CHECKPOINT_ROWS", whole(range(100, 10_000_001)), "10000"),
    Variable("ENROLLMENT_CONFIRMATION", choice("optional", "required", fold=True), "optional"),
    Variable("ENROLLMENT_TTL_SECONDS", whole(range(60, 86401)), "600"),
    Variable("RATE_LIMIT_VERIFY", rate, "60/minute"),
    Variable("RATE_LIMIT_DEFAULT", rate, "120/minute"),
    Variable("RATE_LIMIT_UNLOCK", rate, "10/hour"),
    Variable("RATE_LIMIT_CODE_LOOKUP", rate, "60/hour"),
    Variable(
        "RATE_LIMIT_PER_CLIENT",
        per_scope_rates,
        "verify=6000/minute enroll=600/minute manage=600/minute read=1200/minute reports=120/minute metrics=120/minute "
        "webhooks=120/minute",
    ),
    Variable(
        "RATE_LIMIT_PER_TENANT",
        per_scope_rates,
        "verify=60000/minute enroll=6000/minute manage=6000/minute read=12000/minute reports=1200/minute "
        "webhooks=1200/minute",
    ),
    Variable("RATE_LIMIT_ON_REDIS_ERROR", choice("open", "closed"), "open"),
    Variable("RATE_LIMIT_IPV6_PREFIX", whole(range(32, 129)), "64"),
    Variable("REDIS_URL", redis_url, ""),
    Variable("METRICS_TOKEN", text, ""),
    Variable("TRUSTED_PROXY_HOPS", whole(range(0, 11)), "0"),
    Variable("HOST", text, "127.0.0.1"),
    Variable("PORT", whole(range(1, 65536)), "8000"),
    Variable("WEB_CONCURRENCY", whole(range(1, 65)), "1"),
    Variable("SHUTDOWN_GRACE_SECONDS", seconds(range(0, 3601)), "20"),
    Variable("DB_POOL_SIZE", whole(range(1, 201)), "8"),
    Variable("DB_TIMEOUT", seconds(range(1, 61)), "5"),
    Variable("OTP_APPLICATION_NAME", text, "otp-service"),
    Variable("LOG_LEVEL", choice("DEBUG", "INFO", "WARNING", "ERROR", fold=True), "INFO"),
    Variable("ACCESS_LOG", boolean, "true"),
    Variable("WEBHOOK_DELIVERY", boolean, "true"),  # the delivery worker in every `serve` process
    Variable("WEBHOOK_ALLOW_PRIVATE", boolean, "false"),  # development only: loopback/private receivers, http://
    Variable("WEBHOOK_TIMEOUT_SECONDS", seconds(range(1, 61)), "15"),
    Variable("WEBHOOK_RETRY_SCHEDULE", schedule, " ".join(map(str, DEFAULT_RETRY_SCHEDULE))),
    Variable("WEBHOOK_POLL_SECONDS", seconds(range(0, 61)), "1"),
    Variable("WEBHOOK_RETENTION_DAYS", whole(range(1, 3651)), "30"),  # finished deliveries and their messages
)
BY_NAME = {v.name: v for v in VARIABLES}


def read(env: Mapping[str, str], names: Iterable[str]) -> dict[str, Any]:
    """The named variables, parsed, by field name (`DB_TIMEOUT` → `db_timeout`)."""
    values = {}
    for name in names:
        variable = BY_NAME[name]
        raw = env.get(name, "").strip() or variable.default
        try:
            values[variable.field] = variable.parse(raw)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    return values


@dataclass(frozen=True)
class Settings:
    environment: str
    database_url: str
    master_secret: str
    master_secret_version: int
    master_secrets_previous: dict[int, str]
    api_key: tuple[str, ...]
    debug: bool
    otp_digits: int
    otp_interval: int
    otp_algorithm: str
    otp_window: int
    otp_max_drift: int
    otp_max_failures: int
    otp_lockout_seconds: int
    otp_hard_lock_failures: int
    otp_resync_window: int
    audit_chains: int
    audit_signing_key: str
    audit_signing_key_id: str
    audit_previous_signing_key: dict[str, str]
    audit_verify_keys: dict[str, str]
    audit_checkpoint_seconds: int
    audit_checkpoint_rows: int
    enrollment_confirmation: str
    enrollment_ttl_seconds: int
    rate_limit_verify: str
    rate_limit_default: str
    rate_limit_unlock: str
    rate_limit_code_lookup: str
    rate_limit_per_client: dict[str, str]
    rate_limit_per_tenant: dict[str, str]
    rate_limit_on_redis_error: str
    rate_limit_ipv6_prefix: int
    redis_url: str
    metrics_token: str
    trusted_proxy_hops: int
    host: str
    port: int
    web_concurrency: int
    shutdown_grace_seconds: float
    db_pool_size: int
    db_timeout: float
    otp_application_name: str
    log_level: str
    access_log: bool
    webhook_delivery: bool
    webhook_allow_private: bool
    webhook_timeout_seconds: float
    webhook_retry_schedule: tuple[float, ...]
    webhook_poll_seconds: float
    webhook_retention_days: int
    generated: tuple[str, ...] = ()  # names of secrets generated for this development run

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def api_keys(self) -> tuple[str, ...]:
        return self.api_key

    @property
    def rate_limit_fail_open(self) -> bool:
        return self.rate_limit_on_redis_error == "open"

    @property
    def master_secrets(self) -> dict[int, str]:
        return {**self.master_secrets_previous, self.master_secret_version: self.master_secret}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every variable, checked, with development secrets generated where none are set (and refused
        in production)."""
        values = read(os.environ if env is None else env, BY_NAME)
        production = values["environment"] == "production"
        if production and values["debug"]:
            raise ConfigError("DEBUG", "must be false when ENVIRONMENT=production")
        if production and values["webhook_allow_private"]:
            raise ConfigError("WEBHOOK_ALLOW_PRIVATE", "must be false when ENVIRONMENT=production (SSRF)")
        generated = []
        if not values["master_secret"]:
            if production:
                raise ConfigError(
                    "MASTER_SECRET", f"is required in production ({MIN_MASTER_SECRET_LENGTH}+ characters)"
                )
            values["master_secret"] = secrets.token_urlsafe(32)
            generated.append("MASTER_SECRET")
        if not values["api_key"]:
            if production:
                raise ConfigError("API_KEY", "is required in production")
            values["api_key"] = (secrets.token_urlsafe(24),)
            generated.append("API_KEY")
        if production and any(len(k) < MIN_PRODUCTION_API_KEY_LENGTH for k in values["api_key"]):
            raise ConfigError(
                "API_KEY", f"every key must be at least {MIN_PRODUCTION_API_KEY_LENGTH} characters in production"
            )
        if production and len(values["metrics_token"]) < MIN_METRICS_TOKEN_LENGTH:
            raise ConfigError(
                "METRICS_TOKEN",
                f"must be set in production, {MIN_METRICS_TOKEN_LENGTH}+ characters (not one of the API keys)",
            )
        if values["otp_hard_lock_failures"] is None:
            values["otp_hard_lock_failures"] = HARD_LOCK_PER_BUDGET * values["otp_max_failures"]
        elif values["otp_hard_lock_failures"] <= values["otp_max_failures"]:
            raise ConfigError(
                "OTP_HARD_LOCK_FAILURES", f"must be more than OTP_MAX_FAILURES ({values['otp_max_failures']})"
            )
        for name in ("RATE_LIMIT_PER_CLIENT", "RATE_LIMIT_PER_TENANT"):  # a scope not named keeps its default
            field = name.lower()
            values[field] = {**read({}, [name])[field], **values[field]}
        if values["metrics_token"] and values["metrics_token"] in values["api_key"]:
            raise ConfigError("METRICS_TOKEN", "must not be one of the API keys (a scraper needs no API access)")
        if values["master_secret_version"] in values["master_secrets_previous"]:
            version = values["master_secret_version"]
            raise ConfigError("MASTER_SECRETS_PREVIOUS", f"must not repeat the current version {version}")
        if not values["audit_signing_key"]:
            if production:
                raise ConfigError("AUDIT_SIGNING_KEY", "is required in production (32 random bytes, base64)")
            values["audit_signing_key"] = new_signing_seed()
            generated.append("AUDIT_SIGNING_KEY")
        if production:
            refuse_unsafe_secrets(values)
        return cls(**values, generated=tuple(generated))


def secrets_of(values: Mapping[str, Any]) -> list[tuple[str, str, str, str | bytes, int]]:
    """Every secret the settings hold: (variable, which entry of it — "" for a single value, value, what its
    strength is judged on — the seed's bytes for an Ed25519 key —, minimum length in characters or bytes)."""
    keys, found = values["api_key"], []
    found.append(("MASTER_SECRET", "", values["master_secret"], values["master_secret"], MIN_MASTER_SECRET_LENGTH))
    for version, secret in sorted(values["master_secrets_previous"].items()):
        found.append(("MASTER_SECRETS_PREVIOUS", f"version {version}", secret, secret, MIN_MASTER_SECRET_LENGTH))
    for i, key in enumerate(keys, 1):
        found.append(("API_KEY", f"key {i} of {len(keys)}", key, key, MIN_PRODUCTION_API_KEY_LENGTH))
    found.append(("METRICS_TOKEN", "", values["metrics_token"], values["metrics_token"], MIN_METRICS_TOKEN_LENGTH))
    seed = values["audit_signing_key"]
    found.append(("AUDIT_SIGNING_KEY", "", seed, key_bytes(seed), SEED_BYTES))
    for name, seed in values["audit_previous_signing_key"].items():
        found.append(("AUDIT_PREVIOUS_SIGNING_KEY", f"key {name!r}", seed, key_bytes(seed), SEED_BYTES))
    return found


def refuse_unsafe_secrets(values: Mapping[str, Any]) -> None:
    """Production runs on none of: a secret published in this repository (anyone has it), one that looks
    guessable (`core.secret_strength`: one symbol repeated, a repeated pattern or run, too few distinct
    characters — a constant-byte Ed25519 seed), one value in two places (holding one would be holding the
    other: a scraper's token must not be an API key or the master secret). The message names the variable and
    the entry, and never the value."""
    seen: dict[str, str] = {}
    for variable, entry, secret, material, min_length in secrets_of(values):
        subject, names = f"{entry} " if entry else "", spellings(secret)
        if names & PUBLISHED_SECRETS:
            raise ConfigError(variable, f"{subject}is a value published in otp-service's code or docs; {GENERATE}")
        problem = weakness(material, min_length)
        if problem is not None:
            raise ConfigError(variable, f"{subject}{problem}; {GENERATE}")
        if reused := next((seen[name] for name in sorted(names) if name in seen), None):
            raise ConfigError(variable, f"{subject}is the same value as {reused}: each secret must be its own")
        seen.update(dict.fromkeys(names, f"{variable} ({entry})" if entry else variable))


def environment(env: Mapping[str, str]) -> str:
    """ENVIRONMENT as the settings read it (trimmed, lower case, checked)."""
    return read(env, ["ENVIRONMENT"])["environment"]
