"""Reading a device's state, and applying a transition only if the device still has the state it was
decided on — with its audit rows, in the same statement (PostgreSQL) or transaction (SQLite).

No rule lives here. The guard is the row's `version`: an UPDATE applies where `version` still equals the
version the decision read, an INSERT where no row exists yet, and a transition that changes nothing
(a refusal) is recorded where the row is still at that version (or still absent). When the guard fails,
nothing is written and the caller (`engine`) decides again on the state this returns.

PostgreSQL runs one prepared statement for any number of transitions (`APPLY`, one JSON element per
transition, `group_commit` fills it); a lone request is a batch of one. Rows another transaction holds
are skipped, not waited for (SKIP LOCKED): a batch never waits behind one busy device, and two batches
cannot deadlock. `apply_locked` is the fallback for a device under contention: it reads the row FOR
UPDATE, decides and applies in one transaction, so it cannot lose. SQLite serialises writers, so there
every transition is read, decided and applied in one IMMEDIATE transaction.
"""

from __future__ import annotations

import json
import random
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple

from peewee import Database

from ..audit.journal import CHAIN_COLUMNS, Journal
from ..audit.rows import AUDIT_COLUMNS, RequestContext, audit_row
from ..core.recovery import RecoveryState, audited_user
from ..core.transitions import STATE_COLUMNS, AuditEvent, DeviceState, Transition
from ..db.database import is_postgres
from ..db.models import Device, RecoveryCodes
from ..webhooks import outbox
from ..webhooks.catalogue import event_type

Decide = Callable[[DeviceState | None], Transition]
Key = tuple[int, str]  # what names a device: (tenant id, device id)
_RECOVERY_COLUMNS = RecoveryState._fields
Applied = tuple[bool, DeviceState | None]  # (applied, the device's state when not applied)
LOCKED_ROUNDS = 5  # a row that exists is locked at once; only an id inserted meanwhile takes a second round

_COLUMNS = ", ".join(STATE_COLUMNS)
_NEW_COLUMNS = STATE_COLUMNS[1:]  # device_id is the key, the rest is the row to write
STATES_CHANNEL = "otp_device_states"
STATES_PER_NOTIFICATION = 4  # an element is at most ~1.7 KB (254 four-byte characters of user id…): 4 fit in 8000
# A device column's PostgreSQL type, from its model field: the table is described once, in `db.models`.
_PG_TYPE_OF = {
    "VARCHAR": "text",
    "TEXT": "text",
    "INT": "int",
    "BIGINT": "bigint",
    "BOOL": "bool",
    "DATETIME": "timestamp",
}
_PG_TYPES = {c: _PG_TYPE_OF[Device._meta.fields[c].field_type] for c in STATE_COLUMNS}
_EVENT_TYPES = ("timestamp", "text", "bool", "text", "text", "text", "text", "text", "text", "text", "text", "int")
_T_KEYS = ("i", "tenant", "device_id", "expected", "writes", *_NEW_COLUMNS)
_T_TYPES = ("int", "int", "text", "bigint", "bool", *(_PG_TYPES[c] for c in _NEW_COLUMNS))
_NO_ROW = (None,) * len(_NEW_COLUMNS)
_E_KEYS = ("i", "n", *AUDIT_COLUMNS, "personal", "subject", "rest", "hook")
_AUDIT_OUT = ", ".join((*AUDIT_COLUMNS, *CHAIN_COLUMNS))


def _elements(names: Sequence[str], types: Sequence[str], alias: str) -> str:
    """The rows of a JSON array of arrays, one column per position: `(r->>0)::int AS i, …`."""
    columns = ", ".join(
        f'(r->>{n}){"" if type_ == "text" else "::" + type_} AS "{name}"'
        for n, (name, type_) in enumerate(zip(names, types, strict=True))
    )
    return f"(SELECT {columns}, r AS element FROM jsonb_array_elements(%s::jsonb) r) AS {alias}"


