"""User ids in one spelling (Unicode NFKC, `core.validation.normal_user_id`): every id a route or command
reads is normalised from this release on; this brings the devices and recovery-code sets written before
it to the same spelling, so `Ａlice`'s device is found as `Alice`'s.

Audit rows keep the spelling they were written with (their personal-data digest covers it); an erasure
finds them under every spelling of the id (`audit.retention.spellings`). A recovery-code set whose
normalised id already has one is left under its old spelling (the primary key allows one set per user), to
be replaced by the next issue and erased with the user."""

import unicodedata


def _normalise(db, table: str, key: str) -> None:
    rows = db.execute_sql(f"SELECT tenant_id, {key}, user_id FROM {table}").fetchall()
    taken = {(tenant, user) for tenant, _, user in rows}
    for tenant, ident, user in rows:
        normal = unicodedata.normalize("NFKC", user)
        if normal == user or (table == "recovery_codes" and (tenant, normal) in taken):
            continue
        taken.add((tenant, normal))
        param = db.param
        db.execute_sql(
            f"UPDATE {table} SET user_id = {param} WHERE tenant_id = {param} AND {key} = {param}",
            (normal, tenant, ident),
        )


def up(migrator, db):
    _normalise(db, "devices", "device_id")
    _normalise(db, "recovery_codes", "user_id")


def down(migrator, db):
    pass  # the normalised spelling is as good an id as the old one: nothing to undo
