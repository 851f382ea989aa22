"""`AsyncOtpService`: what the HTTP handlers await, one coroutine per operation of `OtpService`. On PostgreSQL
commands run on the event loop, their statements shared with concurrent requests' (`persistence.pg_eventloop`,
`persistence.group_commit`); everything else, and SQLite, on a bounded thread pool sized like the
connection pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from ..audit.rows import SYSTEM, RequestContext
from ..core.actions import Action
from ..core.tenants import Tenant
from ..db.models import Report
from ..persistence.engine import AsyncEngine, Plan
from ..persistence.pg_eventloop import AsyncPool, EventLoopStore, StateListener
from ..persistence.store import PostgresStore
from ..webhooks import addresses
from .blocking import OtpService
from .clients import Caller

T = TypeVar("T")


class AsyncOtpService:
    """What the HTTP handlers await: one coroutine per operation of `OtpService`."""

    def __init__(self, service: OtpService, executor: Executor | None = None):
        self.service = service
        self.executor = executor or ThreadPoolExecutor(service.settings.db_pool_size, thread_name_prefix="db")
        self.pool: AsyncPool | None = None
        self.engine: AsyncEngine | None = None  # commands on the event loop (PostgreSQL), with their own small pool
        if isinstance(service.store, PostgresStore):
            settings = service.settings
            self.pool = AsyncPool.for_database(service.database, settings.db_pool_size, settings.db_timeout)
            loop_store = EventLoopStore(
                self.pool, service.store.statements, service.journal, service.apply_locked, self.executor
            )
            self.engine = AsyncEngine(loop_store, service.engine.cache)
        self._listening: asyncio.Future | None = None
        self._lookups: asyncio.Semaphore | None = None  # create-time DNS lookups of webhook receivers

    def start(self) -> None:
        """Call on the running event loop: on PostgreSQL, start keeping remembered device states current
        with other processes' writes (`pg_eventloop.StateListener`)."""
        if self.pool is not None and self._listening is None:
            listener = StateListener(self.pool.connect_params, self.service.store.sender, self.engine.cache.refresh)
            self._listening = asyncio.ensure_future(listener.run())

    async def thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work on the bounded pool, whose size matches the connection pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def execute(self, plan: Plan) -> dict[str, Any]:
        if self.engine is None:
            return await self.thread(self.service.execute, plan)
        return await self.engine.run(plan)

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

    async def tenant(self, tenant_id: int) -> Tenant:
        """The tenant (policy, defaults, rate limits): remembered, or read on the thread pool — so that the
        commands, which read it on the event loop, find it remembered."""
        found = self.service.tenants.fresh(tenant_id)
        return (
            found if found is not None else await self.thread(self.service.query, self.service.tenants.get, tenant_id)
        )

    def known_tenant(self, tenant_id: int) -> Tenant | None:
        """What this process remembers of the tenant (for its rate limits, without waiting)."""
        return self.service.tenants.known(tenant_id)

    async def tenant_named(self, name: str) -> Tenant | None:
        return await self.thread(self.service.query, self.service.tenants.by_name, name)

    async def device_info(self, device_id: str, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        return await self.thread(partial(self.service.device_info, device_id, tenant_id=ctx.tenant_id))

    async def user_devices(self, user_id: str, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        return await self.thread(partial(self.service.user_devices, user_id, tenant_id=ctx.tenant_id))

    async def user_audit(
        self, user_id: str, limit: int, before: int | None, ctx: RequestContext = SYSTEM
    ) -> dict[str, Any]:
        return await self.thread(partial(self.service.user_audit, user_id, limit, before, tenant_id=ctx.tenant_id))

    async def stats(self, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        return await self.thread(partial(self.service.stats, tenant_id=ctx.tenant_id))

    async def list_reports(self, limit: int, before: int | None, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        return await self.thread(self.service.list_reports, limit, before, ctx)

    async def report_content(
        self, report_id: int, part: str, ctx: RequestContext = SYSTEM
    ) -> tuple[Report, bytes | str]:
        return await self.thread(self.service.report_content, report_id, part, ctx)

    async def current_code(self, device_id: str, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        return await self.thread(partial(self.service.current_code, device_id, tenant_id=ctx.tenant_id))

    async def erase_user(self, user_id: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.erase_user, user_id, ctx)

    async def create_webhook_endpoint(
        self, url: Any, event_types: Any, description: Any, ctx: RequestContext
    ) -> dict[str, Any]:
        """The URL's host is looked up here, on the event loop with a timeout (`addresses.resolved_ahead`), not on
        the thread pool the service's transactions need; the service then checks what was found."""
        if self._lookups is None:
            self._lookups = asyncio.Semaphore(addresses.LOOKUPS_AT_ONCE)
        allow = self.service.settings.webhook_allow_private
        resolve = await addresses.resolved_ahead(url, allow, self._lookups)
        create = partial(self.service.create_webhook_endpoint, resolve=resolve)
        return await self.thread(create, url, event_types, description, ctx)

    async def webhook_queue_status(self) -> tuple[float, int]:
        return await self.thread(self.service.webhook_queue_status)

    async def list_webhook_endpoints(self, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.list_webhook_endpoints, ctx)

    async def webhook_endpoint(self, endpoint_id: int, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.webhook_endpoint, endpoint_id, ctx)

    async def delete_webhook_endpoint(self, endpoint_id: int, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.delete_webhook_endpoint, endpoint_id, ctx)

    async def rotate_webhook_endpoint(self, endpoint_id: int, grace_seconds: Any, ctx: RequestContext) -> dict:
        return await self.thread(self.service.rotate_webhook_endpoint, endpoint_id, grace_seconds, ctx)

    async def disable_webhook_endpoint(self, endpoint_id: int, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.disable_webhook_endpoint, endpoint_id, ctx)

    async def enable_webhook_endpoint(self, endpoint_id: int, ctx: RequestContext) -> dict[str, Any]:
        return await self.thread(self.service.enable_webhook_endpoint, endpoint_id, ctx)

    async def webhook_deliveries(
        self, endpoint_id: int, status: str | None, limit: int, before: int | None, ctx: RequestContext
    ) -> dict[str, Any]:
        return await self.thread(self.service.webhook_deliveries, endpoint_id, status, limit, before, ctx)

    async def replay_webhook_delivery(self, endpoint_id: int, delivery_id: int, ctx: RequestContext) -> dict:
        return await self.thread(self.service.replay_webhook_delivery, endpoint_id, delivery_id, ctx)

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