# The batch comes as two JSON arrays of arrays (psycopg2 adapts one string far faster than hundreds of
# array elements): transitions — i (position in the batch), tenant and device id (the device's key), expected
# version (NULL: must not exist), whether it writes the row, then the row to write — and audit rows: i of
# their transition, n their order, then the audit columns.
APPLY = f"""
WITH RECURSIVE t AS (
    SELECT * FROM {_elements(_T_KEYS, _T_TYPES, "t")}
), ev AS (
    SELECT * FROM {_elements(_E_KEYS, ("int", "int", *_EVENT_TYPES, "text", "text", "text", "text"), "e")}
), mine AS (
    SELECT t.i FROM devices d JOIN t ON d.tenant_id = t.tenant AND d.device_id = t.device_id
    WHERE t.writes AND d.version = t.expected FOR UPDATE OF d SKIP LOCKED  -- a stale row is not even locked
), upd AS (
    UPDATE devices d SET {", ".join(f"{c} = t.{c}" for c in _NEW_COLUMNS if c != "tenant_id")}
    FROM t JOIN mine ON mine.i = t.i
    WHERE d.tenant_id = t.tenant AND d.device_id = t.device_id AND d.version = t.expected
    RETURNING t.i
), ins AS (
    INSERT INTO devices ({_COLUMNS})
    SELECT {_COLUMNS} FROM t WHERE t.writes AND t.expected IS NULL ORDER BY tenant_id, device_id
    ON CONFLICT (tenant_id, device_id) DO NOTHING
    RETURNING tenant_id, device_id
), held AS (  -- a refusal is recorded only while its row still has the version it was decided on, and holds
    -- it (FOR SHARE): an erasure's DELETE waits for the refusal to commit, then its UPDATE sees the audit row
    SELECT t.i FROM devices d JOIN t ON d.tenant_id = t.tenant AND d.device_id = t.device_id
    WHERE NOT t.writes AND d.version = t.expected FOR SHARE OF d SKIP LOCKED
), unchanged AS (
    SELECT i FROM held
    UNION ALL SELECT t.i FROM t WHERE NOT t.writes AND t.expected IS NULL
    AND NOT EXISTS (SELECT FROM devices d WHERE d.tenant_id = t.tenant AND d.device_id = t.device_id)
), applied AS (
    SELECT i FROM upd
    UNION ALL SELECT t.i FROM t JOIN ins ON ins.tenant_id = t.tenant AND ins.device_id = t.device_id
    UNION ALL SELECT i FROM unchanged
), evs AS (  -- the audit rows to write, numbered in order
    SELECT e.*, row_number() OVER (ORDER BY e.n) AS k FROM ev e JOIN applied a ON a.i = e.i
), free AS (  -- a chain nobody is extending now (`journal`), starting from a random one
    SELECT chain, seq, head, head_at FROM audit_chains
    WHERE chain >= 0 AND chain < %s::int AND EXISTS (SELECT FROM evs)
    ORDER BY mod(chain + %s::int, %s::int) LIMIT 1 FOR UPDATE SKIP LOCKED
), busy AS (  -- all are being extended: wait for one
    SELECT chain, seq, head, head_at FROM audit_chains
    WHERE chain = %s::int AND EXISTS (SELECT FROM evs) AND NOT EXISTS (SELECT FROM free) FOR UPDATE
), ch AS (  -- with the chain's last time: the head's (the locked row's latest version), or its head row's
    -- when that is later (a row written by a process from before head_at; a newer one may be unseen here)
    SELECT c.chain, c.seq, c.head, greatest(c.head_at, (
        SELECT l.timestamp FROM audit_logs l WHERE l.chain = c.chain AND l.seq = c.seq AND c.seq > 0
    )) AS head_at FROM (SELECT * FROM free UNION ALL SELECT * FROM busy) c
), timed AS (  -- each row's time: never earlier than the row's before it in the chain (`chain.clamp`)
    SELECT e.k, greatest(max(e.timestamp) OVER (ORDER BY e.k), (SELECT head_at FROM ch)) AS at FROM evs e
), hashed AS (  -- the content hash over the time written (`chain.encode_entry`: "26:<time>" then the rest)
    SELECT t.k, t.at, sha256(convert_to('26:' || to_char(t.at, 'YYYY-MM-DD HH24:MI:SS.US') || e.rest, 'UTF8')) AS c
    FROM timed t JOIN evs e ON e.k = t.k
), linked AS (  -- entry_hash = sha256(previous entry_hash || content hash), row after row
    SELECT x.k, encode(sha256(decode(c.head, 'hex') || x.c), 'hex') AS h
    FROM hashed x CROSS JOIN ch c WHERE x.k = 1
    UNION ALL
    SELECT x.k, encode(sha256(decode(l.h, 'hex') || x.c), 'hex')
    FROM linked l JOIN hashed x ON x.k = l.k + 1
), logged AS (
    INSERT INTO audit_logs ({_AUDIT_OUT})
    SELECT x.at, {", ".join(f"e.{c}" for c in AUDIT_COLUMNS[1:])}, c.chain, c.seq + e.k, l.h, e.personal, e.subject
    FROM evs e JOIN linked l ON l.k = e.k JOIN hashed x ON x.k = e.k CROSS JOIN ch c ORDER BY e.k
    RETURNING 1
), extended AS (
    UPDATE audit_chains a
    SET seq = c.seq + (SELECT count(*) FROM evs), head = (SELECT h FROM linked ORDER BY k DESC LIMIT 1),
    head_at = (SELECT at FROM timed ORDER BY k DESC LIMIT 1)
    FROM ch c WHERE a.chain = c.chain AND EXISTS (SELECT FROM evs)
{outbox.APPLY_STEPS}), told AS (  -- the new states, for the other processes that remember these devices
    -- (delivered on commit), a few to a notification (a payload holds 8000 bytes): the transitions' own
    -- elements of the batch, as sent, after the sender's name
    SELECT pg_notify('{STATES_CHANNEL}', '["' || %s::text || '",[' || string_agg(t.element::text, ',') || ']]')
    FROM t JOIN applied a ON a.i = t.i WHERE t.writes GROUP BY t.i / {STATES_PER_NOTIFICATION}
)
SELECT t.i, a.i IS NOT NULL, {", ".join(f"d.{c}" for c in STATE_COLUMNS)}
FROM t LEFT JOIN applied a ON a.i = t.i
LEFT JOIN (  -- the state that won, for a transition that did not apply (read only for those)
    SELECT m.i, {", ".join(f"w.{c}" for c in STATE_COLUMNS)}
    FROM t m JOIN devices w ON w.tenant_id = m.tenant AND w.device_id = m.device_id
    WHERE NOT EXISTS (SELECT FROM applied x WHERE x.i = m.i)
) d ON d.i = t.i
WHERE (SELECT count(*) FROM told) >= 0  -- makes the notifications happen (a plain SELECT in WITH runs only if read)
-- and fails the statement (division by zero) rather than let an audit row go unwritten
AND 1 / (CASE WHEN (SELECT count(*) FROM logged) = (SELECT count(*) FROM evs) THEN 1 ELSE 0 END) = 1
"""
READ = f"SELECT {_COLUMNS} FROM devices WHERE (tenant_id, device_id) IN (SELECT * FROM unnest(%s::int[], %s::text[]))"
_TIMES = [n for n, c in enumerate(STATE_COLUMNS) if _PG_TYPES[c] == "timestamp"]


