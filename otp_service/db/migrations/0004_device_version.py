"""A version on every device row: each state change is decided on one version and applied only if the
row still has it (`store.py`), which is what makes the failure budget hold under any concurrency."""

from peewee import BigIntegerField


def up(migrator, db):
    migrator.migrate(migrator.add_column("devices", "version", BigIntegerField(default=0)))


def down(migrator, db):
    migrator.migrate(migrator.drop_column("devices", "version"))
