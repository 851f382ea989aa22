"""`OtpService`: the service's operations, blocking, with no HTTP in them — what the CLI, the demo data, the
tests and the thread pool call. Its commands (`commands`), reads (`reads`), audited report access
(`report_access`), webhook endpoints (`webhooks`) and audit-trail operations (`trail`) each run in a unit of
work: a pooled connection, returned on every path, and a lost database answered as 503.
`facade.AsyncOtpService` is what the HTTP handlers await.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from peewee import Database

from .. import metrics
from ..audit import chain as integrity
from ..audit import checkpoints
from ..audit.journal import Journal
from ..audit.rows import RequestContext
from ..config import Settings
from ..core import errors, verification
from ..core.keys import Keyring
from ..core.tenants import Tenant
from ..core.transitions import Transition
from ..db.database import UNAVAILABLE_ERRORS, open_database
from ..persistence.engine import Engine, Plan
from ..persistence.store import Decide, open_store
from ..webhooks import outbox
from .clients import Caller, Directory
from .commands import Commands
from .reads import Reads
from .report_access import ReportAccess
from .tenants import Tenants
from .trail import AuditTrail
from .webhooks import WebhookEndpoints

log = logging.getLogger("otp_service.service")


class OtpService(Commands, Reads, ReportAccess, AuditTrail, WebhookEndpoints):
    def __init__(
        self, settings: Settings, keyring: Keyring, database: Database, clock: Callable[[], float] = time.time
    ):
        self.settings, self.keyring, self.database, self.clock = settings, keyring, database, clock
        self.tenants = Tenants(settings)
        pseudonyms = keyring.purpose_key(integrity.PURPOSE)
        self.journal = Journal(database, pseudonyms, settings.audit_chains, then=[outbox.enqueue])
        self.audit_keys = checkpoints.Keys.from_settings(settings)
        self._last_signed: tuple[int, str] | None = None  # (id, sha256) of the last checkpoint this process signed
        self._refused = None  # the first break of the last periodic checkpoint refused (audited once)
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

    def tenant(self, tenant_id: int) -> Tenant:
        """The tenant's policy and defaults: remembered, else read (so never on the event loop: the HTTP layer
        has read the tenant of every request it lets through, `AsyncOtpService.tenant`)."""
        known = self.tenants.fresh(tenant_id) or self.tenants.known(tenant_id)
        return known if known is not None else self.query(self.tenants.get, tenant_id)

    @property
    def policy(self) -> verification.Policy:
        """The default tenant's policy: the service's settings."""
        return self.tenants.base.policy

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

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
