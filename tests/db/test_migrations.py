"""Schema migrations: a database created by the first migration upgrades to head, keeping its rows."""

import uuid
from datetime import datetime
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest

from otp_service.db.database import migrate, open_database, pending_migrations
from otp_service.db.models import Device, Report
from tests.conftest import PG_URL


@pytest.fixture
def empty_db_url(backend, tmp_path):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/migrations.db"
        return
    name = f"otp_migrations_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_URL)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    parsed = urlparse(PG_URL)
    yield urlunparse(parsed._replace(path=f"/{name}"))
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def test_first_migration_upgrades_to_head(empty_db_url):
    database = open_database(empty_db_url, 2)
    assert migrate(database, target="0001_initial") == ["0001_initial"]
    later = [
        "0002_reports",
        "0003_drop_action_index",
        "0004_device_version",
        "0005_api_clients",
        "0006_lifecycle",
        "0007_audit_chains",
        "0008_erasure_index",
        "0009_reports_pdf",
        "0010_tenants",
        "0011_user_id_spelling",
        "0012_audit_monotonic_time",
        "0013_report_manifest",
        "0014_webhooks",
    ]
    assert pending_migrations(database) == later
    with database.connection_context():
        database.execute_sql(
            "INSERT INTO devices (device_id, user_id, salt, key_version, derived_key_hash, digits, interval, "
            "algorithm, is_active, created_at, usage_count, last_step, drift, failed_attempts) "
            "VALUES ('OLD-1', 'alice', 'aa', 1, 'bb', 6, 30, 'SHA1', true, '2026-01-01 00:00:00', 3, 100, 0, 0)"
        )
        assert not database.table_exists("reports")
    assert migrate(database) == later
    assert migrate(database) == []  # idempotent
    assert pending_migrations(database) == []
    with database.connection_context():
        old = Device.get(Device.device_id == "OLD-1")
        assert old.usage_count == 3 and old.version == 0  # a row from before versions starts at 0
        assert old.tenant_id == 1  # a row from before tenants is the default tenant's
        Report.create(
            kind="audit",
            period_start=datetime(2026, 1, 1),
            period_end=datetime(2026, 1, 2),
            created_at=datetime(2026, 1, 2),
            html="<p>x</p>",
            data_zip=b"",
        )
        assert Report.select().count() == 1
        indexes = {i.name for i in database.get_indexes("audit_logs")}
    assert any("user_id" in name for name in indexes) and any("device_id" in name for name in indexes)
    database.close_all()


def test_the_device_state_is_the_device_row_column_for_column():
    """The store reads and writes `DeviceState` as the row (and derives the PostgreSQL types from the model):
    the two must name the same columns in the same order."""
    from otp_service.core.transitions import STATE_COLUMNS
    from otp_service.db.models import Device

    assert tuple(Device._meta.sorted_field_names) == STATE_COLUMNS
