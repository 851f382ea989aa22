"""Tenants: every device, recovery-code set, audit row, report and API client belongs to one. Today's data goes
into the tenant `default` (id 1). A device id, and a user id, name something only within its tenant, so the
devices' and recovery codes' primary keys become (tenant_id, device_id) and (tenant_id, user_id); an audit
row's tenant is covered by its chain (rows of the default tenant hash as before)."""

from datetime import datetime

from peewee import AutoField, CharField, DateTimeField, Model, TextField
from playhouse.migrate import PostgresqlMigrator

# SQLite cannot change a primary key: the two tables are made anew and their rows copied.
_DEVICES = """CREATE TABLE "devices_new" ("device_id" VARCHAR(128) NOT NULL, "user_id" VARCHAR(254) NOT NULL,
"salt" VARCHAR(64) NOT NULL, "key_version" INTEGER NOT NULL, "derived_key_hash" VARCHAR(64) NOT NULL,
"digits" INTEGER NOT NULL, "interval" INTEGER NOT NULL, "algorithm" VARCHAR(8) NOT NULL, "issuer" VARCHAR(64),
"is_active" INTEGER NOT NULL, "created_at" DATETIME NOT NULL, "last_used" DATETIME, "usage_count" INTEGER NOT NULL,
"deactivated_at" DATETIME, "last_step" INTEGER NOT NULL, "drift" INTEGER NOT NULL, "failed_attempts" INTEGER NOT NULL,
"locked_until" DATETIME, "version" INTEGER NOT NULL, "pending_until" DATETIME, "tenant_id" INTEGER NOT NULL DEFAULT 1,
PRIMARY KEY ("tenant_id", "device_id"))"""
_RECOVERY = """CREATE TABLE "recovery_codes_new" ("user_id" VARCHAR(254) NOT NULL, "codes" TEXT NOT NULL,
"key_version" INTEGER NOT NULL, "created_at" DATETIME NOT NULL, "last_used" DATETIME,
"failed_attempts" INTEGER NOT NULL, "locked_until" DATETIME, "version" INTEGER NOT NULL,
"tenant_id" INTEGER NOT NULL DEFAULT 1,
PRIMARY KEY ("tenant_id", "user_id"))"""
_DEVICE_COLUMNS = (
    "device_id, user_id, salt, key_version, derived_key_hash, digits, interval, algorithm, issuer, is_active, "
    "created_at, last_used, usage_count, deactivated_at, last_step, drift, failed_attempts, locked_until, version, "
    "pending_until"
)
_RECOVERY_COLUMNS = "user_id, codes, key_version, created_at, last_used, failed_attempts, locked_until, version"


def up(migrator, db):
    class Tenant(Model):
        id = AutoField()
        name = CharField(max_length=64, unique=True)
        created_at = DateTimeField()
        policy = TextField(null=True)
        rate_limits = TextField(null=True)

        class Meta:
            database = db
            table_name = "tenants"

    db.create_tables([Tenant])
    Tenant.insert(id=1, name="default", created_at=datetime.utcnow()).execute()
    if isinstance(migrator, PostgresqlMigrator):
        db.execute_sql("SELECT setval(pg_get_serial_sequence('tenants', 'id'), 1)")
        for table, key in (("devices", "device_id"), ("recovery_codes", "user_id")):
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN tenant_id INTEGER NOT NULL DEFAULT 1")
            db.execute_sql(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
            db.execute_sql(f"ALTER TABLE {table} ADD PRIMARY KEY (tenant_id, {key})")
    else:
        db.execute_sql(_DEVICES)
        db.execute_sql(f"INSERT INTO devices_new ({_DEVICE_COLUMNS}) SELECT {_DEVICE_COLUMNS} FROM devices")
        db.execute_sql("DROP TABLE devices")
        db.execute_sql("ALTER TABLE devices_new RENAME TO devices")
        db.execute_sql(
            'CREATE INDEX "devices_pending_until" ON devices (pending_until) WHERE pending_until IS NOT NULL'
        )
        db.execute_sql(_RECOVERY)
        db.execute_sql(
            f"INSERT INTO recovery_codes_new ({_RECOVERY_COLUMNS}) SELECT {_RECOVERY_COLUMNS} FROM recovery_codes"
        )
        db.execute_sql("DROP TABLE recovery_codes")
        db.execute_sql("ALTER TABLE recovery_codes_new RENAME TO recovery_codes")
    db.execute_sql("DROP INDEX IF EXISTS device_user_id")
    db.execute_sql('CREATE INDEX "devices_tenant_user" ON devices (tenant_id, user_id)')  # a user's devices
    # a default in the table itself: a process of the previous version, still writing during a deploy, writes
    # into the default tenant (as its rows always were)
    for table in ("audit_logs", "api_clients", "reports"):
        db.execute_sql(f"ALTER TABLE {table} ADD COLUMN tenant_id INTEGER NOT NULL DEFAULT 1")
    migrator.migrate(migrator.add_column("reports", "withdrawn_at", DateTimeField(null=True)))
    # a user's trail, newest first, within a tenant (replaces the index on user_id alone)
    db.execute_sql('CREATE INDEX "audit_logs_tenant_user_id" ON audit_logs (tenant_id, user_id, id)')
    db.execute_sql("DROP INDEX IF EXISTS auditlog_user_id_id")


def down(migrator, db):
    """Irreversible: two tenants may each hold a device or a user of the same id, which one namespace cannot."""
    raise RuntimeError("0010_tenants cannot be undone: restore the database from before it instead")