def states_from_notification(payload: str) -> tuple[str, list[DeviceState]]:
    """(sender, states) from one of APPLY's notifications: its transitions' elements, as `apply_args` made them."""
    sender, elements = json.loads(payload)
    states = []
    for element in elements:
        values = [element[2], *element[5:]]  # the device id, then the row the transition wrote
        for n in _TIMES:
            if values[n] is not None:
                values[n] = datetime.fromisoformat(values[n])
        states.append(DeviceState(*values))
    return sender, states


def apply_args(
    batch: Sequence[tuple[Transition, RequestContext]], sender: str, journal: Journal
) -> tuple[str, str, int, int, int, int, str]:
    """APPLY's parameters for these transitions: the transitions and their audit rows (with what the chain
    covers of each, and the webhook event each is, if any: `webhooks.catalogue`), as JSON; how many chains there
    are and where to start looking for a free one; and who sends them (so a process can skip the notifications
    of its own writes)."""
    rows, events = [], []
    for i, (transition, ctx) in enumerate(batch):
        after = transition.after
        new = _NO_ROW if after is None else after[1:]
        rows.append((i, ctx.tenant_id, transition.device_id, transition.expected_version, after is not None, *new))
        user_id = transition.user_id
        for event in transition.events:
            row = audit_row(event, transition.at, transition.device_id, user_id, ctx)
            events.append((i, len(events), *row, *journal.sql_columns(row), event_type(row)))
    chains, start = journal.chains, random.randrange(journal.chains)
    return _ENCODE(rows), _ENCODE(events), chains, chains - start, chains, start, sender


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=datetime.isoformat).encode  # made once, not per call


def apply_results(rows: Sequence[tuple], count: int) -> list[Applied]:
    """APPLY's answer, in the batch's order."""
    results: list[Applied] = [(False, None)] * count
    for i, applied, *state in rows:
        results[i] = (True, None) if applied else (False, None if state[0] is None else DeviceState(*state))
    return results


