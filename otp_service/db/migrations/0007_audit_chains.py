"""Tamper evidence: each audit row's chain, place and link hash (and the keyed digest of its personal
fields), the chains' heads, and signed checkpoints. Rows written before this migration stay unchained;
`audit verify` counts them apart."""

from peewee import AutoField, BigIntegerField, CharField, DateTimeField, IntegerField, Model, TextField


def up(migrator, db):
    class AuditChain(Model):
        chain = IntegerField(primary_key=True)
        seq = BigIntegerField(default=0)
        head = CharField(max_length=64)
        floor_seq = BigIntegerField(default=0)
        floor_hash = CharField(max_length=64)

        class Meta:
            database = db
            table_name = "audit_chains"

    class AuditCheckpoint(Model):
        id = AutoField()
        created_at = DateTimeField(index=True)
        reason = CharField(max_length=16)
        payload = TextField()
        signatures = TextField()

        class Meta:
            database = db
            table_name = "audit_checkpoints"

    db.create_tables([AuditChain, AuditCheckpoint])
    genesis = "0" * 64
    values = ", ".join(f"({k}, 0, '{genesis}', 0, '{genesis}')" for k in range(64))  # journal.MAX_CHAINS
    db.execute_sql(f"INSERT INTO audit_chains (chain, seq, head, floor_seq, floor_hash) VALUES {values}")
    # chain -1 marks the boundary: audit rows up to this id were written before the chains (checkpoints count them)
    db.execute_sql(
        "INSERT INTO audit_chains (chain, seq, head, floor_seq, floor_hash) "
        f"SELECT -1, COALESCE(MAX(id), 0), '{genesis}', 0, '{genesis}' FROM audit_logs"
    )
    migrator.migrate(
        migrator.add_column("audit_logs", "chain", IntegerField(null=True)),
        migrator.add_column("audit_logs", "seq", BigIntegerField(null=True)),
        migrator.add_column("audit_logs", "entry_hash", CharField(max_length=64, null=True)),
        migrator.add_column("audit_logs", "personal", CharField(max_length=64, null=True)),
        migrator.add_column("audit_logs", "subject", CharField(max_length=64, null=True)),
    )
    # verification walks each chain in order; an erasure finds a subject's rows
    db.execute_sql("CREATE UNIQUE INDEX audit_logs_chain_seq ON audit_logs (chain, seq)")
    # /metrics counts failed verifications on every scrape: without this, a scan of the whole table
    db.execute_sql("CREATE INDEX audit_logs_failed_verifications ON audit_logs (id) WHERE action = 'AUDIT_VERIFIED'")


def down(migrator, db):
    db.execute_sql("DROP INDEX audit_logs_failed_verifications")
    db.execute_sql("DROP INDEX audit_logs_chain_seq")
    migrator.migrate(
        *(migrator.drop_column("audit_logs", c) for c in ("chain", "seq", "entry_hash", "personal", "subject"))
    )
    db.execute_sql("DROP TABLE audit_checkpoints")
    db.execute_sql("DROP TABLE audit_chains")
