"""The tenants as the service sees them: each one's policy (the service's settings under the tenant's own
overrides) and rate limits, read from the database and remembered for a few seconds, so a change reaches
every process within that time and a request costs no query; and the commands behind
`python -m otp_service tenants …`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from ..audit.journal import Journal
from ..audit.rows import RequestContext, audit_row
from ..config import ConfigError, Settings, per_scope_rates, read
from ..core import verification
from ..core.actions import Action
from ..core.tenants import DEFAULT_NAME, DEFAULT_TENANT, POLICY_VARIABLES, Registration, Tenant, check_name
from ..core.transitions import AuditEvent, to_datetime
from ..db.models import Tenant as TenantRow

REMEMBER_SECONDS = 5.0  # a tenant's new policy reaches every process within this
COMMAND_LINE = RequestContext(user_agent="otp-service tenants (command line)", actor="command-line")


def base_tenant(settings: Settings) -> Tenant:
    """The service's own settings, as the default of every tenant."""
    policy = verification.Policy(
        window=settings.otp_window,
        max_drift=settings.otp_max_drift,
        max_failures=settings.otp_max_failures,
        lockout_seconds=settings.otp_lockout_seconds,
        hard_lock_failures=settings.otp_hard_lock_failures,
        resync_window=settings.otp_resync_window,
    )
    registration = Registration(
        settings.otp_digits, settings.otp_interval, settings.otp_algorithm, settings.enrollment_confirmation
    )
    return Tenant(DEFAULT_TENANT, DEFAULT_NAME, policy, registration)


def parse_policy(values: dict[str, str], base: Tenant) -> dict:
    """A tenant's overrides, checked by the parsers the environment's values go through (ValueError naming the
    setting); the hard lock must stay above the failure budget, as for the service's own settings."""
    unknown = set(values) - set(POLICY_VARIABLES)
    if unknown:
        raise ValueError(f"a tenant may set only {', '.join(POLICY_VARIABLES)}; not {', '.join(sorted(unknown))}")
    try:
        parsed = read(values, values)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    budget = parsed.get("otp_max_failures", base.policy.max_failures)
    hard = parsed.get("otp_hard_lock_failures", base.policy.hard_lock_failures)
    if hard <= budget:
        raise ValueError(f"OTP_HARD_LOCK_FAILURES ({hard}) must be more than OTP_MAX_FAILURES ({budget})")
    return parsed


def _tenant(row: TenantRow, base: Tenant) -> Tenant:
    overrides = parse_policy(json.loads(row.policy), base) if row.policy else {}
    rates = tuple(sorted(per_scope_rates(row.rate_limits).items())) if row.rate_limits else ()
    tenant = base.with_overrides(overrides)
    return Tenant(row.id, row.name, tenant.policy, tenant.registration, rates)


class Tenants:
    """The tenants by id and by name, remembered for REMEMBER_SECONDS (`get` reads the database when it must:
    call it in a unit of work; `known` never does)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.base = base_tenant(settings)
        self.clock = clock
        self._by_id: dict[int, tuple[float, Tenant]] = {}
        self._lock = threading.Lock()

    def known(self, tenant_id: int) -> Tenant | None:
        """What this process remembers of the tenant, however old (None: never read here)."""
        with self._lock:
            entry = self._by_id.get(tenant_id)
        return None if entry is None else entry[1]

    def fresh(self, tenant_id: int) -> Tenant | None:
        with self._lock:
            entry = self._by_id.get(tenant_id)
        return entry[1] if entry is not None and entry[0] > self.clock() else None

    def get(self, tenant_id: int) -> Tenant:
        """The tenant, read again once what is remembered is older than REMEMBER_SECONDS."""
        found = self.fresh(tenant_id)
        if found is not None:
            return found
        row = TenantRow.get_or_none(TenantRow.id == tenant_id)
        if row is None:
            raise LookupError(f"no tenant with id {tenant_id}")
        return self._remember(_tenant(row, self.base))

    def by_name(self, name: str) -> Tenant | None:
        row = TenantRow.get_or_none(TenantRow.name == name)
        return None if row is None else self._remember(_tenant(row, self.base))

    def _remember(self, tenant: Tenant) -> Tenant:
        with self._lock:
            self._by_id[tenant.id] = (self.clock() + REMEMBER_SECONDS, tenant)
        return tenant


# -- the commands behind `python -m otp_service tenants …` (each in the caller's transaction) ----------------


def create(journal: Journal, name: str, now: float, by: str | None = None) -> int:
    """A new tenant; `by` (here and in `configure`): the person or ticket named with `--actor`, in its row."""
    check_name(name)
    if TenantRow.get_or_none(TenantRow.name == name) is not None:
        raise ValueError(f"a tenant named {name!r} exists already")
    tenant_id = TenantRow.insert(name=name, created_at=to_datetime(now)).execute()
    _audit(journal, Action.TENANT_CHANGED, now, tenant_id, {"tenant": name, "change": "created"}, by)
    return tenant_id


def configure(
    journal: Journal,
    settings: Settings,
    name: str,
    policy: dict[str, str],
    rate_limits: str | None,
    now: float,
    by: str | None = None,
) -> Tenant:
    """Set (or with an empty value, clear) a tenant's policy overrides and rate limits; returns it as it is now."""
    row = TenantRow.get_or_none(TenantRow.name == name)
    if row is None:
        raise ValueError(f"no tenant named {name!r}")
    current = json.loads(row.policy) if row.policy else {}
    current |= policy
    current = {k: v for k, v in current.items() if v != ""}
    parse_policy(current, base_tenant(settings))
    if rate_limits is not None:
        if rate_limits:
            try:
                per_scope_rates(rate_limits)
            except ValueError as exc:
                raise ValueError(f"--rate-limits {exc}") from None
        row.rate_limits = rate_limits or None
    row.policy = json.dumps(current, sort_keys=True) if current else None
    row.save()
    data = {"tenant": name, "change": "configured", "policy": current, "rate_limits": row.rate_limits}
    _audit(journal, Action.TENANT_CHANGED, now, row.id, data, by)
    return _tenant(row, base_tenant(settings))


def listing() -> list[dict]:
    return [
        {"id": t.id, "name": t.name, "created_at": t.created_at, "policy": t.policy, "rate_limits": t.rate_limits}
        for t in TenantRow.select().order_by(TenantRow.id)
    ]


def _audit(journal: Journal, action: Action, now: float, tenant_id: int, data: dict, by: str | None = None) -> None:
    ctx = RequestContext(COMMAND_LINE.ip_address, COMMAND_LINE.user_agent, None, COMMAND_LINE.actor, tenant_id, by)
    journal.append([audit_row(AuditEvent(action, True, None, data), to_datetime(now), None, None, ctx)])
