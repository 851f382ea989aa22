"""The service: its commands (register, verify, deactivate, unlock) and its read side, with no HTTP in it.

A command is a `Plan`: its decision as a pure function of the device's state (`verification.decide`,
`lifecycle.decide_*`) and how to answer once the engine has applied that decision with its audit rows
(`engine`, `store`). So each rule exists once, and every caller — HTTP handlers, CLI, demo data, tests —
gets the same decision applied the same way.

`OtpService` runs plans and queries blocking (CLI, demo data, tests, the thread pool). `AsyncOtpService`
is what the HTTP handlers await: on PostgreSQL commands run on the event loop, their statements shared
with concurrent requests' (`pg_eventloop`); everything else, and SQLite, on a bounded thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlencode

import segno
from peewee import Database

from .. import metrics
from ..audit import chain as integrity
from ..audit import checkpoints, retention
from ..audit import verify as audit_verify
from ..audit.journal import Journal
from ..audit.rows import SYSTEM, RequestContext, audit_row
from ..config import Settings
from ..core import errors, lifecycle, recovery, totp, verification
from ..core.keys import Keyring, KeyUnavailable, key_fingerprint
from ..core.transitions import AuditEvent, DeviceState, Transition, isoformat, to_datetime, unix_time
from ..db.database import UNAVAILABLE_ERRORS, open_database
from ..db.models import Action, Report
from ..persistence.engine import Engine, Plan
from ..persistence.pg_eventloop import AsyncPool, EventLoopStore, StateListener
from ..persistence.store import Decide, PostgresStore, open_store
from . import queries
from .clients import Caller, Directory

log = logging.getLogger("otp_service.service")
T = TypeVar("T")
RECOVERY_PURPOSE = "recovery-codes"

__all__ = ["SYSTEM", "Action", "AsyncOtpService", "OtpService", "RequestContext", "build_service", "otpauth_uri"]


def otpauth_uri(secret_base32: str, device: DeviceState) -> str:
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
        self, settings: Settings, keyring: Keyring, database: Database, clock: Callable[[], float] = time.time
    ):
        self.settings, self.keyring, self.database, self.clock = settings, keyring, database, clock
        self.policy = verification.Policy(
            window=settings.otp_window,
            max_drift=settings.otp_max_drift,
            max_failures=settings.otp_max_failures,
            lockout_seconds=settings.otp_lockout_seconds,
            hard_lock_failures=settings.otp_hard_lock_failures,
            resync_window=settings.otp_resync_window,
        )
        self.journal = Journal(database, keyring.purpose_key(integrity.PURPOSE), settings.audit_chains)
        self.audit_keys = checkpoints.Keys.from_settings(settings)
        self._last_signed: tuple[int, str] | None = None  # (id, sha256) of the last checkpoint this process signed
        self.store = open_store(database, self.journal)
        self.engine = Engine(self.store)
        self.clients = Directory(settings.api_keys, clock)

    def caller(self, key: str) -> Caller | None:
        """The client a key belongs to (None: no active client has it)."""
        known, caller = self.clients.known(key)
        return caller if known else self.query(self.clients.load, key)

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

    def execute(self, plan: Plan) -> dict[str, Any]:
        with self.unit_of_work():
            return self.engine.run(plan)

    def apply_locked(self, device_id: str, decide: Decide, ctx: RequestContext) -> Transition:
        """The engine's last resort for a contended device, for callers on another thread (`EventLoopStore`)."""
        with self.unit_of_work():
            return self.store.apply_locked(device_id, decide, ctx)

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    # -- commands ---------------------------------------------------------------------------

    def register(self, device_id: str, user_id: str, ctx: RequestContext = SYSTEM, **options: Any) -> dict[str, Any]:
        """Create a device with a freshly derived key; the only time the key leaves the service.
        Options: digits, interval, algorithm, issuer (None: the configured default), confirm (the device
        stays pending until its first code; always, with ENROLLMENT_CONFIRMATION=required), qr ("svg" or
        "png": the otpauth URI's QR code too) and now."""
        return self.execute(self.plan_register(device_id, user_id, ctx, **options))

    def confirm(self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict:
        """A pending device's first code: activates it (that step becomes the replay floor)."""
        return self.execute(self.plan_confirm(device_id, otp, ctx, now))

    def resync(
        self, device_id: str, otp1: str | int, otp2: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict[str, Any]:
        """Two consecutive codes set the device's clock offset (`verification.decide_resync`)."""
        return self.execute(self.plan_resync(device_id, otp1, otp2, ctx, now))

    def reset_drift(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict[str, Any]:
        return self.execute(self.plan_drift_reset(device_id, ctx, now))

    def expire_pending(self, now: float | None = None, limit: int = 500) -> int:
        """Record the expiry of enrolments not confirmed in time (the server runs this every minute; any
        request touching such a device records it too). Returns how many expired now."""
        now = self._now(now)
        expired = 0
        for device_id in self.query(self.store.pending_expired, to_datetime(now), limit):
            expired += self.execute(self.plan_expire(device_id, now))["expired"]
        return expired

    def issue_recovery_codes(self, user_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict:
        """Ten new one-time codes for a user, replacing any earlier set; shown this once, kept as keyed hashes."""
        codes, at = recovery.new_codes(), to_datetime(self._now(now))
        key, version = self.keyring.purpose_key(RECOVERY_PURPOSE), self.keyring.current_version
        hashes = [recovery.code_hash(key, user_id, code) for code in codes]
        decide = partial(recovery.decide_issue, user_id, hashes=hashes, key_version=version, at=at)
        with self.unit_of_work():
            transition = self.store.apply_recovery(user_id, decide, ctx)
        metrics.RECOVERY_CODES.labels("issued").inc()
        return {"user_id": user_id, "codes": codes, "created_at": isoformat(transition.after.created_at)}

    def use_recovery_code(
        self, user_id: str, code: str, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict:
        """Check a recovery code: valid once, wrong ones counted against the user's own budget."""
        code, at = recovery.normalise(code), to_datetime(self._now(now))
        decide = partial(recovery.decide_use, user_id, code=code, key=self._recovery_key, at=at, policy=self.policy)
        with self.unit_of_work():
            return _recovery_used(user_id, self.store.apply_recovery(user_id, decide, ctx))

    def lookup_code(
        self,
        device_id: str,
        otp: str | int,
        start: datetime,
        end: datetime,
        ctx: RequestContext = SYSTEM,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Every time step in [start, end] for which `otp` was the device's code (`verification.lookup_steps`)."""
        now = self._now(now)
        state, key = self._device_and_key(device_id)
        from_, to = unix_time(start), unix_time(end)
        steps, last = verification.lookup_steps(key, state, otp, from_, to, now, self.policy)
        interval = state.interval
        searched_to = min(to, (last + 1) * interval)
        matches = [
            {
                "step": step,
                "valid_from": isoformat(to_datetime(step * interval)),
                "valid_to": isoformat(to_datetime((step + 1) * interval)),
            }
            for step in steps
        ]
        data = {"from": isoformat(to_datetime(from_)), "to": isoformat(to_datetime(to)), "matches": len(steps)}
        self.record(
            Action.CODE_LOOKUP, ctx, data=data, now=now, success=True, device_id=device_id, user_id=state.user_id
        )
        return {
            "device_id": device_id,
            "from": data["from"],
            "to": data["to"],
            "searched_to": isoformat(to_datetime(max(from_, searched_to))),
            "matches": matches,
        }

    def verify(self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict:
        """Check a code (`verification.decide`): accepted at most once, counted against the failure budget."""
        return self.execute(self.plan_verify(device_id, otp, ctx, now))

    def deactivate(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict[str, Any]:
        return self.execute(self.plan_deactivate(device_id, ctx, now))

    def unlock(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict[str, Any]:
        return self.execute(self.plan_unlock(device_id, ctx, now))

    def record(
        self,
        action: Action,
        ctx: RequestContext,
        *,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
        now: float | None = None,
        success: bool = False,
        device_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Audit an event that changes no device (a failed authentication, a rate-limit hit, a code lookup)."""
        row = audit_row(AuditEvent(action, success, reason, data), to_datetime(self._now(now)), device_id, user_id, ctx)
        with self.unit_of_work(write=True):
            self.store.record([row])

    # -- plans: each command's decision, and its answer -------------------------------------

    def plan_register(
        self,
        device_id: str,
        user_id: str,
        ctx: RequestContext = SYSTEM,
        *,
        digits: int | None = None,
        interval: int | None = None,
        algorithm: str | None = None,
        issuer: str | None = None,
        confirm: bool = False,
        qr: str | None = None,
        now: float | None = None,
    ) -> Plan:
        s, at = self.settings, to_datetime(self._now(now))
        pending = confirm or s.enrollment_confirmation == "required"
        key, salt, version = self.keyring.new_device_key(device_id)
        fresh = DeviceState(
            device_id=device_id,
            user_id=user_id,
            salt=salt.hex(),
            key_version=version,
            derived_key_hash=key_fingerprint(key),
            digits=digits or s.otp_digits,
            interval=interval or s.otp_interval,
            algorithm=algorithm or s.otp_algorithm,
            issuer=issuer,
            is_active=True,
            created_at=at,
            last_used=None,
            usage_count=0,
            deactivated_at=None,
            last_step=-1,
            drift=0,
            failed_attempts=0,
            locked_until=None,
            version=0,
            pending_until=at + timedelta(seconds=s.enrollment_ttl_seconds) if pending else None,
        )
        uri = otpauth_uri(base64.b32encode(key).decode("ascii").rstrip("="), fresh)
        image = None if qr is None else qr_data_uri(uri, qr)  # before the write: one that cannot be made fails it
        decide = partial(lifecycle.decide_register, device_id, fresh=fresh, at=at)
        answer = partial(_registered, key, image)
        return Plan(device_id, decide, ctx, answer, assume=None)  # assume no device yet: a new id is the usual case

    def plan_verify(
        self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> Plan:
        now = self._now(now)

        def decide(state: DeviceState | None) -> Transition:
            return verification.decide(device_id, state, self._key(state), otp, now, self.policy)

        return Plan(device_id, decide, ctx, _verified)

    def plan_deactivate(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_deactivate, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, ctx, _deactivated)

    def plan_unlock(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_unlock, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, ctx, _unlocked)

    def plan_confirm(
        self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> Plan:
        now = self._now(now)

        def decide(state: DeviceState | None) -> Transition:
            return verification.decide(device_id, state, self._key(state), otp, now, self.policy, confirm=True)

        return Plan(device_id, decide, ctx, _confirmed)

    def plan_resync(
        self, device_id: str, otp1: str | int, otp2: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> Plan:
        now = self._now(now)

        def decide(state: DeviceState | None) -> Transition:
            return verification.decide_resync(device_id, state, self._key(state), otp1, otp2, now, self.policy)

        return Plan(device_id, decide, ctx, _resynced)

    def plan_drift_reset(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_drift_reset, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, ctx, _drift_reset)

    def plan_expire(self, device_id: str, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_expire, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, SYSTEM, _expired)

    def _recovery_key(self, version: int) -> bytes | None:
        try:
            return self.keyring.purpose_key(RECOVERY_PURPOSE, version)
        except KeyUnavailable:
            log.error("no master secret for recovery codes of key version %s", version)
            return None

    def _key(self, state: DeviceState | None) -> bytes | None:
        if state is None:
            return None
        try:
            return self.keyring.device_key(
                state.device_id, bytes.fromhex(state.salt), state.key_version, state.derived_key_hash
            )
        except KeyUnavailable as exc:
            log.error("cannot derive the key of device %s: %s", state.device_id, exc)
            return None

    # -- queries ------------------------------------------------------------------------------

    def query(self, fn: Callable[..., T], *args: Any) -> T:
        with self.unit_of_work():
            return fn(*args)

    def device_info(self, device_id: str, now: float | None = None) -> dict[str, Any]:
        return self.query(queries.device_info, device_id, to_datetime(self._now(now)))

    def user_devices(self, user_id: str, now: float | None = None) -> dict[str, Any]:
        return self.query(queries.user_devices, user_id, to_datetime(self._now(now)))

    def user_audit(self, user_id: str, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        return self.query(queries.user_audit, user_id, limit, before)

    def stats(self, now: float | None = None) -> dict[str, Any]:
        return self.query(queries.stats, self._now(now))

    def list_reports(self, limit: int = 50, before: int | None = None) -> dict[str, Any]:
        return self.query(queries.list_reports, limit, before)

    def report_content(self, report_id: int, part: str) -> tuple[Report, bytes | str]:
        return self.query(queries.report_content, report_id, part)

    def current_code(self, device_id: str, now: float | None = None) -> dict[str, Any]:
        """For DEBUG test set-ups only: the code a device shows now."""
        device, key = self._device_and_key(device_id)
        code = totp.totp(key, self._now(now), device.digits, device.interval, device.algorithm)
        return {"device_id": device_id, "otp": code}

    def _device_and_key(self, device_id: str) -> tuple[DeviceState, bytes]:
        """A device's state and key, for the read-only operations that need its codes."""
        device = self.query(self.store.read, device_id)
        if device is None:
            raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
        key = self._key(device)
        if key is None:
            raise errors.KeyUnavailableError("This device's key cannot be derived.")
        return device, key

    def ping(self) -> None:
        self.query(self.database.execute_sql, "SELECT 1")

    # -- the audit trail's integrity ---------------------------------------------------------------

    @property
    def pseudonym_keys(self) -> list[bytes]:
        """The pseudonym key under every configured master secret version (rows keep the one they were written with)."""
        return [self.keyring.purpose_key(integrity.PURPOSE, v) for v in reversed(self.keyring.versions)]

    def verify_audit(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        record: bool = True,
        expected: tuple[str, ...] = (),
    ) -> audit_verify.Result:
        """Recompute the chains and check them against the signed checkpoints, in one snapshot (PostgreSQL:
        REPEATABLE READ), so writes, erasures and prunes meanwhile cannot look like tampering. With `record`,
        an intact result is sealed by a checkpoint; a broken one is audited (`AUDIT_VERIFIED`, failed) and
        sealed by nothing: the service never signs what it could not verify."""
        now = to_datetime(self._now(None))
        unsealed = now - timedelta(seconds=2 * self.settings.audit_checkpoint_seconds + 60)  # two periods missed
        args = (self.database, self.audit_keys.public, self.pseudonym_keys, start, end)
        snapshot = isinstance(self.store, PostgresStore)  # SQLite: a write transaction would stop the writers
        with self.unit_of_work(), self.database.atomic() if snapshot else nullcontext():
            if snapshot:
                self.database.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            result = audit_verify.verify(*args, unsealed_before=unsealed, expected=expected)
        if record and result.intact:
            self.checkpoint("verified", {"verification": {"intact": True, "rows": result.rows}})
        elif record:
            data = {"breaks": len(result.breaks), "rows": result.rows, "first": result.lines()[1][:200]}
            self.record(Action.AUDIT_VERIFIED, SYSTEM, reason="BROKEN", data=data)
        return result

    def checkpoint(self, reason: str = "on-demand", extra: dict[str, Any] | None = None) -> int:
        with self.unit_of_work(write=True):
            return checkpoints.take(self.database, self.audit_keys, reason, to_datetime(self._now(None)), extra).id

    def checkpoint_if_due(self) -> tuple[int, str] | None:
        """(id, SHA-256 of its signed text) of the checkpoint taken, or None when none was due — or when the
        last checkpoint this process signed is gone or altered: it will not sign over that."""
        with self.unit_of_work():
            if self._last_signed is not None and not checkpoints.still_there(*self._last_signed):
                metrics.AUDIT_CHECKPOINTS_MISSING.inc()
                log.error(
                    "audit checkpoint #%s that this process signed is gone or altered: not signing",
                    self._last_signed[0],
                )
                return None
            taken = checkpoints.take_if_due(self.database, self.audit_keys, self.settings, to_datetime(self._now(None)))
        if taken is None:
            return None
        self._last_signed = (taken.id, hashlib.sha256(taken.payload.encode("utf-8")).hexdigest())
        return self._last_signed

    def prune_audit(self, before: datetime, export_dir: Any) -> dict[str, Any]:
        """Refused on a trail that does not verify: pruning must not bury a break (or trust a forged floor)."""
        checked = self.verify_audit(record=False)
        if not checked.intact:
            raise errors.AuditBroken("The audit trail does not verify; nothing was pruned. " + checked.lines()[0])
        with self.unit_of_work():
            at = to_datetime(self._now(None))
            manifest = retention.prune(self.database, self.journal, self.audit_keys, before, export_dir, at)
            retention.vacuum(self.database)
            return manifest

    def erase_user(self, user_id: str, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        """GDPR art. 17: the user's devices and recovery codes, and the personal data in their audit rows."""
        with self.unit_of_work():
            at = to_datetime(self._now(None))
            erased = retention.erase(
                self.database, self.journal, self.audit_keys, self.pseudonym_keys, user_id, ctx, at
            )
        for device_id in erased.pop("device_ids"):
            self.engine.cache.forget(device_id)
        return {"user_id": user_id, **erased}

    def audit_status(self) -> dict[str, Any]:
        """The last verification's time and result, and when the last checkpoint was signed."""
        return self.query(checkpoints.status)

    def warm_cache(self, limit: int | None = None) -> int:
        """Cache the most recently used active devices' states, so their first verification after a start
        or deploy needs one statement, not two. Returns how many were cached."""
        return self.query(self.engine.warm, limit)


def build_service(
    settings: Settings, database: Database | None = None, clock: Callable[[], float] | None = None
) -> OtpService:
    """The service over `database` (default: DATABASE_URL, pooled), for the app, the CLI and the demo data."""
    database = database or open_database(
        settings.database_url, settings.db_pool_size, settings.db_timeout, settings.otp_application_name
    )
    keyring = Keyring(settings.master_secrets, settings.master_secret_version)
    return OtpService(settings, keyring, database, **({"clock": clock} if clock else {}))


class AsyncOtpService:
    """What the HTTP handlers await: one coroutine per operation of `OtpService`."""

    def __init__(self, service: OtpService, executor: Executor | None = None):
        self.service = service
        self.executor = executor or ThreadPoolExecutor(service.settings.db_pool_size, thread_name_prefix="db")
        self.pool: AsyncPool | None = None
        if isinstance(service.store, PostgresStore):  # commands on the event loop, with their own small pool
            settings = service.settings
            self.pool = AsyncPool.for_database(service.database, settings.db_pool_size, settings.db_timeout)
            loop_store = EventLoopStore(self.pool, service.store, service.apply_locked, self.executor)
            service.engine.loop_store = loop_store
        self._listening: asyncio.Future | None = None

    def start(self) -> None:
        """Call on the running event loop: on PostgreSQL, start keeping remembered device states current
        with other processes' writes (`pg_eventloop.StateListener`)."""
        if self.pool is not None and self._listening is None:
            listener = StateListener(self.pool, self.service.store.sender, self.service.engine.cache.refresh)
            self._listening = asyncio.ensure_future(listener.run())

    async def thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work on the bounded pool, whose size matches the connection pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def execute(self, plan: Plan) -> dict[str, Any]:
        if self.pool is None:
            return await self.thread(self.service.execute, plan)
        return await self.service.engine.run_async(plan)

    async def register(self, device_id: str, user_id: str, ctx: RequestContext, **options: Any) -> dict[str, Any]:
        return await self.execute(self.service.plan_register(device_id, user_id, ctx, **options))

    async def verify(self, device_id: str, otp: str | int, ctx: RequestContext) -> dict[str, Any]:
        return await self.execute(self.service.plan_verify(device_id, otp, ctx))

    async def deactivate(self, device_id: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.execute(self.service.plan_deactivate(device_id, ctx))

    async def unlock(self, device_id: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.execute(self.service.plan_unlock(device_id, ctx))

    async def confirm(self, device_id: str, otp: str | int, ctx: RequestContext) -> dict[str, Any]:
        return await self.execute(self.service.plan_confirm(device_id, otp, ctx))

    async def resync(self, device_id: str, otp1: str | int, otp2: str | int, ctx: RequestContext) -> dict[str, Any]:
        return await self.execute(self.service.plan_resync(device_id, otp1, otp2, ctx))

    async def reset_drift(self, device_id: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.execute(self.service.plan_drift_reset(device_id, ctx))

    async def expire_pending(self) -> int:
        return await self.thread(self.service.expire_pending)

    async def issue_recovery_codes(self, user_id: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.issue_recovery_codes, user_id, ctx)

    async def use_recovery_code(self, user_id: str, code: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.use_recovery_code, user_id, code, ctx)

    async def lookup_code(
        self, device_id: str, otp: str | int, start: datetime, end: datetime, ctx: RequestContext
    ) -> dict[str, Any]:
        return await self.thread(self.service.lookup_code, device_id, otp, start, end, ctx)

    def known_caller(self, key: str) -> tuple[bool, Caller | None]:
        """API_KEY's keys and recent answers, without the database: (True, caller or None), else (False, None)."""
        return self.service.clients.known(key)

    async def caller(self, key: str) -> Caller | None:
        known, caller = self.known_caller(key)
        return caller if known else await self.thread(self.service.query, self.service.clients.load, key)

    async def record(self, action: Action, ctx: RequestContext, **fields: Any) -> None:
        await self.thread(partial(self.service.record, action, ctx, **fields))

    async def device_info(self, device_id: str) -> dict[str, Any]:
        return await self.thread(self.service.device_info, device_id)

    async def user_devices(self, user_id: str) -> dict[str, Any]:
        return await self.thread(self.service.user_devices, user_id)

    async def user_audit(self, user_id: str, limit: int, before: int | None) -> dict[str, Any]:
        return await self.thread(self.service.user_audit, user_id, limit, before)

    async def stats(self) -> dict[str, Any]:
        return await self.thread(self.service.stats)

    async def list_reports(self, limit: int, before: int | None) -> dict[str, Any]:
        return await self.thread(self.service.list_reports, limit, before)

    async def report_content(self, report_id: int, part: str) -> tuple[Report, bytes | str]:
        return await self.thread(self.service.report_content, report_id, part)

    async def current_code(self, device_id: str) -> dict[str, Any]:
        return await self.thread(self.service.current_code, device_id)

    async def erase_user(self, user_id: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.erase_user, user_id, ctx)

    async def audit_keys(self) -> list[dict[str, Any]]:
        return self.service.audit_keys.listing()

    async def checkpoint_if_due(self) -> tuple[int, str] | None:
        return await self.thread(self.service.checkpoint_if_due)

    async def audit_status(self) -> dict[str, Any]:
        return await self.thread(self.service.audit_status)

    async def ping(self) -> None:
        if self.pool is None:
            await self.thread(self.service.ping)
        else:
            await self.pool.fetchone("SELECT 1")

    async def warm_cache(self) -> int:
        return await self.thread(self.service.warm_cache)

    @property
    def connections_in_use(self) -> int:
        """Database connections checked out now, by the thread pool's Peewee pool and the event loop's."""
        peewee_pool = len(getattr(self.service.database, "_in_use", ()))
        return peewee_pool + (self.pool.in_use if self.pool is not None else 0)

    def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.service.database.close_all()
        if self.pool is not None:
            self.pool.close()


# -- answers: a transition's verdict as the caller sees it ------------------------------------


def _registered(key: bytes, qr: str | None, transition: Transition) -> dict[str, Any]:
    """The key, once (with its QR code, made beforehand, when asked), or DEVICE_EXISTS."""
    created = transition.verdict == "REGISTERED"
    metrics.REGISTRATIONS.labels("created" if created else "conflict").inc()
    if not created:
        raise errors.DeviceExists(
            f"A device with id {transition.device_id!r} is already registered (active or pending)."
        )
    device = transition.after
    secret_base32 = base64.b32encode(key).decode("ascii").rstrip("=")
    uri = otpauth_uri(secret_base32, device)
    pending = device.pending_until is not None
    answer = {
        "device_id": device.device_id,
        "user_id": device.user_id,
        "derived_key": base64.b64encode(key).decode("ascii"),
        "secret_base32": secret_base32,
        "otpauth_uri": uri,
        "digits": device.digits,
        "interval": device.interval,
        "algorithm": device.algorithm,
        "issuer": device.issuer,
        "key_version": device.key_version,
        "created_at": isoformat(device.created_at),
        "status": "pending" if pending else "active",
        "confirm_by": isoformat(device.pending_until),
    }
    if qr is not None:
        answer["qr"] = qr
    return answer


def qr_data_uri(uri: str, kind: str) -> str:
    """The otpauth URI's QR code as a `data:` URI (SVG or PNG), made here: the secret never leaves the process.
    Error correction M (15 %): a phone's camera reads it off a dim screen."""
    try:
        code = segno.make(uri, error="m", micro=False)
    except segno.DataOverflowError:
        raise errors.ValidationError(
            "qr cannot be made: the otpauth URI is too long for a QR code (use a shorter user_id or issuer)",
            details={"field": "qr"},
        ) from None
    if kind == "svg":
        return code.svg_data_uri(scale=4, border=4)
    return code.png_data_uri(scale=6, border=4)


def _verified(transition: Transition) -> dict[str, Any]:
    verdict, device_id = transition.verdict, transition.device_id
    if verdict == "ACCEPTED":
        metrics.VERIFICATIONS.labels("valid", "").inc()
        return {"device_id": device_id, "valid": True}
    if verdict in ("INVALID_CODE", "REPLAYED"):
        metrics.VERIFICATIONS.labels("invalid", verdict).inc()
        log.debug("verification failed", extra={"device_id": device_id, "reason": verdict})  # audited and counted
        return _failed(transition, {"device_id": device_id, "valid": False})
    metrics.VERIFICATIONS.labels("refused", verdict).inc()
    _refuse(transition)


def _failed(transition: Transition, answer: dict[str, Any]) -> dict[str, Any]:
    """A wrong (or replayed) code's answer: why, and whether this failure locked the device."""
    answer["reason"] = transition.verdict
    if transition.details:  # this failure locked it: the app can tell its user
        metrics.LOCKOUTS.inc()
        answer |= _lock_fields(transition.details)
    return answer


def _lock_fields(details: dict[str, Any]) -> dict[str, Any]:
    """What an answer says of a lock a failure caused: until when, or that only an operator lifts it."""
    if details.get("hard", False):
        return {"locked_until": None, "hard_locked": True}
    return {"locked_until": isoformat(details["locked_until"])}


def _refuse(transition: Transition) -> NoReturn:
    """The error for a code check refused before any code was looked at."""
    verdict, device_id = transition.verdict, transition.device_id
    if verdict == "MALFORMED_CODE":
        raise transition.details["error"]
    if verdict == "ENROLLMENT_EXPIRED":  # this request recorded the expiry
        metrics.ENROLLMENTS_EXPIRED.inc()
    if verdict == "DEVICE_LOCKED":
        raise _locked_error(
            errors.DeviceLocked,
            transition,
            "Too many failed attempts: the device is locked until an operator unlocks it.",
            "Too many failed attempts; the device is locked for {retry} more seconds.",
        )
    raise {
        "DEVICE_NOT_FOUND": errors.DeviceNotFound(f"No device with id {device_id!r}."),
        "DEVICE_INACTIVE": errors.DeviceInactive(f"Device {device_id!r} is deactivated."),
        "KEY_UNAVAILABLE": errors.KeyUnavailableError(
            "This device's key cannot be derived: the service's master secret is misconfigured."
        ),
        "DEVICE_PENDING": errors.DevicePending(
            f"Device {device_id!r} is awaiting confirmation: confirm it with its first code before verifying."
        ),
        "ALREADY_CONFIRMED": errors.AlreadyConfirmed(f"Device {device_id!r} is already confirmed."),
        "ENROLLMENT_EXPIRED": errors.EnrollmentExpired(
            f"The enrolment of device {device_id!r} was not confirmed in time; register it again."
        ),
    }[verdict]


def _confirmed(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "CONFIRMED":
        metrics.CONFIRMATIONS.labels("confirmed").inc()
        return {"device_id": transition.device_id, "valid": True, "status": "active"}
    if transition.verdict in ("INVALID_CODE", "REPLAYED"):
        metrics.CONFIRMATIONS.labels("invalid").inc()
        return _failed(transition, {"device_id": transition.device_id, "valid": False, "status": "pending"})
    _refuse(transition)


def _resynced(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "RESYNCED":
        metrics.RESYNCS.labels("resynced").inc()
        return {"device_id": transition.device_id, "resynced": True, "drift": transition.after.drift}
    if transition.verdict in ("INVALID_CODE", "REPLAYED"):
        metrics.RESYNCS.labels("failed").inc()
        return _failed(transition, {"device_id": transition.device_id, "resynced": False})
    _refuse(transition)


def _drift_reset(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "DEVICE_NOT_FOUND":
        raise errors.DeviceNotFound(f"No device with id {transition.device_id!r}.")
    return {"device_id": transition.device_id, "drift": 0, "previous_drift": transition.before.drift}


def _expired(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "EXPIRED":
        metrics.ENROLLMENTS_EXPIRED.inc()
    return {"device_id": transition.device_id, "expired": transition.verdict == "EXPIRED"}


def _recovery_used(user_id: str, transition: Transition) -> dict[str, Any]:
    verdict = transition.verdict
    if verdict == "ACCEPTED":
        metrics.RECOVERY_CODES.labels("used").inc()
        return {"user_id": user_id, "valid": True, "remaining": transition.details["remaining"]}
    if verdict == "INVALID_CODE":
        metrics.RECOVERY_CODES.labels("invalid").inc()
        answer = {"user_id": user_id, "valid": False, "reason": verdict}
        return answer | (_lock_fields(transition.details) if transition.details else {})
    if verdict == "REPLAYED":
        metrics.RECOVERY_CODES.labels("replayed").inc()
        return {"user_id": user_id, "valid": False, "reason": verdict}
    if verdict == "NO_RECOVERY_CODES":
        raise errors.NoRecoveryCodes(f"User {user_id!r} has no recovery codes.")
    if verdict == "KEY_UNAVAILABLE":
        raise errors.KeyUnavailableError("The recovery codes' key cannot be derived: the master secret is missing.")
    raise _locked_error(
        errors.RecoveryCodesLocked,
        transition,
        "Too many wrong recovery codes: they are locked until an operator issues new ones.",
        "Too many wrong recovery codes; try again in {retry} seconds.",
    )


def _locked_error(
    error: type[errors.ServiceError], transition: Transition, hard_message: str, message: str
) -> errors.ServiceError:
    """A refusal while locked (a device, or a user's recovery codes): for good until an operator acts, or for
    `retry` more seconds (Retry-After)."""
    if transition.details.get("hard"):
        return error(hard_message, details={"locked_until": None, "hard_locked": True})
    locked_until = transition.details["locked_until"]
    retry = max(1, math.ceil((locked_until - transition.at).total_seconds()))
    return error(
        message.format(retry=retry),
        details={"locked_until": isoformat(locked_until), "retry_after": retry},
        headers={"Retry-After": str(retry)},
    )


def _deactivated(transition: Transition) -> dict[str, Any]:
    """Idempotent: a second deactivation answers like the first, with the first one's time."""
    if transition.verdict == "DEVICE_NOT_FOUND":
        raise errors.DeviceNotFound(f"No device with id {transition.device_id!r}.")
    if transition.verdict == "DEACTIVATED":
        metrics.DEACTIVATIONS.inc()
    deactivated_at = transition.current.deactivated_at
    return {"device_id": transition.device_id, "is_active": False, "deactivated_at": isoformat(deactivated_at)}


def _unlocked(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "DEVICE_NOT_FOUND":
        raise errors.DeviceNotFound(f"No device with id {transition.device_id!r}.")
    metrics.UNLOCKS.inc()
    failed = transition.after.failed_attempts
    return {"device_id": transition.device_id, "failed_attempts": failed, "locked_until": None}
