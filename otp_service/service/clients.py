"""API clients: who may call what. Each client has a name, scopes and a key that is shown once; the
database keeps only the key's SHA-256 (a key is 256 random bits, so its digest reveals nothing and can
be looked up directly). Every client belongs to one tenant and acts in it. The keys in API_KEY are clients
too, with every scope (`admin`) and `operator`, named `env` (or `env-1`, `env-2`… by position), in the
default tenant, so deployments from before clients and tenants existed keep working.

Scopes (`core.actions.SCOPES`): `verify` (verify codes), `enroll` (register devices), `manage` (deactivate,
unlock), `read` (device info, a user's devices and audit trail, statistics), `reports` (the reports API),
`metrics` (/metrics), `webhooks` (the tenant's webhook endpoints); `admin` holds them all; `operator` may act
in any tenant, naming it (X-Tenant).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..audit.journal import Journal
from ..audit.rows import RequestContext, audit_row
from ..core.actions import ROUTE_SCOPES, SCOPES, Action
from ..core.transitions import DEFAULT_TENANT, AuditEvent, to_datetime
from ..db.models import ApiClient, Tenant

COMMAND_LINE = RequestContext(user_agent="otp-service clients (command line)", actor="command-line")


NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}", re.ASCII)
KEY_PREFIX = "otpk_"
REMEMBER_SECONDS = 5.0  # a revocation or rotation takes effect in every process within this
REMEMBERED_KEYS = 4096


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: frozenset[str]
    tenant_id: int = DEFAULT_TENANT  # the tenant it acts in

    def may(self, scope: str) -> bool:
        """Whether it holds `scope` (admin holds every route's scope, never `operator`)."""
        return scope in self.scopes or ("admin" in self.scopes and scope in ROUTE_SCOPES)

    @property
    def operator(self) -> bool:
        """May act in any tenant, naming it (X-Tenant)."""
        return "operator" in self.scopes


def parse_scopes(text: str) -> tuple[str, ...]:
    """`verify,enroll` → ('enroll', 'verify'); ValueError naming what is wrong."""
    scopes = {s.strip() for s in text.split(",") if s.strip()}
    unknown = scopes - set(SCOPES)
    if not scopes or unknown:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {text!r}")
    return tuple(sorted(scopes))


RESERVED = re.compile(r"env(-[0-9]+)?|metrics-token|command-line|otp-service", re.ASCII)  # names the service gives


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError("a client name is 1-64 of a-z 0-9 . _ - (starting with a letter or digit)")
    if RESERVED.fullmatch(name):
        raise ValueError(f"{name!r} is a name the service gives (API_KEY's keys, the metrics token, itself)")
    return name


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def matching(key: str, digests: Sequence[bytes]) -> int | None:
    """The position of the digest `key`'s SHA-256 equals, or None. Every digest is compared, with no early
    exit and on equal-length values: timing reveals neither which one matched, nor how much, nor any
    key's length."""
    sent, found = bytes.fromhex(digest(key)), None
    for n, candidate in enumerate(digests):
        if hmac.compare_digest(sent, candidate):
            found = n
    return found


def env_callers(api_keys: tuple[str, ...]) -> list[Caller]:
    names = ["env"] if len(api_keys) == 1 else [f"env-{n}" for n in range(1, len(api_keys) + 1)]
    return [Caller(name, frozenset({"admin", "operator"})) for name in names]  # the deployment's own keys


class Directory:
    """Who a key belongs to. API_KEY's keys are compared in constant time (digest against digest, every one);
    database clients are looked up by digest and remembered for a few seconds, wrong keys too, so neither a
    busy client nor a stream of wrong keys costs a query per request."""

    def __init__(self, api_keys: tuple[str, ...], clock: Callable[[], float] = time.time):
        self._env = env_callers(api_keys)
        self._env_digests = tuple(bytes.fromhex(digest(key)) for key in api_keys)
        self.clock = clock
        self._remembered: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, key: str) -> tuple[bool, Caller | None]:
        """(True, caller or None) when the answer is known without the database; (False, None) otherwise."""
        found = matching(key, self._env_digests)
        if found is not None:
            return True, self._env[found]
        sent = digest(key)
        with self._lock:
            entry = self._remembered.get(sent)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def load(self, key: str) -> Caller | None:
        """The database's answer (run in a unit of work); remembered. Marks the client as used."""
        sent, now = digest(key), to_datetime(self.clock())
        row = (
            ApiClient.select()
            .where(
                (ApiClient.key_digest == sent)
                | ((ApiClient.previous_key_digest == sent) & (ApiClient.previous_valid_until > now))
            )
            .first()
        )
        caller = None
        if row is not None and row.revoked_at is None and (row.expires_at is None or row.expires_at > now):
            caller = Caller(row.name, frozenset(row.scopes.split(",")), row.tenant_id)
            ApiClient.update(last_used_at=now).where(ApiClient.id == row.id).execute()
        with self._lock:
            self._remembered[sent] = (time.monotonic() + REMEMBER_SECONDS, caller)
            while len(self._remembered) > REMEMBERED_KEYS:
                self._remembered.popitem(last=False)
        return caller


