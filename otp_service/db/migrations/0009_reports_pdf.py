"""Stored reports keep a PDF beside the HTML (for archiving), and say whose report a per-user report is:
`subject` is the user id (so the listing can name it, and erasing the user deletes the report)."""

from peewee import BlobField, CharField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("reports", "pdf", BlobField(null=True)),
        migrator.add_column("reports", "subject", CharField(max_length=254, null=True)),
    )


def down(migrator, db):
    migrator.migrate(migrator.drop_column("reports", "subject"), migrator.drop_column("reports", "pdf"))
