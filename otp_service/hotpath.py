"""The hot paths in hand-written SQL: verification (its two common outcomes, a right code and a wrong
one) and, on PostgreSQL, registration, each in one statement.

The full path (in `service`) reads the device, decides, then writes. Most verifications can skip the
read: a device's immutable key material and its last known clock offset are cached in the process,
the decision is made on them, and the write is *conditional* on everything the decision assumed:
same registration (salt), same offset, active, not locked, the step still later than the last one
accepted, the failure count still below the lock threshold. If any of that is no longer true the
statement changes nothing and the caller takes the full path, which reads and decides afresh. So a
stale cache costs a round trip, never a wrong answer; and the state change and its audit row are
still one atomic statement (PostgreSQL) or one transaction (SQLite).

On PostgreSQL the server runs these on the event loop (`pgasync`) in their batched forms below
(`VERIFY_BATCH`, `REGISTER_BATCH`, the material read), many requests to a statement (`groupcommit`);
the single-row forms serve `OtpService.verify`/`register` called directly (CLI, demo data, tests).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from peewee import Database

from .database import is_postgres

DEVICE_CACHE_SIZE = 65536  # entries of about 0.5 KiB: at most ~35 MiB per process

DEVICE_COLUMNS = (
    "device_id",
    "user_id",
    "salt",
    "key_version",
    "derived_key_hash",
    "digits",
    "interval",
    "algorithm",
    "issuer",
    "is_active",
    "created_at",
    "last_used",
    "usage_count",
    "deactivated_at",
    "last_step",
    "drift",
    "failed_attempts",
    "locked_until",
)
AUDIT_COLUMNS = (
    "timestamp, action, success, reason, device_id, user_id, ip_address, user_agent, request_id, additional_data"
)


@dataclass(slots=True)
class CachedDevice:
    """What a verification needs that only a new registration changes — plus the offset, which is a hint."""

    salt: str
    key: bytes
    key_version: int
    digits: int
    interval: int
    algorithm: str
    drift: int


class DeviceCache:
    """A bounded, thread-safe LRU of CachedDevice by device id."""

    def __init__(self, size: int = DEVICE_CACHE_SIZE):
        self._items: OrderedDict[str, CachedDevice] = OrderedDict()
        self.size = size
        self._lock = threading.Lock()

    def get(self, device_id: str) -> CachedDevice | None:
        with self._lock:
            item = self._items.get(device_id)
            if item is not None:
                self._items.move_to_end(device_id)
            return item

    def put(self, device_id: str, item: CachedDevice) -> None:
        with self._lock:
            self._items[device_id] = item
            self._items.move_to_end(device_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def discard(self, device_id: str) -> None:
        with self._lock:
            self._items.pop(device_id, None)

    def __len__(self) -> int:
        return len(self._items)


class HotPath:
    def __init__(self, database: Database):
        self.database = database
        self.postgres = is_postgres(database)
        p = database.param
        self._material = (
            "SELECT salt, key_version, derived_key_hash, digits, interval, algorithm, drift "
            f"FROM devices WHERE device_id = {p}"
        )
        unchanged = (
            f"device_id = {p} AND salt = {p} AND drift = {p} AND is_active "
            f"AND (locked_until IS NULL OR locked_until <= {p})"
        )
        self._accept = (
            f"UPDATE devices SET last_step = {p}, drift = {p}, failed_attempts = 0, locked_until = NULL, "
            f"usage_count = usage_count + 1, last_used = {p} WHERE {unchanged} AND last_step < {p} "
            "RETURNING user_id"
        )
        self._fail = (
            f"UPDATE devices SET failed_attempts = failed_attempts + 1 WHERE {unchanged} "
            f"AND failed_attempts < {p} RETURNING user_id, failed_attempts"
        )
        values = f"{p}, 'OTP_VERIFICATION', {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}"
        self._insert = f"INSERT INTO audit_logs ({AUDIT_COLUMNS}) VALUES ({values})"
        if self.postgres:  # one round trip: the UPDATE and the audit INSERT in one prepared statement
            accept = (
                f"WITH upd AS ({self._accept}) INSERT INTO audit_logs ({AUDIT_COLUMNS}) "
                f"SELECT {p}, 'OTP_VERIFICATION', TRUE, NULL, {p}, user_id, {p}, {p}, {p}, {p} "
                "FROM upd RETURNING id"
            )
            fail = (
                f"WITH upd AS ({self._fail}) INSERT INTO audit_logs ({AUDIT_COLUMNS}) "
                f"SELECT {p}, 'OTP_VERIFICATION', FALSE, 'INVALID_CODE', {p}, user_id, {p}, {p}, {p}, "
                "'{\"failed_attempts\":' || failed_attempts || '}' FROM upd RETURNING id"
            )
            columns = ", ".join(DEVICE_COLUMNS)
            takeover = ", ".join(f"{c} = EXCLUDED.{c}" for c in DEVICE_COLUMNS if c != "device_id")
            created = "EXISTS (SELECT 1 FROM ins)"
            register = (
                f"WITH ins AS (INSERT INTO devices ({columns}) VALUES ({', '.join([p] * len(DEVICE_COLUMNS))}) "
                f"ON CONFLICT (device_id) DO UPDATE SET {takeover} WHERE NOT devices.is_active RETURNING 1) "
                f"INSERT INTO audit_logs ({AUDIT_COLUMNS}) SELECT {p}, 'DEVICE_REGISTERED', {created}, "
                f"CASE WHEN {created} THEN NULL ELSE 'DEVICE_EXISTS' END, {p}, {p}, {p}, {p}, {p}, "
                f"CASE WHEN {created} THEN {p} END RETURNING success"
            )
            self._register_pg = _prepare(database, "otp_register", register)
            self.verify_batch = _prepare(database, "otp_verify_batch", VERIFY_BATCH)
            self.register_batch = _prepare(database, "otp_register_batch", REGISTER_BATCH)
            self.material_batch = _prepare(
                database,
                "otp_material_batch",
                "SELECT device_id, salt, key_version, derived_key_hash, digits, interval, algorithm, drift "
                "FROM devices WHERE device_id = ANY(%s::text[])",
            )
            self._material = _prepare(database, "otp_material", self._material)
            self._accept_pg = _prepare(database, "otp_accept", accept)
            self._fail_pg = _prepare(database, "otp_fail", fail)

    def register(self, device_id: str, fields: dict, audit_data: dict, ctx) -> bool:
        """PostgreSQL: insert the device, or take over an inactive row with its id, and audit the outcome,
        in one statement. False when an active device holds the id (ON CONFLICT … WHERE NOT is_active)."""
        values = [device_id if c == "device_id" else fields[c] for c in DEVICE_COLUMNS]
        who = (ctx.ip_address, ctx.user_agent, ctx.request_id)
        args = (*values, fields["created_at"], device_id, fields["user_id"], *who, _json(audit_data))
        return bool(self.database.execute_sql(self._register_pg, args).fetchone()[0])

    # One write's row for the batched statements below (`groupcommit`), in their arrays' order.

    @staticmethod
    def verify_row(device_id: str, cached: CachedDevice, step: int, drift: int, data: dict | None, ctx, now) -> tuple:
        """For VERIFY_BATCH: an accepted code (step, the new drift, the audit data) or, with step -1, a failure."""
        who = (ctx.ip_address, ctx.user_agent, ctx.request_id)
        return (device_id, cached.salt, cached.drift, step, drift, now, *who, _json(data) if data else None)

    @staticmethod
    def register_row(device_id: str, fields: dict, audit_data: dict, ctx) -> tuple:
        """For REGISTER_BATCH."""
        new = tuple(fields[c] for c in REGISTER_BATCH_FIELDS)
        return (device_id, *new, ctx.ip_address, ctx.user_agent, ctx.request_id, _json(audit_data))

    def recent_material(self, limit: int) -> list[tuple]:
        """(device_id, salt, …, drift) of the `limit` most recently used active devices, most recent first."""
        order = "last_used DESC NULLS LAST" if self.postgres else "last_used IS NULL, last_used DESC"
        return self.database.execute_sql(
            "SELECT device_id, salt, key_version, derived_key_hash, digits, interval, algorithm, drift FROM devices "
            f"WHERE is_active ORDER BY {order}, created_at DESC LIMIT {int(limit)}"
        ).fetchall()

    def material(self, device_id: str) -> tuple | None:
        """(salt, key_version, derived_key_hash, digits, interval, algorithm, drift), or None if no such device."""
        return self.database.execute_sql(self._material, (device_id,)).fetchone()

    def accept(
        self, device_id: str, cached: CachedDevice, step: int, drift: int, data: dict, ctx, now: datetime
    ) -> bool:
        """Record an accepted code; False when the cached assumptions no longer hold."""
        where = (device_id, cached.salt, cached.drift, now)
        audit = (ctx.ip_address, ctx.user_agent, ctx.request_id, _json(data))
        if self.postgres:  # one prepared statement: the conditional UPDATE and its audit INSERT
            args = (step, drift, now, *where, step, now, device_id, *audit)
            return self.database.execute_sql(self._accept_pg, args).fetchone() is not None
        with self.database.atomic():
            row = self.database.execute_sql(self._accept, (step, drift, now, *where, step)).fetchone()
            if row is not None:
                self.database.execute_sql(self._insert, (now, True, None, device_id, row[0], *audit))
            return row is not None

    def fail(self, device_id: str, cached: CachedDevice, below: int, ctx, now: datetime) -> bool:
        """Count a wrong code, as long as this failure cannot reach the lock threshold (`below`)."""
        where = (device_id, cached.salt, cached.drift, now)
        who = (ctx.ip_address, ctx.user_agent, ctx.request_id)
        if self.postgres:
            args = (*where, below, now, device_id, *who)
            return self.database.execute_sql(self._fail_pg, args).fetchone() is not None
        with self.database.atomic():
            row = self.database.execute_sql(self._fail, (*where, below)).fetchone()
            if row is not None:
                data = _json({"failed_attempts": row[1]})
                self.database.execute_sql(self._insert, (now, False, "INVALID_CODE", device_id, row[0], *who, data))
            return row is not None

    def material_statement(self, device_id: str) -> tuple[str, tuple]:
        return self._material, (device_id,)


# Many verifications' writes in one statement (see `groupcommit`): one element of each array per write, a
# step of -1 marking a failure (not NULL: an array of only NULLs would not take the parameter's type). Rows
# another transaction has locked are skipped, not waited for (SKIP LOCKED), so a batch never waits behind
# one busy device and two batches can never deadlock; a skipped write is simply not applied, and its
# request takes the full path. Returns the device id of every write that applied.
VERIFY_BATCH = f"""
WITH i AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::bigint[], %s::int[], %s::timestamp[],
                         %s::text[], %s::text[], %s::text[], %s::text[])
        AS t(device_id, salt, drift, step, new_drift, at, ip, ua, rid, data)
), mine AS (
    SELECT d.device_id FROM devices d JOIN i ON d.device_id = i.device_id FOR UPDATE OF d SKIP LOCKED
), unchanged AS (
    SELECT i.* FROM i JOIN mine ON mine.device_id = i.device_id
), acc AS (
    UPDATE devices d SET last_step = u.step, drift = u.new_drift, failed_attempts = 0, locked_until = NULL,
                         usage_count = d.usage_count + 1, last_used = u.at
    FROM unchanged u
    WHERE u.step >= 0 AND d.device_id = u.device_id AND d.salt = u.salt AND d.drift = u.drift AND d.is_active
      AND (d.locked_until IS NULL OR d.locked_until <= u.at) AND d.last_step < u.step
    RETURNING d.device_id, d.user_id, u.at, u.ip, u.ua, u.rid, u.data
), fl AS (
    UPDATE devices d SET failed_attempts = d.failed_attempts + 1
    FROM unchanged u
    WHERE u.step < 0 AND d.device_id = u.device_id AND d.salt = u.salt AND d.drift = u.drift AND d.is_active
      AND (d.locked_until IS NULL OR d.locked_until <= u.at) AND d.failed_attempts < %s
    RETURNING d.device_id, d.user_id, u.at, u.ip, u.ua, u.rid, d.failed_attempts
)
INSERT INTO audit_logs ({AUDIT_COLUMNS})
SELECT at, 'OTP_VERIFICATION', TRUE, NULL, device_id, user_id, ip, ua, rid, data FROM acc
UNION ALL
SELECT at, 'OTP_VERIFICATION', FALSE, 'INVALID_CODE', device_id, user_id, ip, ua, rid,
       '{{"failed_attempts":' || failed_attempts || '}}' FROM fl