# -- the commands behind `python -m otp_service clients …` (each in the caller's transaction) ----------------


def create(
    journal: Journal,
    name: str,
    scopes: tuple[str, ...],
    now: float,
    expires: datetime | None = None,
    tenant_id: int = DEFAULT_TENANT,
    by: str | None = None,
) -> str:
    """A new client of `tenant_id`; returns its key (shown this once). `by`, here and below: the person or
    ticket the operator named (`--actor`), in the audit row."""
    check_name(name)
    existing = ApiClient.get_or_none(ApiClient.name == name)
    if existing is not None and existing.revoked_at is None:
        raise ValueError(f"a client named {name!r} exists already: rotate its key, or revoke it first")
    key = new_key()
    fields = dict(
        scopes=",".join(scopes),
        key_digest=digest(key),
        created_at=to_datetime(now),
        expires_at=expires,
        tenant_id=tenant_id,
    )
    if existing is None:
        ApiClient.create(name=name, **fields)
    else:  # a revoked client's name, given again: a new key and new scopes, nothing of the old one
        fields.update(previous_key_digest=None, previous_valid_until=None, last_used_at=None, revoked_at=None)
        ApiClient.update(**fields).where(ApiClient.id == existing.id).execute()
    _audit(journal, Action.CLIENT_CREATED, now, {"client": name, "scopes": ",".join(scopes)}, tenant_id, by)
    return key


def rotate(journal: Journal, name: str, now: float, grace: timedelta, by: str | None = None) -> str:
    """A new key for `name`; the current one keeps working for `grace`, then stops. Returns the new key."""
    client = _active(name)
    key = new_key()
    client.previous_key_digest, client.previous_valid_until = client.key_digest, to_datetime(now) + grace
    client.key_digest = digest(key)
    client.save()
    _audit(
        journal,
        Action.CLIENT_ROTATED,
        now,
        {"client": name, "previous_key_until": client.previous_valid_until.isoformat()},
        client.tenant_id,
        by,
    )
    return key


def revoke(journal: Journal, name: str, now: float, by: str | None = None) -> None:
    client = _active(name)
    client.revoked_at = to_datetime(now)
    client.save()
    _audit(journal, Action.CLIENT_REVOKED, now, {"client": name}, client.tenant_id, by)


def _audit(journal: Journal, action: Action, now: float, data: dict, tenant_id: int, by: str | None) -> None:
    """In the caller's transaction, like the change it records; in the client's tenant's trail."""
    ctx = replace(COMMAND_LINE, tenant_id=tenant_id, by=by)
    journal.append([audit_row(AuditEvent(action, True, None, data), to_datetime(now), None, None, ctx)])


def listing() -> list[dict]:
    tenants = {t.id: t.name for t in Tenant.select(Tenant.id, Tenant.name)}
    return [
        {
            "name": c.name,
            "scopes": c.scopes,
            "created_at": c.created_at,
            "last_used_at": c.last_used_at,
            "expires_at": c.expires_at,
            "revoked_at": c.revoked_at,
            "previous_key_until": c.previous_valid_until,
            "tenant_id": c.tenant_id,
            "tenant": tenants.get(c.tenant_id, str(c.tenant_id)),
        }
        for c in ApiClient.select().order_by(ApiClient.tenant_id, ApiClient.name)
    ]


def _active(name: str) -> ApiClient:
    client = ApiClient.get_or_none(ApiClient.name == name)
    if client is None or client.revoked_at is not None:
        raise ValueError(f"no active client named {name!r}")
    return client
