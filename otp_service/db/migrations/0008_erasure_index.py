"""A partial index for the erasure records: every verification reads them (an erased user's rows verify
against the pseudonym recorded there), and without an index that was a scan of the whole audit table
(4 s of a day's report over 10,000,000 rows, `bench large`). Partial: the hot path's inserts skip it."""


def up(migrator, db):
    db.execute_sql("CREATE INDEX audit_logs_erasures ON audit_logs (id) WHERE action = 'USER_ERASED'")


def down(migrator, db):
    db.execute_sql("DROP INDEX audit_logs_erasures")