RETURNING device_id
"""


REGISTER_BATCH_FIELDS = (
    "user_id",
    "salt",
    "key_version",
    "derived_key_hash",
    "digits",
    "interval",
    "algorithm",
    "issuer",
    "created_at",
)

# Many registrations in one statement (see `groupcommit`), one element of each array per registration:
# each inserts its device, or takes over an inactive row with its id, exactly as `register` does, and
# writes its audit row whatever the outcome. A new device starts as `OtpService._new_device` describes
# it (tests/test_pgasync.py compares the rows both paths write). Returns (device_id, created) for each.
REGISTER_BATCH = f"""
WITH i AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::int[], %s::int[],
                         %s::text[], %s::text[], %s::timestamp[], %s::text[], %s::text[], %s::text[], %s::text[])
        AS t(device_id, user_id, salt, key_version, derived_key_hash, digits, interval, algorithm, issuer,
             created_at, ip, ua, rid, data)
), ins AS (
    INSERT INTO devices ({", ".join(DEVICE_COLUMNS)})
    SELECT device_id, user_id, salt, key_version, derived_key_hash, digits, interval, algorithm, issuer,
           TRUE, created_at, NULL, 0, NULL, -1, 0, 0, NULL
    FROM i ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in DEVICE_COLUMNS[1:])}
    WHERE NOT devices.is_active
    RETURNING device_id
)
INSERT INTO audit_logs ({AUDIT_COLUMNS})
SELECT i.created_at, 'DEVICE_REGISTERED', ins.device_id IS NOT NULL,
       CASE WHEN ins.device_id IS NULL THEN 'DEVICE_EXISTS' END, i.device_id, i.user_id, i.ip, i.ua, i.rid,
       CASE WHEN ins.device_id IS NOT NULL THEN i.data END
FROM i LEFT JOIN ins ON ins.device_id = i.device_id
RETURNING device_id, success
"""


def _json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _prepare(database: Database, name: str, sql: str) -> str:
    """Register `sql` to be prepared on every new connection; returns the EXECUTE that runs it.

    psycopg2 has no protocol-level prepare, so this uses SQL PREPARE with untyped parameters
    ($1 … $n, types inferred by PostgreSQL) and EXECUTE with psycopg2's own parameters."""
    count = sql.count("%s")
    numbered = sql
    for i in range(1, count + 1):
        numbered = numbered.replace("%s", f"${i}", 1)
    database.prepare(name, f"PREPARE {name} AS {numbered}")
    return f"EXECUTE {name} ({', '.join(['%s'] * count)})"
