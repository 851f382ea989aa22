"""The device lifecycle: enrolments awaiting their first code (`devices.pending_until`), and each user's
recovery codes, kept only as keyed hashes."""

from peewee import BigIntegerField, CharField, DateTimeField, IntegerField, Model, TextField


def up(migrator, db):
    class RecoveryCodes(Model):
        user_id = CharField(max_length=254, primary_key=True)
        codes = TextField()
        key_version = IntegerField()
        created_at = DateTimeField()
        last_used = DateTimeField(null=True)
        failed_attempts = IntegerField(default=0)
        locked_until = DateTimeField(null=True)
        version = BigIntegerField(default=0)

        class Meta:
            database = db
            table_name = "recovery_codes"

    db.create_tables([RecoveryCodes])
    migrator.migrate(migrator.add_column("devices", "pending_until", DateTimeField(null=True)))
    # the expiry sweep looks for pending enrolments past their deadline; nearly every row has NULL here
    db.execute_sql("CREATE INDEX devices_pending_until ON devices (pending_until) WHERE pending_until IS NOT NULL")


def down(migrator, db):
    db.execute_sql("DROP INDEX devices_pending_until")
    migrator.migrate(migrator.drop_column("devices", "pending_until"))
    db.execute_sql("DROP TABLE recovery_codes")
