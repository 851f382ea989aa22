"""The domain: register, verify, deactivate, unlock and the read models, as plain methods.

Nothing here knows about HTTP. Each state change and its audit row are written in one
transaction, so the trail can never say something happened that did not, or miss
something that did. Failures that must still be audited (a wrong code, a locked device)
are decided inside the transaction and raised only after it commits.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from peewee import Database, IntegrityError, fn

from . import errors, metrics, totp
from .config import Settings
from .database import UNAVAILABLE_ERRORS
from .groupcommit import AlreadyWaiting, GroupCommit
from .hotpath import CachedDevice, DeviceCache, HotPath
from .keys import Keyring, KeyUnavailable, key_fingerprint
from .models import AuditLog, Device, Report
from .pgasync import AsyncPool
from .validation import otp_for_device
from .verification import Outcome, check_code

log = logging.getLogger("otp_service.service")

MAX_LOCK_SECONDS = 3600
USER_AGENT_MAX = 256  # the audit column's size


class Action:
    DEVICE_REGISTERED = "DEVICE_REGISTERED"
    OTP_VERIFICATION = "OTP_VERIFICATION"
    DEVICE_DEACTIVATED = "DEVICE_DEACTIVATED"
    DEVICE_LOCKED = "DEVICE_LOCKED"
    DEVICE_UNLOCKED = "DEVICE_UNLOCKED"
    AUTH_FAILED = "AUTH_FAILED"
    RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True)
class RequestContext:
    """Who is asking, as the audit trail records it (the User-Agent cut to what its column holds)."""

    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.user_agent is not None and len(self.user_agent) > USER_AGENT_MAX:
            object.__setattr__(self, "user_agent", self.user_agent[:USER_AGENT_MAX])


@dataclass(frozen=True)
class NewDevice:
    """A registration before its statement runs: the derived key and the row that will hold its salt."""

    device_id: str
    key: bytes
    fields: dict[str, Any]
    audit_data: dict[str, Any]
    now: float


SYSTEM = RequestContext(ip_address=None, user_agent="otp-service", request_id=None)


def to_datetime(unix_time: float) -> datetime:
    """Naive UTC, the form stored in both databases."""
    return datetime.fromtimestamp(unix_time, UTC).replace(tzinfo=None)


def isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def lock_seconds(failed_attempts: int, max_failures: int, base_seconds: int) -> int:
    """How long a device locks after its `failed_attempts`-th consecutive failure: 0 below the
    threshold, then base, 2×base, 4×base … for each further failure, capped at an hour."""
    if failed_attempts < max_failures:
        return 0
    return min(base_seconds * 2 ** min(failed_attempts - max_failures, 12), MAX_LOCK_SECONDS)


def otpauth_uri(secret_base32: str, device: Device) -> str:
    """The Key Uri Format that authenticator apps scan (label is issuer:account, both percent-encoded)."""
    label = quote(device.user_id, safe="@.")
    params = {"secret": secret_base32}
    if device.issuer:
        label = f"{quote(device.issuer, safe='')}:{label}"
        params["issuer"] = device.issuer
    params.update(algorithm=device.algorithm, digits=str(device.digits), period=str(device.interval))
    return f"otpauth://totp/{label}?{urlencode(params, quote_via=quote)}"


class OtpService:
    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        database: Database,
        clock: Callable[[], float] = time.time,
        pg: AsyncPool | None = None,
    ):
        """`pg`: the event-loop pool (PostgreSQL) that `verify_async`, `register_async` and `ping_async` use."""
        self.settings = settings
        self.keyring = keyring
        self.database = database
        self.clock = clock
        self.devices = DeviceCache()
        self.hot = HotPath(database)
        self.pg = pg
        self.verify_commits = self.register_commits = self.material_reads = None
        if pg is not None:
            below = settings.otp_max_failures - 1  # a hot-path failure never reaches the lock threshold
            self.verify_commits = GroupCommit(pg, self.hot.verify_batch, metrics.VERIFY_BATCH_SIZE, (below,))
            self.register_commits = GroupCommit(pg, self.hot.register_batch, metrics.REGISTER_BATCH_SIZE)
            self.material_reads = GroupCommit(pg, self.hot.material_batch, metrics.READ_BATCH_SIZE)

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def unit_of_work(self, write: bool = False) -> Iterator[None]:
        """A connection (and for writes a transaction) that is returned to the pool on every path.

        A lost database surfaces as DatabaseUnavailable (503); the pool's idle connections
        are dropped then, because after a server restart they are all dead.
        """
        try:
            with self.database.connection_context():
                if write:
                    with self.database.atomic():
                        yield
                else:
                    yield
        except UNAVAILABLE_ERRORS as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            self.database.close_idle()
            metrics.DB_UNAVAILABLE.inc()
            raise errors.DatabaseUnavailable("The database is unavailable; try again shortly.") from None

    def _audit(
        self,
        action: str,
        success: bool,
        ctx: RequestContext,
        now: float,
        *,
        reason: str | None = None,
        device_id: str | None = None,
        user_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        AuditLog.insert(
            timestamp=to_datetime(now),
            action=action,
            success=success,
            reason=reason,
            device_id=device_id,
            user_id=user_id,
            ip_address=ctx.ip_address,
            user_agent=ctx.user_agent or None,
            request_id=ctx.request_id,
            additional_data=json.dumps(data, separators=(",", ":"), sort_keys=True) if data else None,
        ).execute()

    def record(
        self,
        action: str,
        ctx: RequestContext,
        *,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Audit an event that changes no state (a failed authentication, a rate-limit hit)."""
        with self.unit_of_work(write=True):
            self._audit(action, False, ctx, self.clock() if now is None else now, reason=reason, data=data)

    def _device(self, device_id: str) -> Device | None:
        return Device.get_or_none(Device.device_id == device_id)

    # -- commands ---------------------------------------------------------------------------

    def register(
        self,
        device_id: str,
        user_id: str,
        ctx: RequestContext = SYSTEM,
        *,
        digits: int | None = None,
        interval: int | None = None,
        algorithm: str | None = None,
        issuer: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Create a device with a freshly derived key; the only time the key leaves the service.

        An inactive device id may be registered again; it gets a new salt and so a new key.
        """
        new = self._new_device(device_id, user_id, digits, interval, algorithm, issuer, now)
        if self.hot.postgres:  # one statement: claim the id and write the audit row, whatever the outcome
            with self.unit_of_work():
                created = self.hot.register(device_id, new.fields, new.audit_data, ctx)
        else:
            with self.unit_of_work(write=True):
                created = self._claim_device_id(device_id, new.fields)
                self._audit(
                    Action.DEVICE_REGISTERED,
                    created,
                    ctx,
                    new.now,
                    reason=None if created else "DEVICE_EXISTS",
                    device_id=device_id,
                    user_id=user_id,
                    data=new.audit_data if created else None,
                )
        return self._registered(new, created)

    async def register_async(
        self,
        device_id: str,
        user_id: str,
        ctx: RequestContext = SYSTEM,
        *,
        digits: int | None = None,
        interval: int | None = None,
        algorithm: str | None = None,
        issuer: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """`register` on the event loop (PostgreSQL with `pg`), committed with others' (`groupcommit`).
        None when it cannot answer (no `pg`, or the same id twice at once): the caller then runs `register`
        on the thread pool."""
        if self.pg is None:
            return None
        new = self._new_device(device_id, user_id, digits, interval, algorithm, issuer, now)
        row = self.hot.register_row(device_id, new.fields, new.audit_data, ctx)
        try:
            result = await self.register_commits.apply(device_id, row)
        except AlreadyWaiting:
            return None  # the same id twice at once: `register` on the thread pool waits its turn
        if result is None:
            return None  # the batch was rolled back (a deadlock with another process's): nothing was written
        return self._registered(new, result[1])

    def _new_device(
        self,
        device_id: str,
        user_id: str,
        digits: int | None = None,
        interval: int | None = None,
        algorithm: str | None = None,
        issuer: str | None = None,
        now: float | None = None,
    ) -> NewDevice:
        now = self.clock() if now is None else now
        key, salt, version = self.keyring.new_device_key(device_id)
        fields = dict(
            user_id=user_id,
            salt=salt.hex(),
            key_version=version,
            derived_key_hash=key_fingerprint(key),
            digits=digits or self.settings.otp_digits,
            interval=interval or self.settings.otp_interval,
            algorithm=algorithm or self.settings.otp_algorithm,
            issuer=issuer,
            is_active=True,
            created_at=to_datetime(now),
            last_used=None,
            usage_count=0,
            deactivated_at=None,
            last_step=-1,
            drift=0,
            failed_attempts=0,
            locked_until=None,
        )
        audit_data = {k: fields[k] for k in ("digits", "interval", "algorithm")} | {"key_version": version}
        return NewDevice(device_id, key, fields, audit_data, now)

    def _registered(self, new: NewDevice, created: bool) -> dict[str, Any]:
        """The answer to a registration once its statement ran: the key, once, or DEVICE_EXISTS."""
        metrics.REGISTRATIONS.labels("created" if created else "conflict").inc()
        if not created:
            raise errors.DeviceExists(f"An active device with id {new.device_id!r} is already registered.")
        device = Device(device_id=new.device_id, **new.fields)
        self.devices.put(
            new.device_id,
            CachedDevice(device.salt, new.key, device.key_version, device.digits, device.interval, device.algorithm, 0),
        )
        secret_base32 = base64.b32encode(new.key).decode("ascii").rstrip("=")
        return {
            "device_id": new.device_id,
            "user_id": device.user_id,
            "derived_key": base64.b64encode(new.key).decode("ascii"),
            "secret_base32": secret_base32,
            "otpauth_uri": otpauth_uri(secret_base32, device),
            "digits": device.digits,
            "interval": device.interval,
            "algorithm": device.algorithm,
            "issuer": device.issuer,
            "key_version": device.key_version,
            "created_at": isoformat(device.created_at),
        }

    def _claim_device_id(self, device_id: str, fields: dict[str, Any]) -> bool:
        """Insert the device, or take over an inactive row with the same id; False if an active one holds it.

        The savepoint keeps a unique-key clash from a concurrent registration from aborting
        the outer transaction, which still has to write the audit row.
        """
        taken_over = Device.update(**fields).where((Device.device_id == device_id) & ~Device.is_active).execute()
        if taken_over:
            return True
        try:
            with self.database.atomic():
                Device.insert(device_id=device_id, **fields).execute()
        except IntegrityError:
            return False
        return True

    def verify(
        self,
        device_id: str,
        otp: str | int,
        ctx: RequestContext = SYSTEM,
        now: float | None = None,
        *,
        hot: bool = True,
    ) -> dict[str, Any]:
        """Check a code: RFC 6238 with a drift-centred window, replay refusal and lockout.

        The acceptance is one conditional UPDATE (`last_step < step`), so two requests with
        the same code, in any processes, cannot both succeed. `hot=False` skips the hot path
        (its caller has just tried it on the event loop, see `verify_async`).
        """
        now = self.clock() if now is None else now
        outcome = self._verify_cached(device_id, otp, ctx, now) if hot else None
        if outcome is None:
            with self.unit_of_work(write=True):
                device = self._device(device_id)
                outcome = self._check(device, device_id, otp, ctx, now) if device else None
                if device is None:
                    self._audit(
                        Action.OTP_VERIFICATION, False, ctx, now, reason="DEVICE_NOT_FOUND", device_id=device_id
                    )
                    outcome = errors.DeviceNotFound(f"No device with id {device_id!r}.")
        return self._verified(device_id, outcome)

    async def verify_async(
        self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict[str, Any] | None:
        """The hot path on the event loop (PostgreSQL with `pg`): the same decision as `_verify_cached`,
        its write committed with others' (`groupcommit`), without a thread. None when it cannot answer:
        the caller then runs `verify(…, hot=False)` on the thread pool."""
        if self.pg is None:
            return None
        now = self.clock() if now is None else now
        cached = self.devices.get(device_id) or await self._load_cached_async(device_id)
        if cached is None:
            return None
        decision = self._decide(otp, cached, now)
        if decision is None:
            return None
        try:
            if await self.verify_commits.apply(device_id, self._write(device_id, cached, decision, ctx, now)) is None:
                return None  # no longer applied: the full path reads and decides afresh
        except AlreadyWaiting:
            return None
        return self._verified(device_id, self._hot_outcome(device_id, cached, decision))

    async def _load_cached_async(self, device_id: str) -> CachedDevice | None:
        """`_load_cached` on the event loop, with the reads of concurrently requested uncached devices batched
        into one statement (a login storm after a deploy is many of them at once)."""
        try:
            row = await self.material_reads.apply(device_id, (device_id,))
        except AlreadyWaiting:  # this device's material is already being read for another request
            row = await self.pg.fetchone(*self.hot.material_statement(device_id))
            return None if row is None else self._cache_material(device_id, row)
        return None if row is None else self._cache_material(device_id, row[1:])

    def _verified(self, device_id: str, outcome: dict[str, Any] | Exception) -> dict[str, Any]:
        if isinstance(outcome, Exception):
            metrics.VERIFICATIONS.labels("refused", outcome.code).inc()
            raise outcome
        metrics.VERIFICATIONS.labels("valid" if outcome["valid"] else "invalid", outcome.get("reason", "")).inc()
        if not outcome["valid"]:  # the audit row and the metric record it; this line is for debugging
            log.debug("verification failed", extra={"device_id": device_id, "reason": outcome["reason"]})
        return outcome

    def _verify_cached(self, device_id: str, otp: str | int, ctx: RequestContext, now: float) -> dict[str, Any] | None:
        """The hot path (see `hotpath`): decide on cached material, write conditionally in one statement.
        None when it cannot answer (unknown device, ambiguous code, or a stale cache): take the full path."""
        with self.unit_of_work():  # one connection checkout for the read (if needed) and the write
            cached = self.devices.get(device_id) or self._load_cached(device_id)
            decision = None if cached is None else self._decide(otp, cached, now)
            if decision is None:
                return None
            when = to_datetime(now)
            if decision.valid:
                data = self._accept_data(cached, decision)
                applied = self.hot.accept(device_id, cached, decision.step, decision.drift, data, ctx, when)
            else:
                applied = self.hot.fail(device_id, cached, self.settings.otp_max_failures - 1, ctx, when)
        return self._hot_outcome(device_id, cached, decision) if applied else None

    def _decide(self, otp: str | int, cached: CachedDevice, now: float) -> Outcome | None:
        """The verdict on cached material, when the hot path can write it: a code that matches exactly one
        step (accept) or none (a failure that cannot lock the device); None for anything else."""
        try:
            code = otp_for_device(otp, cached.digits)
        except errors.ValidationError:
            return None  # perhaps re-registered with other digits: let the full path judge
        s = self.settings
        decision = check_code(
            cached.key,
            code,
            now,
            digits=cached.digits,
            interval=cached.interval,
            algorithm=cached.algorithm,
            last_step=-1,
            drift=cached.drift,
            window=s.otp_window,
            max_drift=s.otp_max_drift,
        )
        if (decision.valid and len(decision.matches) == 1) or not decision.matches:
            return decision
        return None

    @staticmethod
    def _accept_data(cached: CachedDevice, decision: Outcome) -> dict[str, Any]:
        return {"offset": decision.offset, "drift": decision.drift, "key_version": cached.key_version}

    def _write(self, device_id: str, cached: CachedDevice, decision: Outcome, ctx: RequestContext, now: float) -> tuple:
        """The hot path's write as a row of `hotpath.VERIFY_BATCH` (a step of -1: a counted failure)."""
        when = to_datetime(now)
        if decision.valid:
            data = self._accept_data(cached, decision)
            return self.hot.verify_row(device_id, cached, decision.step, decision.drift, data, ctx, when)
        return self.hot.verify_row(device_id, cached, -1, 0, None, ctx, when)

    @staticmethod
    def _hot_outcome(device_id: str, cached: CachedDevice, decision: Outcome) -> dict[str, Any]:
        if decision.valid:
            cached.drift = decision.drift
            return {"device_id": device_id, "valid": True}
        return {"device_id": device_id, "valid": False, "reason": "INVALID_CODE"}

    def _load_cached(self, device_id: str) -> CachedDevice | None:
        """Read a device's key material (one indexed SELECT) and cache it; None when the full path must judge."""
        row = self.hot.material(device_id)
        return None if row is None else self._cache_material(device_id, row)

    def _cache_material(self, device_id: str, row: tuple) -> CachedDevice | None:
        salt, version, fingerprint, digits, interval, algorithm, drift = row
        try:
            key = self.keyring.device_key(device_id, bytes.fromhex(salt), version, fingerprint)
        except KeyUnavailable:
            return None
        cached = CachedDevice(salt, key, version, digits, interval, algorithm, drift)
        self.devices.put(device_id, cached)
        return cached

    def warm_cache(self, limit: int | None = None) -> int:
        """Load the key material of the most recently used active devices, so their first verification
        after a start or deploy needs one statement, not two. Returns how many were cached."""
        limit = min(limit or self.devices.size, self.devices.size)
        with self.unit_of_work():
            rows = self.hot.recent_material(limit)
        loaded = 0
        for device_id, salt, version, fingerprint, digits, interval, algorithm, drift in reversed(rows):
            try:
                key = self.keyring.device_key(device_id, bytes.fromhex(salt), version, fingerprint)
            except KeyUnavailable:
                continue  # verification will report it
            self.devices.put(device_id, CachedDevice(salt, key, version, digits, interval, algorithm, drift))
            loaded += 1
        return loaded

    def _check(
        self, device: Device, device_id: str, otp: str | int, ctx: RequestContext, now: float
    ) -> dict[str, Any] | Exception:
        s = self.settings
        audit = dict(device_id=device_id, user_id=device.user_id)
        code = otp_for_device(otp, device.digits)  # a malformed code is a 400, not a failed attempt
        if not device.is_active:
            self._audit(Action.OTP_VERIFICATION, False, ctx, now, reason="DEVICE_INACTIVE", **audit)
            return errors.DeviceInactive(f"Device {device_id!r} is deactivated.")
        if device.locked_until and device.locked_until > to_datetime(now):
            self._audit(Action.OTP_VERIFICATION, False, ctx, now, reason="DEVICE_LOCKED", **audit)
            return self._locked_error(device.locked_until, now)
        try:
            key = self.keyring.device_key(
                device_id, bytes.fromhex(device.salt), device.key_version, device.derived_key_hash
            )
        except KeyUnavailable as exc:
            log.error("cannot derive the key of device %s: %s", device_id, exc)
            self._audit(Action.OTP_VERIFICATION, False, ctx, now, reason="KEY_UNAVAILABLE", **audit)
            return errors.KeyUnavailableError(
                "This device's key cannot be derived: the service's master secret is misconfigured."
            )
        cached = CachedDevice(
            device.salt, key, device.key_version, device.digits, device.interval, device.algorithm, device.drift
        )
        self.devices.put(device_id, cached)

        decision = check_code(
            key,
            code,
            now,
            digits=device.digits,
            interval=device.interval,
            algorithm=device.algorithm,
            last_step=device.last_step,
            drift=device.drift,
            window=s.otp_window,
            max_drift=s.otp_max_drift,
        )
        if decision.valid:
            accepted = (
                Device.update(
                    last_step=decision.step,
                    drift=decision.drift,
                    failed_attempts=0,
                    locked_until=None,
                    usage_count=Device.usage_count + 1,
                    last_used=to_datetime(now),
                )
                .where(
                    (Device.device_id == device_id)
                    & (Device.last_step < decision.step)
                    & Device.is_active
                    & (Device.locked_until.is_null() | (Device.locked_until <= to_datetime(now)))
                )
                .execute()
            )
            if accepted:
                cached.drift = decision.drift
                data = {"offset": decision.offset, "drift": decision.drift, "key_version": device.key_version}
                self._audit(Action.OTP_VERIFICATION, True, ctx, now, data=data, **audit)
                return {"device_id": device_id, "valid": True}
            # Another request accepted this step (or locked the device) between our read and our update.
            return self._refuse(ctx, now, audit, "REPLAYED")
        if decision.reason == "REPLAYED":
            return self._refuse(ctx, now, audit, "REPLAYED")
        return self._fail(device, ctx, now, audit)

    def _refuse(self, ctx: RequestContext, now: float, audit: dict[str, Any], reason: str) -> dict[str, Any]:
        """A replayed code: refused and audited, but not counted toward a lock (the owner may have double-submitted)."""
        self._audit(Action.OTP_VERIFICATION, False, ctx, now, reason=reason, **audit)
        return {"device_id": audit["device_id"], "valid": False, "reason": reason}

    def _fail(self, device: Device, ctx: RequestContext, now: float, audit: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        (
            Device.update(failed_attempts=Device.failed_attempts + 1)
            .where(Device.device_id == device.device_id)
            .execute()
        )
        # Read back under the row lock the UPDATE holds, so concurrent failures each see their own count.
        failures = Device.select(Device.failed_attempts).where(Device.device_id == device.device_id).scalar()
        self._audit(
            Action.OTP_VERIFICATION, False, ctx, now, reason="INVALID_CODE", data={"failed_attempts": failures}, **audit
        )
        seconds = lock_seconds(failures, s.otp_max_failures, s.otp_lockout_seconds)
        if seconds:
            until = to_datetime(now) + timedelta(seconds=seconds)
            Device.update(locked_until=until).where(Device.device_id == device.device_id).execute()
            metrics.LOCKOUTS.inc()
            self._audit(
                Action.DEVICE_LOCKED,
                True,
                ctx,
                now,
                reason="TOO_MANY_FAILURES",
                data={"failed_attempts": failures, "lock_seconds": seconds, "locked_until": isoformat(until)},
                **audit,
            )
        return {"device_id": device.device_id, "valid": False, "reason": "INVALID_CODE"}

    @staticmethod
    def _locked_error(locked_until: datetime, now: float) -> errors.ServiceError:
        retry = max(1, math.ceil((locked_until - to_datetime(now)).total_seconds()))
        return errors.DeviceLocked(
            f"Too many failed attempts; the device is locked for {retry} more seconds.",
            details={"locked_until": isoformat(locked_until), "retry_after": retry},
            headers={"Retry-After": str(retry)},
        )

    def deactivate(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict[str, Any]:
        """Idempotent: deactivating an inactive device succeeds and keeps the first deactivation time."""
        now = self.clock() if now is None else now
        self.devices.discard(device_id)
        with self.unit_of_work(write=True):
            Device.update(is_active=False, deactivated_at=to_datetime(now)).where(
                (Device.device_id == device_id) & Device.is_active
            ).execute()
            device = self._device(device_id)
            if device is None:
                self._audit(Action.DEVICE_DEACTIVATED, False, ctx, now, reason="DEVICE_NOT_FOUND", device_id=device_id)
            else:
                self._audit(Action.DEVICE_DEACTIVATED, True, ctx, now, device_id=device_id, user_id=device.user_id)
        if device is None:
            raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
        metrics.DEACTIVATIONS.inc()
        return {"device_id": device_id, "is_active": False, "deactivated_at": isoformat(device.deactivated_at)}

    def unlock(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        with self.unit_of_work(write=True):
            changed = Device.update(failed_attempts=0, locked_until=None).where(Device.device_id == device_id).execute()
            if changed:
                device = self._device(device_id)
                self._audit(Action.DEVICE_UNLOCKED, True, ctx, now, device_id=device_id, user_id=device.user_id)
            else:
                self._audit(Action.DEVICE_UNLOCKED, False, ctx, now, reason="DEVICE_NOT_FOUND", device_id=device_id)
        if not changed:
            raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
        metrics.UNLOCKS.inc()
        return {"device_id": device_id, "failed_attempts": 0, "locked_until": None}

    # -- queries ------------------------------------------------------------------------------

    def device_info(self, device_id: str) -> dict[str, Any]:
        with self.unit_of_work():
            device = self._device(device_id)
        if device is None:
            raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
        return describe(device)

    def user_devices(self, user_id: str) -> dict[str, Any]:
        with self.unit_of_work():
            devices = list(
                Device.select().where(Device.user_id == user_id).order_by(Device.created_at, Device.device_id)
            )
        return {"user_id": user_id, "devices": [describe(d) for d in devices]}

    def user_audit(self, user_id: str, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        """Newest first, keyset-paginated on the row id so deep pages cost the same as the first."""
        query = AuditLog.select().where(AuditLog.user_id == user_id)
        if before is not None:
            query = query.where(AuditLog.id < before)
        with self.unit_of_work():
            rows = list(query.order_by(AuditLog.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "user_id": user_id,
            "entries": [audit_entry(r) for r in rows],
            "next_before": rows[-1].id if more else None,
        }

    def stats(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        windows = {"last_24h": to_datetime(now - 86400), "last_7d": to_datetime(now - 7 * 86400)}
        with self.unit_of_work():
            by_state = dict(
                Device.select(Device.is_active, fn.COUNT(Device.device_id)).group_by(Device.is_active).tuples()
            )
            by_version = {
                str(v): {"active": a or 0, "total": t}
                for v, t, a in Device.select(
                    Device.key_version, fn.COUNT(Device.device_id), fn.SUM(Device.is_active.cast("integer"))
                )
                .group_by(Device.key_version)
                .tuples()
            }
            activity = {}
            for name, since in windows.items():
                counts = {
                    (a, bool(ok)): n
                    for a, ok, n in (
                        AuditLog.select(AuditLog.action, AuditLog.success, fn.COUNT(AuditLog.id))
                        .where(
                            (AuditLog.timestamp >= since)
                            & AuditLog.action.in_([Action.DEVICE_REGISTERED, Action.OTP_VERIFICATION])
                        )
                        .group_by(AuditLog.action, AuditLog.success)
                        .tuples()
                    )
                }
                activity[name] = {
                    "registrations": counts.get((Action.DEVICE_REGISTERED, True), 0),
                    "verifications_succeeded": counts.get((Action.OTP_VERIFICATION, True), 0),
                    "verifications_failed": counts.get((Action.OTP_VERIFICATION, False), 0),
                }
        active, inactive = by_state.get(True, 0), by_state.get(False, 0)
        return {
            "devices": {"total": active + inactive, "active": active, "inactive": inactive},
            "by_key_version": by_version,
            **activity,
            "generated_at": isoformat(to_datetime(now)),
        }

    def current_code(self, device_id: str, now: float | None = None) -> dict[str, Any]:
        """For DEBUG test set-ups only: the code a device shows now."""
        now = self.clock() if now is None else now
        with self.unit_of_work():
            device = self._device(device_id)
        if device is None:
            raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
        try:
            key = self.keyring.device_key(
                device_id, bytes.fromhex(device.salt), device.key_version, device.derived_key_hash
            )
        except KeyUnavailable:
            raise errors.KeyUnavailableError("This device's key cannot be derived.") from None
        return {"device_id": device_id, "otp": totp.totp(key, now, device.digits, device.interval, device.algorithm)}

    def list_reports(self, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        query = Report.select(Report.id, Report.kind, Report.period_start, Report.period_end, Report.created_at)
        if before is not None:
            query = query.where(Report.id < before)
        with self.unit_of_work():
            rows = list(query.order_by(Report.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        entries = [
            {
                "id": r.id,
                "kind": r.kind,
                "period_start": isoformat(r.period_start),
                "period_end": isoformat(r.period_end),
                "created_at": isoformat(r.created_at),
                "html_url": f"/api/v1/reports/{r.id}",
                "data_url": f"/api/v1/reports/{r.id}/data",
            }
            for r in rows[:limit]
        ]
        return {"reports": entries, "next_before": entries[-1]["id"] if more else None}

    def report_content(self, report_id: int, field: str) -> tuple[Report, bytes | str]:
        """One stored report's HTML or CSV zip (only the requested column is read)."""
        column = {"html": Report.html, "data": Report.data_zip}[field]
        with self.unit_of_work():
            row = (
                Report.select(Report.id, Report.kind, Report.period_start, Report.period_end, column)
                .where(Report.id == report_id)
                .first()
            )
        if row is None:
            raise errors.NotFound(f"No report with id {report_id}.")
        return row, (row.html if field == "html" else bytes(row.data_zip))

    def ping(self) -> None:
        with self.unit_of_work():
            self.database.execute_sql("SELECT 1")

    async def ping_async(self) -> bool:
        """`ping` on the event loop; False when there is no `pg` (the caller then runs `ping`)."""
        if self.pg is None:
            return False
        await self.pg.fetchone("SELECT 1")
        return True


def describe(device: Device) -> dict[str, Any]:
    """Everything about a device except anything that could help derive its key."""
    return {
        "device_id": device.device_id,
        "user_id": device.user_id,
        "is_active": device.is_active,
        "created_at": isoformat(device.created_at),
        "last_used": isoformat(device.last_used),
        "usage_count": device.usage_count,
        "deactivated_at": isoformat(device.deactivated_at),
        "digits": device.digits,
        "interval": device.interval,
        "algorithm": device.algorithm,
        "issuer": device.issuer,
        "key_version": device.key_version,
        "failed_attempts": device.failed_attempts,
        "locked_until": isoformat(device.locked_until),
    }


def audit_entry(row: AuditLog) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": isoformat(row.timestamp),
        "action": row.action,
        "success": row.success,
        "reason": row.reason,
        "device_id": row.device_id,
        "user_id": row.user_id,
        "ip_address": row.ip_address,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "additional_data": json.loads(row.additional_data) if row.additional_data else None,
    }
