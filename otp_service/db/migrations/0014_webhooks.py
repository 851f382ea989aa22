"""Webhooks (`otp_service.webhooks`): endpoints, the outbox of messages written with their audit rows, and the
deliveries the worker claims. The partial index is the worker's queue: only pending deliveries, by due time; the
time indexes serve retention (WEBHOOK_RETENTION_DAYS) and the audit report's period."""

from peewee import (
    SQL,
    AutoField,
    BigAutoField,
    BigIntegerField,
    CharField,
    DateTimeField,
    IntegerField,
    Model,
    NodeList,
    SqliteDatabase,
    TextField,
)


def up(migrator, db):
    sqlite = isinstance(db, SqliteDatabase)

    class NeverReused:
        """An id never given twice: on SQLite a plain INTEGER PRIMARY KEY reuses the highest id once its row is
        deleted (an endpoint deleted, a message pruned), and a receiver would take a new message for one it has
        seen — the webhook-id is the message's id — and the audit trail two endpoints for one."""

        def ddl(self, ctx):
            node = super().ddl(ctx)
            return NodeList((node, SQL("AUTOINCREMENT"))) if sqlite else node

    class Serial(NeverReused, AutoField):
        pass

    class BigSerial(NeverReused, BigAutoField):
        pass

    class WebhookEndpoint(Model):
        id = Serial()
        tenant_id = IntegerField()
        url = CharField(max_length=2048)
        description = CharField(max_length=256, null=True)
        event_types = TextField(null=True)
        salt = CharField(max_length=64)
        key_version = IntegerField()
        previous_salt = CharField(max_length=64, null=True)
        previous_key_version = IntegerField(null=True)
        previous_valid_until = DateTimeField(null=True)
        key_hash = CharField(max_length=64, null=True)
        previous_key_hash = CharField(max_length=64, null=True)
        created_at = DateTimeField()
        disabled_at = DateTimeField(null=True)
        disabled_reason = CharField(max_length=32, null=True)

        class Meta:
            database = db
            table_name = "webhook_endpoints"
            indexes = ((("tenant_id",), False),)

    class WebhookMessage(Model):
        id = BigSerial()
        tenant_id = IntegerField()
        event_type = CharField(max_length=40)
        occurred_at = DateTimeField()
        device_id = CharField(max_length=128, null=True)
        user_id = CharField(max_length=254, null=True)
        subject = CharField(max_length=64, null=True)
        actor = CharField(max_length=64, null=True)
        request_id = CharField(max_length=64, null=True)
        reason = CharField(max_length=32, null=True)
        data = TextField(null=True)

        class Meta:
            database = db
            table_name = "webhook_messages"
            indexes = (
                (("tenant_id", "user_id"), False),  # an erasure finds a user's messages
                (("occurred_at",), False),  # retention (`queue.prune`) and the audit report find a period's
            )

    class WebhookDelivery(Model):
        id = BigSerial()
        message_id = BigIntegerField(index=True)
        endpoint_id = IntegerField()
        status = CharField(max_length=16)
        attempts = IntegerField(default=0)
        next_attempt_at = DateTimeField(null=True)
        last_attempt_at = DateTimeField(null=True)
        last_status = IntegerField(null=True)
        last_error = CharField(max_length=256, null=True)
        delivered_at = DateTimeField(null=True)
        created_at = DateTimeField()

        class Meta:
            database = db
            table_name = "webhook_deliveries"
            indexes = (
                (("endpoint_id", "id"), False),  # an endpoint's recent deliveries
                (("created_at",), False),  # retention (`queue.prune`): the oldest first
            )

    db.create_tables([WebhookEndpoint, WebhookMessage, WebhookDelivery])
    db.execute_sql(
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending'"
    )


def down(migrator, db):
    for table in ("webhook_deliveries", "webhook_messages", "webhook_endpoints"):
        db.execute_sql(f"DROP TABLE {table}")
