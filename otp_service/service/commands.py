"""The commands: register, confirm, verify, resync, deactivate, unlock, reset drift, expire, recovery codes,
code lookup — each a `Plan`: its decision as a pure function of the device's state (`core.verification`,
`core.lifecycle`) and its answer (`answers`), which the engine applies with its audit rows (`persistence`).
So each rule exists once, and every caller — HTTP handlers, CLI, demo data, tests — gets the same decision
applied the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from .. import metrics
from ..audit.rows import SYSTEM, RequestContext, audit_row
from ..config import Settings
from ..core import lifecycle, recovery, verification
from ..core.actions import Action
from ..core.keys import Keyring, key_fingerprint
from ..core.provisioning import provision
from ..core.tenants import Tenant
from ..core.transitions import DEFAULT_TENANT, AuditEvent, DeviceState, isoformat, to_datetime, unix_time
from ..persistence.engine import Plan
from ..persistence.store import Store
from . import answers

RECOVERY_PURPOSE = "recovery-codes"


class Commands:
    """The commands of `OtpService` (`blocking`), which provides what is declared here."""

    settings: Settings
    keyring: Keyring
    tenant: Callable[[int], Tenant]
    store: Store
    execute: Callable[[Plan], dict[str, Any]]
    query: Callable[..., Any]
    unit_of_work: Callable[..., AbstractContextManager[None]]
    _now: Callable[[float | None], float]
    _device_and_key: Callable[[RequestContext, str], tuple[DeviceState, bytes]]

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
        for tenant_id, device_id in self.query(self.store.pending_expired, to_datetime(now), limit):
            expired += self.execute(self.plan_expire(device_id, now, tenant_id))["expired"]
        return expired

    def issue_recovery_codes(self, user_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict:
        """Ten new one-time codes for a user, replacing any earlier set; shown this once, kept as keyed hashes."""
        codes, at = recovery.new_codes(), to_datetime(self._now(now))
        key, version = self.keyring.purpose_key(RECOVERY_PURPOSE), self.keyring.current_version
        hashes = [recovery.code_hash(key, user_id, code) for code in codes]
        decide = partial(
            recovery.decide_issue, user_id, hashes=hashes, key_version=version, at=at, tenant_id=ctx.tenant_id
        )
        with self.unit_of_work():
            transition = self.store.apply_recovery(user_id, decide, ctx)
        metrics.RECOVERY_CODES.labels("issued").inc()
        return {"user_id": user_id, "codes": codes, "created_at": isoformat(transition.after.created_at)}

    def use_recovery_code(
        self, user_id: str, code: str, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict:
        """Check a recovery code: valid once, wrong ones counted against the user's own budget."""
        code, at = recovery.normalise(code), to_datetime(self._now(now))
        decide = partial(
            recovery.decide_use,
            user_id,
            code=code,
            key=partial(self.keyring.purpose_key_or_none, RECOVERY_PURPOSE),
            at=at,
            policy=self.tenant(ctx.tenant_id).policy,
        )
        with self.unit_of_work():
            return answers.recovery_used(user_id, self.store.apply_recovery(user_id, decide, ctx))

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
        state, key = self._device_and_key(ctx, device_id)
        from_, to = unix_time(start), unix_time(end)
        steps, last = verification.lookup_steps(key, state, otp, from_, to, now, self.tenant(ctx.tenant_id).policy)
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
        event = AuditEvent(Action.CODE_LOOKUP, True, None, data)
        with self.unit_of_work(write=True):  # the device's user as the row has it now, the row held: an erasure
            self.store.record_about_device(event, to_datetime(now), state.key, ctx)  # meanwhile reaches this too
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
        defaults = self.tenant(ctx.tenant_id).registration
        pending = confirm or defaults.confirmation == "required"
        key, salt, version = self.keyring.new_device_key(device_id)
        fresh = DeviceState(
            device_id=device_id,
            user_id=user_id,
            salt=salt.hex(),
            key_version=version,
            derived_key_hash=key_fingerprint(key),
            digits=digits or defaults.digits,
            interval=interval or defaults.interval,
            algorithm=algorithm or defaults.algorithm,
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
            tenant_id=ctx.tenant_id,
        )
        keys = provision(key, fresh, qr)  # before the write: a QR code that cannot be made fails it
        decide = partial(lifecycle.decide_register, device_id, fresh=fresh, at=at)
        answer = partial(answers.registered, keys)
        return Plan(device_id, decide, ctx, answer, assume=None)  # assume no device yet: a new id is the usual case

    def plan_verify(
        self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> Plan:
        policy = self.tenant(ctx.tenant_id).policy
        rule = verification.verification_rule(device_id, otp, self._now(now), policy, self.keyring.key_of)
        return Plan(device_id, rule, ctx, answers.verified)

    def plan_deactivate(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_deactivate, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, ctx, answers.deactivated)

    def plan_unlock(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_unlock, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, ctx, answers.unlocked)

    def plan_confirm(
        self, device_id: str, otp: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> Plan:
        now = self._now(now)
        policy = self.tenant(ctx.tenant_id).policy
        rule = verification.verification_rule(device_id, otp, now, policy, self.keyring.key_of, confirm=True)
        return Plan(device_id, rule, ctx, answers.confirmed)

    def plan_resync(
        self, device_id: str, otp1: str | int, otp2: str | int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> Plan:
        policy = self.tenant(ctx.tenant_id).policy
        rule = verification.resync_rule(device_id, otp1, otp2, self._now(now), policy, self.keyring.key_of)
        return Plan(device_id, rule, ctx, answers.resynced)

    def plan_drift_reset(self, device_id: str, ctx: RequestContext = SYSTEM, now: float | None = None) -> Plan:
        decide = partial(lifecycle.decide_drift_reset, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, ctx, answers.drift_reset)

    def plan_expire(self, device_id: str, now: float | None = None, tenant_id: int = DEFAULT_TENANT) -> Plan:
        decide = partial(lifecycle.decide_expire, device_id, at=to_datetime(self._now(now)))
        return Plan(device_id, decide, replace(SYSTEM, tenant_id=tenant_id), answers.expired)
