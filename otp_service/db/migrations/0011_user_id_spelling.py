"""User ids in one spelling (Unicode NFKC, `core.validation.normal_user_id`): every id a route or command
reads is normalised from this release on; this brings the devices and recovery-code sets written before
it to the same spelling, so `Ａlice`'s device is found as `Alice`'s.

Audit rows keep the spelling they were written with (their personal-data digest covers it): each such
spelling is listed in `user_spellings`, read by the user's trail, report and erasure. A recovery-code set
whose normalised id already has one stays under its old spelling (the primary key allows one set per
user), listed there too: replaced by the next issue, erased with the user. Only ids with a non-ASCII
character can change (ASCII is its own NFKC), so only those are read."""

import unicodedata

TABLE = """CREATE TABLE user_spellings (tenant_id INTEGER NOT NULL, spelling VARCHAR(254) NOT NULL,
user_id VARCHAR(254) NOT NULL, PRIMARY KEY (tenant_id, spelling))"""


def _non_ascii(db) -> str:
    postgres = db.param == "%s"
    return "octet_length(user_id) > length(user_id)" if postgres else "length(CAST(user_id AS BLOB)) > length(user_id)"


def _rename(db, table: str, key: str, spellings: dict) -> None:
    rows = db.execute_sql(f"SELECT tenant_id, {key}, user_id FROM {table} WHERE {_non_ascii(db)}").fetchall()
    taken = {tuple(r) for r in db.execute_sql(f"SELECT tenant_id, user_id FROM {table}").fetchall()}
    param = db.param
    for tenant, ident, user in rows:
        normal = unicodedata.normalize("NFKC", user)
        if normal == user:
            continue
        if table == "recovery_codes" and (tenant, normal) in taken:
            spellings[(tenant, user)] = normal  # left under its old spelling: found through the list
            continue
        taken.add((tenant, normal))
        db.execute_sql(
            f"UPDATE {table} SET user_id = {param} WHERE tenant_id = {param} AND {key} = {param}",
            (normal, tenant, ident),
        )


def up(migrator, db):
    db.execute_sql(TABLE)
    db.execute_sql("CREATE INDEX user_spellings_tenant_user ON user_spellings (tenant_id, user_id)")
    spellings: dict = {}
    query = f"SELECT DISTINCT tenant_id, user_id FROM audit_logs WHERE user_id IS NOT NULL AND {_non_ascii(db)}"
    for tenant, user in db.execute_sql(query).fetchall():
        normal = unicodedata.normalize("NFKC", user)
        if normal != user:
            spellings[(tenant, user)] = normal
    _rename(db, "devices", "device_id", spellings)
    _rename(db, "recovery_codes", "user_id", spellings)
    param = db.param
    for (tenant, spelling), normal in spellings.items():
        db.execute_sql(
            f"INSERT INTO user_spellings (tenant_id, spelling, user_id) VALUES ({param}, {param}, {param})",
            (tenant, spelling, normal),
        )


def down(migrator, db):
    db.execute_sql("DROP TABLE user_spellings")  # the normalised ids stay: as good an id as the old ones
