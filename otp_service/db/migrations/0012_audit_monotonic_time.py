"""Time within an audit chain never goes back: each chain keeps its last row's time (`head_at`, which the
writers clamp to), and the place up to which its rows were written before that rule (`timed_from`): those
keep the times they have — several processes, or a clock stepped back, could write a row a little earlier
than the one before it — and every row after must be no earlier than its predecessor. The checkpoints sign
`timed_from`, so moving it is caught too."""

from peewee import BigIntegerField, DateTimeField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("audit_chains", "head_at", DateTimeField(null=True)),
        migrator.add_column("audit_chains", "timed_from", BigIntegerField(default=0)),
    )
    db.execute_sql("UPDATE audit_chains SET timed_from = seq WHERE chain >= 0")


def down(migrator, db):
    migrator.migrate(
        migrator.drop_column("audit_chains", "timed_from"), migrator.drop_column("audit_chains", "head_at")
    )
