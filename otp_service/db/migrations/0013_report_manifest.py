"""A stored report keeps its signed manifest (`reports.manifest`): every file the report was made as, with its
SHA-256, signed with the audit key, so a downloaded copy can be checked with the public key alone
(`manifest_signature`: the raw Ed25519 signature, base64). None: made without the service's keys, or before
manifests existed."""

from peewee import TextField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("reports", "manifest", TextField(null=True)),
        migrator.add_column("reports", "manifest_signature", TextField(null=True)),
    )


def down(migrator, db):
    migrator.migrate(migrator.drop_column("reports", "manifest_signature"), migrator.drop_column("reports", "manifest"))
