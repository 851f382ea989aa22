"""Drop the (action, timestamp) audit index: every report query already narrows by the timestamp index
first, and each index is one more write on the verification hot path (measured in bench/)."""


def up(migrator, db):
    migrator.migrate(migrator.drop_index("audit_logs", "auditlog_action_timestamp"))


def down(migrator, db):
    migrator.migrate(migrator.add_index("audit_logs", ("action", "timestamp"), False))
