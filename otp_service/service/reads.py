"""The read side of `OtpService` (`blocking`): device info, a user's devices and audit trail, statistics, each
one query (`queries`) in a unit of work. Nothing here changes state. (Stored reports are read in
`report_access`: every look at one is audited.)"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, TypeVar

from peewee import Database

from ..audit.rows import SYSTEM, RequestContext
from ..core import errors, totp
from ..core.keys import Keyring
from ..core.transitions import DEFAULT_TENANT, DeviceState, to_datetime
from ..persistence.store import Store
from . import queries

T = TypeVar("T")


class Reads:
    """Provided by `OtpService`: the database, the store, the keyring, the clock."""

    database: Database
    store: Store
    keyring: Keyring
    unit_of_work: Callable[..., AbstractContextManager[None]]
    _now: Callable[[float | None], float]

    def query(self, fn: Callable[..., T], *args: Any) -> T:
        with self.unit_of_work():
            return fn(*args)

    def device_info(self, device_id: str, now: float | None = None, *, tenant_id: int = DEFAULT_TENANT) -> dict:
        return self.query(queries.device_info, (tenant_id, device_id), to_datetime(self._now(now)))

    def user_devices(self, user_id: str, now: float | None = None, *, tenant_id: int = DEFAULT_TENANT) -> dict:
        return self.query(queries.user_devices, tenant_id, user_id, to_datetime(self._now(now)))

    def user_audit(
        self, user_id: str, limit: int = 50, before: int | None = None, *, tenant_id: int = DEFAULT_TENANT
    ) -> dict[str, Any]:
        return self.query(queries.user_audit, tenant_id, user_id, limit, before)

    def stats(self, now: float | None = None, *, tenant_id: int = DEFAULT_TENANT) -> dict[str, Any]:
        return self.query(queries.stats, tenant_id, self._now(now))

    def current_code(self, device_id: str, now: float | None = None, *, tenant_id: int = DEFAULT_TENANT) -> dict:
        """For DEBUG test set-ups only: the code a device shows now."""
        device, key = self._device_and_key(replace(SYSTEM, tenant_id=tenant_id), device_id)
        code = totp.totp(key, self._now(now), device.digits, device.interval, device.algorithm)
        return {"device_id": device_id, "otp": code}

    def _device_and_key(self, ctx: RequestContext, device_id: str) -> tuple[DeviceState, bytes]:
        """A device of the tenant `ctx` acts in, and its key, for the read-only operations that need its codes."""
        device = self.query(self.store.read, (ctx.tenant_id, device_id))
        if device is None:
            raise errors.DeviceNotFound(f"No device with id {device_id!r}.")
        key = self.keyring.key_of(device)
        if key is None:
            raise errors.KeyUnavailableError("This device's key cannot be derived.")
        return device, key

    def ping(self) -> None:
        self.query(self.database.execute_sql, "SELECT 1")
