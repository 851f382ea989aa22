"""Devices and their audit trail (frozen copies of the models as they were at this migration)."""

from peewee import (
    AutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DateTimeField,
    IntegerField,
    Model,
    TextField,
)


def up(migrator, db):
    class Device(Model):
        device_id = CharField(max_length=128, primary_key=True)
        user_id = CharField(max_length=254, index=True)
        salt = CharField(max_length=64)
        key_version = IntegerField()
        derived_key_hash = CharField(max_length=64)
        digits = IntegerField()
        interval = IntegerField()
        algorithm = CharField(max_length=8)
        issuer = CharField(max_length=64, null=True)
        is_active = BooleanField(default=True)
        created_at = DateTimeField()
        last_used = DateTimeField(null=True)
        usage_count = IntegerField(default=0)
        deactivated_at = DateTimeField(null=True)
        last_step = BigIntegerField(default=-1)
        drift = IntegerField(default=0)
        failed_attempts = IntegerField(default=0)
        locked_until = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "devices"

    class AuditLog(Model):
        id = AutoField()
        timestamp = DateTimeField(index=True)
        action = CharField(max_length=32)
        success = BooleanField()
        reason = CharField(max_length=32, null=True)
        device_id = CharField(max_length=128, null=True)
        user_id = CharField(max_length=254, null=True)
        ip_address = CharField(max_length=64, null=True)
        user_agent = CharField(max_length=256, null=True)
        request_id = CharField(max_length=64, null=True)
        additional_data = TextField(null=True)

        class Meta:
            database = db
            table_name = "audit_logs"
            # Keyset pagination of a device's or a user's trail walks (column, id) newest first.
            indexes = ((("device_id", "id"), False), (("user_id", "id"), False), (("action", "timestamp"), False))

    db.create_tables([Device, AuditLog])


def down(migrator, db):
    db.execute_sql("DROP TABLE audit_logs")
    db.execute_sql("DROP TABLE devices")
