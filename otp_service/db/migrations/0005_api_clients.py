"""Named API clients with scopes, and the client (actor) on every audit row."""

from peewee import AutoField, CharField, DateTimeField, Model


def up(migrator, db):
    class ApiClient(Model):
        id = AutoField()
        name = CharField(max_length=64, unique=True)
        scopes = CharField(max_length=128)
        key_digest = CharField(max_length=64, unique=True)
        previous_key_digest = CharField(max_length=64, null=True, unique=True)
        previous_valid_until = DateTimeField(null=True)
        created_at = DateTimeField()
        last_used_at = DateTimeField(null=True)
        expires_at = DateTimeField(null=True)
        revoked_at = DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "api_clients"

    db.create_tables([ApiClient])
    migrator.migrate(migrator.add_column("audit_logs", "actor", CharField(max_length=64, null=True)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("audit_logs", "actor"))
    db.execute_sql("DROP TABLE api_clients")
