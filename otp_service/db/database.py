"""Opening the database named by DATABASE_URL, and keeping its schema current.

One pooled connection set per process, opened after any fork. Checking a connection out
of the pool does not ping the server (that would be a round trip on every request);
instead, a unit of work that hits a dead connection drops the idle ones so that the next
request reconnects — see `service.unit_of_work`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from peewee import Database, InterfaceError, OperationalError
from playhouse.migrations import Runner
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase, PooledSqliteDatabase

from ..config import ConfigError
from .models import db as proxy

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HISTORY_TABLE = "schema_migration"

# What a lost or unreachable database raises through peewee and the pool.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, MaxConnectionsExceeded)


class _PostgresPool(PooledPostgresqlDatabase):
    """The pool, plus statements every new connection prepares once (the store's `APPLY` and `READ`), so PostgreSQL
    parses and plans them once per connection instead of once per request."""

    def __init__(self, *args, **kwargs):
        self.prepared: dict[str, str] = {}  # name -> "PREPARE name AS …"
        self._prepared_on: set[tuple[int, int]] = set()  # connections (id, backend pid) that have them
        super().__init__(*args, **kwargs)

    def prepare(self, name: str, statement: str) -> None:
        if self.prepared.get(name) == statement:
            return
        self.prepared[name] = statement
        self._prepared_on.clear()
        self.close_idle()  # connections made before this statement existed; ones in use may never run it

    def _is_closed(self, conn):
        # The stock pool runs SELECT 1 on every checkout; the transaction status is local and free.
        return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown

    def _initialize_connection(self, conn):
        # Called on every checkout; prepare once per physical connection.
        super()._initialize_connection(conn)
        marker = (id(conn), conn.info.backend_pid)
        if self.prepared and marker not in self._prepared_on:
            with conn.cursor() as cursor:
                cursor.execute("DEALLOCATE ALL")
                for statement in self.prepared.values():
                    cursor.execute(statement)
            self._prepared_on.add(marker)


def open_database(
    url: str, pool_size: int = 8, timeout: float = 5.0, application_name: str = "otp-service"
) -> Database:
    """A pooled database for `url`, bound to the models' proxy.

    `timeout` bounds how long anything waits: a connection attempt, a free pool slot, a
    statement (PostgreSQL) or a lock (SQLite), so an outage answers 503 instead of hanging.
    """
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = sqlite_path(url)
        if path and path != ":memory:" and not Path(path).resolve().parent.is_dir():
            # A typo in a path must not quietly create a new, empty database somewhere else.
            raise ConfigError("DATABASE_URL", f"the folder {Path(path).resolve().parent} does not exist")
        database = PooledSqliteDatabase(
            path or ":memory:",
            max_connections=pool_size,
            timeout=timeout,
            check_same_thread=False,
            lock_type="IMMEDIATE",  # writers queue on busy_timeout instead of failing to upgrade a read lock
            pragmas={"journal_mode": "wal", "busy_timeout": int(timeout * 1000), "synchronous": "normal"},
        )
    elif scheme in ("postgres", "postgresql"):
        database = _PostgresPool(
            (parsed.path or "/").lstrip("/") or "postgres",
            max_connections=pool_size,
            timeout=timeout,
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            host=parsed.hostname,
            port=parsed.port,
            connect_timeout=max(1, int(timeout)),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            application_name=application_name,
        )
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.scheme!r}")
    proxy.initialize(database)
    return database


def sqlite_path(url: str) -> str:
    """The file an SQLite URL names, percent-escapes decoded: relative to the working directory for
    sqlite:///rel.db, absolute for sqlite:////abs.db; "" or ":memory:" for an in-memory database. The one
    reading of such a URL, so that the database opened and the file a report checks for are the same."""
    path = unquote(url.split("://", 1)[1].split("?", 1)[0])
    return path[1:] if path.startswith("/") else path


def is_postgres(database: Database) -> bool:
    return isinstance(database, PooledPostgresqlDatabase)


def _runner(database: Database) -> Runner:
    return Runner(database, str(MIGRATIONS_DIR), table_name=HISTORY_TABLE)


MIGRATION_LOCK = 0x6F7470  # "otp": a PostgreSQL advisory lock key only the migration runner takes


def migrate(database: Database, target: str | None = None) -> list[str]:
    """Apply pending migrations in order; returns their names (empty when already current).

    On PostgreSQL a session advisory lock serialises runners, so two instances starting at once
    cannot apply the same migration twice (playhouse.migrations takes no lock of its own).
    """
    with database.connection_context():
        if is_postgres(database):
            database.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            return _runner(database).up(target)
        finally:
            if is_postgres(database):
                database.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def pending_migrations(database: Database) -> list[str]:
    with database.connection_context():
        return [m.name for m in _runner(database).status() if m.path is not None and not m.applied]