def read_args(keys: Sequence[Key]) -> tuple[list[int], list[str]]:
    """READ's parameters: the tenants and the device ids, position by position."""
    return [tenant for tenant, _ in keys], [device_id for _, device_id in keys]


def read_results(rows: Sequence[tuple], keys: Sequence[Key]) -> list[DeviceState | None]:
    found = {state.key: state for state in map(DeviceState._make, rows)}
    return [found.get(key) for key in keys]


class Store(ABC):
    """The device table as the engine sees it; `open_store` picks the database's kind."""

    optimistic = True  # decide on a cached or read state and apply if unchanged (else: always apply_locked)

    def __init__(self, database: Database, journal: Journal):
        self.database, self.journal = database, journal

    @abstractmethod
    def read(self, key: Key) -> DeviceState | None:
        """The device's state now, or None if there is no such device."""

    @abstractmethod
    def apply(self, transition: Transition, ctx: RequestContext) -> Applied:
        """Write the transition and its audit rows if the device is still at `transition.before`'s version."""

    @abstractmethod
    def apply_locked(self, key: Key, decide: Decide, ctx: RequestContext) -> Transition:
        """Read, decide and apply with the row held, so the decision cannot be overtaken."""

    def recent(self, limit: int) -> list[DeviceState]:
        """The `limit` most recently used active devices, most recent first (to warm a cache)."""
        query = (
            Device.select(*(getattr(Device, c) for c in STATE_COLUMNS))
            .where(Device.is_active)
            .order_by(Device.last_used.desc(nulls="LAST"), Device.created_at.desc())
            .limit(limit)
        )
        return [DeviceState(*row) for row in query.tuples()]

    def record(self, rows: list[tuple]) -> None:
        """Audit rows (in AUDIT_COLUMNS order), into a chain, in the caller's transaction."""
        self.journal.append(rows)

    def record_about_device(self, event: AuditEvent, at: datetime, key: Key, ctx: RequestContext) -> None:
        """An audit row about a device that changes nothing (a code lookup), naming the device's user as its row
        has it now, with the row held until this commits (PostgreSQL: FOR SHARE): an erasure of the user either
        comes after, and empties this row too, or came before, and the row names nobody. In a transaction."""
        query = Device.select(Device.user_id).where(_is(key))
        if is_postgres(self.database):
            query = query.for_update("FOR SHARE")
        self.record([audit_row(event, at, key[1], query.scalar(), ctx)])

    def pending_expired(self, at: datetime, limit: int) -> list[Key]:
        """The enrolments still pending past their deadline (the partial index finds them)."""
        query = (
            Device.select(Device.tenant_id, Device.device_id)
            .where(Device.pending_until.is_null(False) & (Device.pending_until <= at) & Device.is_active)
            .order_by(Device.pending_until)
            .limit(limit)
        )
        return list(query.tuples())

    def read_recovery(self, tenant_id: int, user_id: str, lock: bool = False) -> RecoveryState | None:
        query = RecoveryCodes.select(*(getattr(RecoveryCodes, c) for c in _RECOVERY_COLUMNS))
        query = query.where((RecoveryCodes.tenant_id == tenant_id) & (RecoveryCodes.user_id == user_id))
        if lock and is_postgres(self.database):
            query = query.for_update()
        row = query.tuples().first()
        return None if row is None else RecoveryState.from_row(row)

    def apply_recovery(self, user_id: str, decide: Callable[[RecoveryState | None], Transition], ctx: RequestContext):
        """Read a user's recovery codes with the row held, decide and apply, in one transaction: they are
        used rarely, so they always take the lock (SQLite: the write transaction; PostgreSQL: FOR UPDATE, and
        for a user with no set yet, an INSERT that only one of two concurrent requests wins)."""
        for _ in range(LOCKED_ROUNDS):
            with self.database.atomic():
                transition = decide(self.read_recovery(ctx.tenant_id, user_id, lock=True))
                after = transition.after
                if after is not None:
                    values = dict(zip(_RECOVERY_COLUMNS, after.row(), strict=True))
                    if transition.before is None:
                        if not RecoveryCodes.insert(values).on_conflict_ignore().as_rowcount().execute():
                            continue  # another request created the set first: decide again on it
                    else:
                        mine = (RecoveryCodes.tenant_id == ctx.tenant_id) & (RecoveryCodes.user_id == user_id)
                        RecoveryCodes.update(values).where(mine).execute()
                named = audited_user(transition, user_id)
                rows = [audit_row(e, transition.at, None, named, ctx) for e in transition.events]
                if rows:
                    self.record(rows)
                return transition
        raise RuntimeError(f"the recovery codes of {user_id!r} changed under a row lock {LOCKED_ROUNDS} times")


class Statements(NamedTuple):
    """The EXECUTEs of the prepared READ and APPLY, and the name this process's writes go under in APPLY's
    notifications: what the blocking store and the event loop's store share."""

    read: str
    apply: str
    sender: str


class PostgresStore(Store):
    def __init__(self, database: Database, journal: Journal):
        super().__init__(database, journal)
        self.statements = Statements(
            read=_prepare(database, "otp_read", READ),
            apply=_prepare(database, "otp_apply", APPLY),
            sender=secrets.token_hex(8),
        )

    @property
    def sender(self) -> str:
        return self.statements.sender

    def read(self, key: Key) -> DeviceState | None:
        return read_results(self.database.execute_sql(self.statements.read, read_args([key])).fetchall(), [key])[0]

    def apply(self, transition: Transition, ctx: RequestContext) -> Applied:
        args = apply_args([(transition, ctx)], self.sender, self.journal)
        rows = self.database.execute_sql(self.statements.apply, args).fetchall()
        return apply_results(rows, 1)[0]

    def apply_locked(self, key: Key, decide: Decide, ctx: RequestContext) -> Transition:
        lock = f"SELECT {_COLUMNS} FROM devices WHERE tenant_id = %s AND device_id = %s FOR UPDATE"
        for _ in range(LOCKED_ROUNDS):
            with self.database.atomic():
                row = self.database.execute_sql(lock, key).fetchone()
                transition = decide(None if row is None else DeviceState(*row))
                if transition.empty or self.apply(transition, ctx)[0]:
                    return transition
        raise RuntimeError(f"device {key!r} changed under a row lock {LOCKED_ROUNDS} times")


class SqliteStore(Store):
    optimistic = False  # writers queue for the database lock anyway: decide inside the write transaction

    def read(self, key: Key) -> DeviceState | None:
        query = Device.select(*(getattr(Device, c) for c in STATE_COLUMNS)).where(_is(key))
        row = query.tuples().first()
        return None if row is None else DeviceState(*row)

    def apply(self, transition: Transition, ctx: RequestContext) -> Applied:
        with self.database.atomic():  # IMMEDIATE: no other writer until it commits
            key = (ctx.tenant_id, transition.device_id)
            current = self.read(key)
            if (None if current is None else current.version) != transition.expected_version:
                return False, current
            if transition.after is not None:
                values = {c: getattr(transition.after, c) for c in STATE_COLUMNS}
                if current is None:
                    Device.insert(values).execute()
                else:
                    Device.update(values).where(_is(key)).execute()
            user_id = transition.user_id
            rows = [audit_row(e, transition.at, transition.device_id, user_id, ctx) for e in transition.events]
            if rows:
                self.record(rows)
        return True, None

    def apply_locked(self, key: Key, decide: Decide, ctx: RequestContext) -> Transition:
        with self.database.atomic():
            transition = decide(self.read(key))
            if not transition.empty:
                self.apply(transition, ctx)  # a savepoint inside our transaction: nobody can change the row
        return transition


def _is(key: Key):
    """The condition naming one device: its id within its tenant."""
    return (Device.tenant_id == key[0]) & (Device.device_id == key[1])


def open_store(database: Database, journal: Journal) -> Store:
    return PostgresStore(database, journal) if is_postgres(database) else SqliteStore(database, journal)


def _prepare(database: Database, name: str, sql: str) -> str:
    """Register `sql` to be prepared on every new connection; returns the EXECUTE that runs it.

    psycopg2 has no protocol-level prepare, so this uses SQL PREPARE with numbered parameters and
    EXECUTE with psycopg2's own. Each parameter is written `%s::type` in `sql`, and the EXECUTE repeats
    the cast, so an array of only NULLs still takes its type."""
    parts = sql.split("%s")
    casts = [part[: len(part) - len(part.lstrip(":abcdefghijklmnopqrstuvwxyz[]"))] for part in parts[1:]]
    numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
    database.prepare(name, f"PREPARE {name} AS {numbered}")
    return f"EXECUTE {name} ({', '.join(f'%s{cast}' for cast in casts)})"
