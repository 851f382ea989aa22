"""The tamper-evident audit trail (issue 14): chains written with every change, signed checkpoints, and
every kind of tampering detected — on SQLite and PostgreSQL — plus retention and erasure that keep the
trail verifiable, key rotation, the CLI and the API."""

import gzip
import hashlib
import json
import time
from datetime import timedelta

import pytest

from otp_service.audit import checkpoints
from otp_service.audit.rows import RequestContext
from otp_service.core import errors
from otp_service.core.actions import Action
from otp_service.core.keys import Keyring
from otp_service.db.models import AuditChain, AuditCheckpoint
from otp_service.service import OtpService
from tests.conftest import settings_for
from tests.helpers import at_once, audit_rows, code_at, wrong_code

CTX = RequestContext("198.51.100.7", "AcmeBank-iOS/5.2", None, "app")
OPS = RequestContext("10.0.0.5", "ops-console", None, "ops")


def history(service, clock, devices=4):
    """Registrations, right and wrong codes, a lock, recovery codes, a deactivation: rows in several chains."""
    regs = [service.register(f"D{n}", f"user{n % 2}", CTX) for n in range(devices)]
    for reg in regs:
        service.verify(reg["device_id"], code_at(reg, clock.now), CTX)
        service.verify(reg["device_id"], wrong_code(reg, clock.now), CTX)
        clock.advance(30)
    service.issue_recovery_codes("user0", CTX)
    service.deactivate(regs[-1]["device_id"], OPS)
    service.record(Action.AUTH_FAILED, CTX)
    return regs


def verify(service, **kw):
    return service.verify_audit(record=False, **kw)


def kinds(result):
    return sorted(b.kind for b in result.breaks)


@pytest.fixture
def without_unique_places(database):
    """Drops the (chain, seq) unique index, as an attacker could; puts it back (on an emptied table) after."""
    _exec(database, "DROP INDEX audit_logs_chain_seq")
    yield
    _exec(database, "DELETE FROM audit_logs")
    _exec(database, "CREATE UNIQUE INDEX audit_logs_chain_seq ON audit_logs (chain, seq)")


def sql(database, statement, params=()):
    with database.connection_context():
        database.execute_sql(statement, params)


def row(database, **where):
    return audit_rows(database, **where)[0]


# -- normal operation ----------------------------------------------------------------------------------------


def test_every_path_links_its_rows_into_the_chains(service, database, clock):
    history(service, clock)
    rows = audit_rows(database)
    assert rows and all(r.chain is not None and r.seq and len(r.entry_hash) == 64 for r in rows)
    assert all(r.personal and (r.subject is None) == (r.user_id is None) for r in rows)
    result = verify(service)
    assert result.intact, result.lines()
    assert result.rows == len(rows) and result.summary().startswith(f"intact: {len(rows)} rows")
    with database.connection_context():
        heads = {c.chain: c.seq for c in AuditChain.select().where(AuditChain.chain >= 0)}
    used = {r.chain for r in rows}
    assert sum(heads[c] for c in used) == len(rows)  # every row counted in its chain's head


def a_period(service, clock, prefix: str, inside: int, after: int = 1):
    """A history; an hour later a period of `inside` registrations (devices `prefix`0, 1, …); an hour later
    `after` more; sealed. Returns the period's (start, end)."""
    from otp_service.core.transitions import to_datetime

    history(service, clock)
    clock.advance(3600)
    start = to_datetime(clock.now)
    for n in range(inside):
        service.register(f"{prefix}{n}", "user3", CTX)
    end = to_datetime(clock.now + 1)
    clock.advance(3600)
    for n in range(after):
        service.register(f"AFTER-{prefix}{n}", "user4", CTX)
    service.checkpoint()
    return start, end


def test_a_period_in_the_middle_of_the_chains_verifies(service, database, clock):
    """Checking only the rows of a period (what every report does) starts inside the chains."""
    start, end = a_period(service, clock, "M", 5)
    result = verify(service, start=start, end=end)
    assert result.intact, result.lines()
    assert result.rows == len([r for r in audit_rows(database) if start <= r.timestamp < end]) == 5
    target = [r for r in audit_rows(database) if start <= r.timestamp < end][2]
    _exec(database, "UPDATE audit_logs SET reason = 'X' WHERE id = %s", (target.id,))
    assert [(b.kind, b.row_id) for b in verify(service, start=start, end=end).breaks] == [("edited", target.id)]


def test_simultaneous_writers_keep_every_chain_whole(service, database, clock):
    regs = [service.register(f"R{n}", "u", CTX) for n in range(6)]

    def guess():
        for reg in regs[:2]:
            try:
                service.verify(reg["device_id"], wrong_code(reg, clock.now), CTX)
            except errors.DeviceLocked:
                pass

    at_once(24, guess)
    at_once(12, lambda: service.record(Action.AUTH_FAILED, CTX))
    result = verify(service)
    assert result.intact, result.lines()
    assert result.rows == len(audit_rows(database))


# -- tampering ---------------------------------------------------------------------------------------------


@pytest.fixture
def sealed(service, database, clock):
    """A history, then a signed checkpoint, then a little more (the tail after the checkpoint)."""
    history(service, clock)
    service.checkpoint()
    reg = service.register("LATE", "user9", CTX)
    service.verify("LATE", code_at(reg, clock.now), CTX)
    assert verify(service).intact
    return service


def test_an_edited_row_is_found(sealed, database):
    target = row(database, action="OTP_VERIFICATION", success=True)
    _exec(database, "UPDATE audit_logs SET reason = 'INVALID_CODE', success = %s WHERE id = %s", (False, target.id))
    result = verify(sealed)
    assert not result.intact and "edited" in kinds(result)
    broken = next(b for b in result.breaks if b.kind == "edited")
    assert (broken.row_id, broken.chain, broken.seq) == (target.id, target.chain, target.seq)


def _exec(database, statement, params=()):
    """`statement` with %s placeholders, on either database."""
    if "sqlite" in type(database).__name__.lower():
        statement = statement.replace("%s", "?")
    sql(database, statement, params)


def test_a_deleted_row_is_found(sealed, database):
    target = audit_rows(database)[2]
    _exec(database, "DELETE FROM audit_logs WHERE id = %s", (target.id,))
    result = verify(sealed)
    broken = [b for b in result.breaks if b.chain == target.chain]
    assert broken and broken[0].kind in ("deleted", "tail-cut") and broken[0].seq == target.seq


def test_an_inserted_row_is_found(sealed, database, without_unique_places):
    from otp_service.audit.rows import AUDIT_COLUMNS

    forged = (
        "2025-11-24 16:00:00",
        "DEVICE_UNLOCKED",
        True,
        None,
        "D0",
        "user0",
        "10.0.0.1",
        "x",
        None,
        None,
        "ops",
        1,  # the default tenant
    )
    columns = ", ".join(AUDIT_COLUMNS)
    _exec(database, f"INSERT INTO audit_logs ({columns}) VALUES ({', '.join(['%s'] * len(forged))})", forged)
    assert "inserted" in kinds(verify(sealed))  # outside every chain
    _exec(database, "DELETE FROM audit_logs WHERE chain IS NULL")
    # a row copied into a chain with a place already taken (its unique index dropped first)
    original = audit_rows(database)[1]
    copy = [getattr(original, c) for c in AUDIT_COLUMNS] + [original.chain, original.seq, original.entry_hash]
    copy[AUDIT_COLUMNS.index("reason")] = "FORGED"
    placeholders = ", ".join(["%s"] * len(copy))
    _exec(database, f"INSERT INTO audit_logs ({columns}, chain, seq, entry_hash) VALUES ({placeholders})", copy)
    assert "inserted" in kinds(verify(sealed))


def test_reordered_rows_are_found(sealed, database, without_unique_places):
    by_chain = {}
    for r in audit_rows(database):
        by_chain.setdefault(r.chain, []).append(r)
    chain, (a, b) = next((c, rows[:2]) for c, rows in by_chain.items() if len(rows) >= 2)
    _exec(database, "UPDATE audit_logs SET seq = %s WHERE id = %s", (b.seq, a.id))
    _exec(database, "UPDATE audit_logs SET seq = %s WHERE id = %s", (a.seq, b.id))
    result = verify(sealed)
    assert [k.kind for k in result.breaks if k.chain == chain][0] in ("reordered", "edited")
    assert "reordered" in kinds(result)


def test_a_cut_tail_is_found_after_and_before_the_last_checkpoint(sealed, database):
    last = audit_rows(database)[-1]
    _exec(database, "DELETE FROM audit_logs WHERE id = %s", (last.id,))
    result = verify(sealed)
    assert [(b.kind, b.seq) for b in result.breaks] == [("tail-cut", last.seq)]  # the head row still counts it
    # rewinding the head row too hides a cut from the head, not from the signed checkpoint
    head = max(_signed_heads(database), key=lambda h: h.seq)
    before = [r for r in audit_rows(database) if r.chain == head.chain and r.seq < head.seq]
    _exec(database, "DELETE FROM audit_logs WHERE chain = %s AND seq >= %s", (head.chain, head.seq))
    rewound = (head.seq - 1, before[-1].entry_hash if before else "0" * 64, head.chain)
    _exec(database, "UPDATE audit_chains SET seq = %s, head = %s WHERE chain = %s", rewound)
    result = verify(sealed)
    assert ("tail-cut", head.seq) in [(b.kind, b.seq) for b in result.breaks if b.chain == head.chain]


def _signed_heads(database):
    with database.connection_context():
        return [h for c in AuditCheckpoint.select() for h in checkpoints.stored(c).heads]


def test_personal_data_changed_outside_an_erasure_is_found(sealed, database):
    target = row(database, action="DEVICE_REGISTERED")
    _exec(database, "UPDATE audit_logs SET ip_address = %s WHERE id = %s", ("192.0.2.99", target.id))
    assert "personal-data-edited" in kinds(verify(sealed))
    _exec(
        database,
        "UPDATE audit_logs SET ip_address = %s, user_id = NULL, user_agent = NULL WHERE id = %s",
        (None, target.id),
    )
    assert "personal-data-edited" in kinds(verify(sealed))  # emptied, but no erasure recorded


def test_forged_and_deleted_checkpoints_are_found(sealed, database):
    sealed.checkpoint()
    with database.connection_context():
        first, second = list(AuditCheckpoint.select().order_by(AuditCheckpoint.id))[:2]
    forged = first.payload.replace('"reason":"on-demand"', '"reason":"periodic"')
    _exec(database, "UPDATE audit_checkpoints SET payload = %s WHERE id = %s", (forged, first.id))
    assert "forged-checkpoint" in kinds(verify(sealed))
    _exec(database, "DELETE FROM audit_checkpoints WHERE id = %s", (first.id,))
    assert "deleted-checkpoint" in kinds(verify(sealed))


def test_removing_the_newest_checkpoints_is_found(service, database, clock):
    history(service, clock, devices=2)
    service.checkpoint()
    service.register("LATER", "user5", CTX)
    newest = service.checkpoint()
    with database.connection_context():
        held = hashlib.sha256(AuditCheckpoint.get_by_id(newest).payload.encode()).hexdigest()
    found = verify(service, expected=(held,))
    assert found.intact and f"the checkpoint you hold (#{newest}, {held[:16]}…) is there" in found.summary()
    clock.advance(2 * 300 + 61)  # two checkpoint periods: the server would have signed the new rows by now
    _exec(database, "DELETE FROM audit_checkpoints WHERE id = %s", (newest,))
    result = verify(service)
    assert kinds(result) == ["unsealed"] and "covered by no signed checkpoint" in result.breaks[0].detail
    gone = verify(service, expected=(held,))  # a copy held elsewhere
    assert "deleted-checkpoint" in kinds(gone)
    assert f"  checkpoints: deleted-checkpoint: the checkpoint with SHA-256 {held[:16]}… you hold" in "\n".join(
        gone.lines()
    )


# -- rotation, retention, erasure ------------------------------------------------------------------------


NEW_KEY = "bmV3LWF1ZGl0LXNpZ25pbmcta2V5LTMyLWJ5dGVzLiE="


def test_a_key_rotation_is_signed_by_both_keys_and_old_checkpoints_still_verify(service, database, clock, db_url):
    history(service, clock, devices=2)
    service.checkpoint()
    old_id, old_seed = service.audit_keys.key_id, service.settings.audit_signing_key
    rotated = OtpService(
        settings_for(db_url, AUDIT_SIGNING_KEY=NEW_KEY, AUDIT_PREVIOUS_SIGNING_KEY=f"{old_id}:{old_seed}"),
        Keyring(service.settings.master_secrets, 1),
        database,
        clock=clock,
    )
    rotated.checkpoint("periodic")
    with database.connection_context():
        last = AuditCheckpoint.select().order_by(AuditCheckpoint.id.desc()).first()
    assert last.reason == "rotation" and set(json.loads(last.signatures)) == {old_id, rotated.audit_keys.key_id}
    assert rotated.verify_audit(record=False).intact
    # without the old public key, the checkpoints it alone signed cannot be trusted
    alone = OtpService(
        settings_for(db_url, AUDIT_SIGNING_KEY=NEW_KEY), Keyring(service.settings.master_secrets, 1), database
    )
    assert "forged-checkpoint" in kinds(alone.verify_audit(record=False))
    old_public = service.audit_keys.listing()[0]["public_key"]
    later = OtpService(
        settings_for(db_url, AUDIT_SIGNING_KEY=NEW_KEY, AUDIT_VERIFY_KEYS=f"{old_id}:{old_public}"),
        Keyring(service.settings.master_secrets, 1),
        database,
    )
    assert later.verify_audit(record=False).intact


def test_prune_exports_then_removes_old_rows_and_the_rest_still_verifies(service, database, clock, tmp_path):
    from datetime import timedelta

    from otp_service.core.transitions import to_datetime

    history(service, clock)
    service.checkpoint()  # what the server does every few minutes
    cut = to_datetime(clock.now)
    clock.advance(86400)
    service.register("NEW", "user7", CTX)
    before = len(audit_rows(database))
    manifest = service.prune_audit(cut + timedelta(seconds=1), tmp_path)
    data = tmp_path / manifest["file"]
    assert hashlib.sha256(data.read_bytes()).hexdigest() == manifest["sha256"]
    with gzip.open(data, "rt") as file:
        exported = file.read().splitlines()
    assert len(exported) - 1 == manifest["rows"] > 0
    left = audit_rows(database)
    assert len(left) == before - manifest["rows"] + 1  # + the AUDIT_PRUNED row
    assert [r.action for r in left][-1] == "AUDIT_PRUNED"
    result = verify(service)
    assert result.intact, result.lines()
    # the manifest's hashes are the signed floors
    signed = json.loads(manifest["checkpoint"]["text"])
    assert {c: i["last_hash"] for c, i in manifest["chains"].items()} == {c: f[1] for c, f in signed["floors"].items()}
    # and a row slipped back below the floor is found
    from otp_service.audit.rows import AUDIT_COLUMNS

    chain, info = next(iter(manifest["chains"].items()))
    ghost = ["2025-01-01 00:00:00", "OTP_VERIFICATION", True] + [None] * (len(AUDIT_COLUMNS) - 4) + [1]
    columns = ", ".join((*AUDIT_COLUMNS, "chain", "seq", "entry_hash"))
    placeholders = ", ".join(["%s"] * (len(AUDIT_COLUMNS) + 3))
    _exec(database, f"INSERT INTO audit_logs ({columns}) VALUES ({placeholders})", [*ghost, int(chain), 0, "0" * 64])
    assert "inserted" in kinds(verify(service))


def test_erasure_removes_personal_data_and_the_trail_still_verifies(service, database, clock):
    history(service, clock)
    service.checkpoint()
    erased = service.erase_user("user0", OPS)
    assert erased["devices"] == 2 and erased["recovery_codes"] == 1 and erased["audit_rows"] > 0
    assert not audit_rows(database, user_id="user0")
    assert all(
        r.ip_address is None
        for r in audit_rows(database)
        if r.subject and r.action != "USER_ERASED" and r.user_id is None and r.device_id in ("D0", "D2")
    )
    with pytest.raises(errors.DeviceNotFound):
        service.device_info("D0")
    assert service.user_devices("user0") == {"user_id": "user0", "devices": [], "recovery_codes": None}
    record = row(database, action="USER_ERASED")
    assert "user0" not in json.dumps(record.additional_data) and record.user_id is None and record.actor == "ops"
    result = verify(service)
    assert result.intact, result.lines()


# -- CLI and API -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_audit_verify_cli_reports_intact_then_the_first_break(tmp_path):
    from tests.serving import run_cli

    url = f"sqlite:///{tmp_path}/cli.db"
    assert run_cli("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    assert run_cli("demo-data", "--devices", "6", "--days", "2", "--database-url", url, cwd=tmp_path).returncode == 0
    ok = run_cli("audit", "verify", "--database-url", url, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("intact: ") and "rows in" in ok.stdout
    keys = run_cli("audit", "keys", "--database-url", url, cwd=tmp_path)
    assert keys.returncode == 0 and "(signing)" in keys.stdout
    import sqlite3

    with sqlite3.connect(tmp_path / "cli.db") as db:
        db.execute(
            "UPDATE audit_logs SET reason = 'X' WHERE id = (SELECT MIN(id) FROM audit_logs WHERE chain IS NOT NULL)"
        )
    broken = run_cli("audit", "verify", "--database-url", url, cwd=tmp_path)
    assert broken.returncode == 1 and broken.stdout.startswith("BROKEN") and ": edited at place" in broken.stdout
    erase = run_cli("users", "erase", "nobody@example.com", "--database-url", url, cwd=tmp_path)
    assert erase.returncode == 0 and "erased: 0 device(s)" in erase.stdout


def test_audit_keys_and_erasure_over_http(api, database):
    keys = api.get("/api/v1/audit/keys")
    assert keys.status == 200 and keys.body["data"]["keys"][0]["current"] is True
    api.post("/api/v1/devices/register", {"device_id": "E1", "user_id": "erin"})
    erased = api.post("/api/v1/users/erin/erase")
    assert erased.status == 200 and erased.body["data"]["devices"] == 1
    assert api.get("/api/v1/devices/E1").status == 404
    metrics = api.get("/metrics").raw.decode()
    assert "otp_audit_last_checkpoint_timestamp_seconds" in metrics


# -- what the attack review found ----------------------------------------------------------------------------


def test_rows_outside_the_real_chains_and_fake_erasures_are_found(sealed, database, without_unique_places):
    from otp_service.audit.rows import AUDIT_COLUMNS

    columns = ", ".join((*AUDIT_COLUMNS, "chain", "seq"))
    marks = ", ".join(["%s"] * (len(AUDIT_COLUMNS) + 2))
    base = [
        "2026-11-26 12:00:00",
        "DEVICE_DEACTIVATED",
        True,
        None,
        "D1",
        "user1",
        "203.0.113.66",
        None,
        None,
        None,
        "env",
        1,  # the default tenant
    ]
    for chain, seq in ((64, 1), (3, None), (3, -5)):
        _exec(database, f"INSERT INTO audit_logs ({columns}) VALUES ({marks})", [*base, chain, seq])
        assert "inserted" in kinds(verify(sealed)), (chain, seq)
        _exec(database, "DELETE FROM audit_logs WHERE action = 'DEVICE_DEACTIVATED' AND actor = 'env'")
    # emptying a user's personal data, with a hidden "erasure" vouching for it
    victim = row(database, user_id="user1")
    _exec(
        database, "UPDATE audit_logs SET user_id = NULL, ip_address = NULL, user_agent = NULL WHERE user_id = 'user1'"
    )
    erased = [
        "2026-11-26 12:00:00",
        "USER_ERASED",
        True,
        None,
        None,
        None,
        None,
        None,
        None,
        json.dumps({"subject": victim.subject}),
        "ops",
        1,  # the default tenant
    ]
    _exec(database, f"INSERT INTO audit_logs ({columns}) VALUES ({marks})", [*erased, 64, 1])
    assert "personal-data-edited" in kinds(verify(sealed))
    _exec(database, "UPDATE audit_logs SET additional_data = '[1]' WHERE action = 'USER_ERASED'")
    assert not verify(sealed).intact  # malformed, not a crash


def test_a_period_whose_rows_were_all_deleted_is_a_gap_not_an_empty_period(service, database, clock):
    start, end = a_period(service, clock, "P", 6, after=20)
    assert verify(service, start=start, end=end).intact
    _exec(database, "DELETE FROM audit_logs WHERE device_id LIKE %s", ("P%",))
    assert "deleted" in kinds(verify(service, start=start, end=end))


@pytest.mark.parametrize("edge", ["first", "last"])
def test_a_period_rows_time_moved_out_of_it_is_still_read(service, database, clock, edge):
    """Editing the time of the period's first (last) row to before (after) the period would take it out of
    the rows a period check reads if the check began (ended) at the period's own rows; the row on either
    side is read too, so the edit shows. And deleting that edge row is a gap."""
    start, end = a_period(service, clock, "E", 6)
    inside = [r for r in audit_rows(database) if start <= r.timestamp < end]
    target = inside[0] if edge == "first" else inside[-1]
    moved = start - timedelta(seconds=5) if edge == "first" else end + timedelta(seconds=5)
    _exec(database, "UPDATE audit_logs SET timestamp = %s WHERE id = %s", (moved, target.id))
    assert [(b.kind, b.row_id) for b in verify(service, start=start, end=end).breaks] == [("edited", target.id)]
    _exec(database, "DELETE FROM audit_logs WHERE id = %s", (target.id,))
    assert not verify(service, start=start, end=end).intact


def test_malformed_checkpoints_are_findings_not_crashes(sealed, database):
    with database.connection_context():
        first = AuditCheckpoint.select().order_by(AuditCheckpoint.id).first()
    for column, value in (("signatures", "not json"), ("signatures", "[1, 2]"), ("payload", "[]")):
        original = getattr(first, column)
        _exec(database, f"UPDATE audit_checkpoints SET {column} = %s WHERE id = %s", (value, first.id))
        assert "forged-checkpoint" in kinds(verify(sealed))
        sealed.checkpoint_if_due()  # the periodic checkpoint does not fall over either
        _exec(database, f"UPDATE audit_checkpoints SET {column} = %s WHERE id = %s", (original, first.id))


def vacuums(database) -> int:
    with database.connection_context():
        query = "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'audit_logs'"
        return database.execute_sql(query).fetchone()[0]


@pytest.mark.postgres
def test_a_prune_longer_than_a_requests_statement_timeout_completes(service, database, clock, tmp_path):
    """Every connection carries DB_TIMEOUT as its statement timeout (5 s here), so that no request hangs;
    deleting millions of rows takes longer (10,000,000 rows: minutes), and `audit prune` failed half-way
    through as "cannot reach the database". A trigger makes the delete take longer than the timeout here."""
    from datetime import timedelta

    from otp_service.core.transitions import to_datetime

    history(service, clock)
    service.checkpoint()
    cut = to_datetime(clock.now)
    clock.advance(86400)
    once = "IF current_setting('test.slept', true) IS NULL THEN PERFORM set_config('test.slept', 'y', true);"
    _exec(
        database,
        "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {once} PERFORM pg_sleep(5.5); END IF; RETURN NULL; END $$",
    )
    _exec(database, "CREATE TRIGGER slow_delete BEFORE DELETE ON audit_logs EXECUTE FUNCTION slow_delete()")
    vacuums_before = vacuums(database)
    try:
        manifest = service.prune_audit(cut + timedelta(seconds=1), tmp_path)
    finally:
        _exec(database, "DROP TRIGGER slow_delete ON audit_logs")
        _exec(database, "DROP FUNCTION slow_delete()")
    assert manifest["rows"] > 0 and verify(service).intact
    # and the deleted rows' index entries were cleared at once (a vacuum), not left for every check to step over
    deadline = time.monotonic() + 10
    while vacuums(database) == vacuums_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vacuums(database) == vacuums_before + 1


def test_prune_refuses_a_broken_trail_and_a_forged_floor_is_found(sealed, database, tmp_path):
    target = row(database, action="OTP_VERIFICATION", success=False)
    _exec(database, "UPDATE audit_logs SET success = %s WHERE id = %s", (True, target.id))
    with pytest.raises(errors.ServiceError) as refused:
        sealed.prune_audit(__import__("datetime").datetime(2030, 1, 1), tmp_path / "export")
    assert refused.value.code == "AUDIT_TRAIL_BROKEN" and not (tmp_path / "export").exists()
    _exec(database, "UPDATE audit_logs SET success = %s WHERE id = %s", (False, target.id))
    _exec(database, "UPDATE audit_chains SET floor_seq = 1 WHERE chain = %s", (target.chain,))
    assert "edited" in kinds(verify(sealed))


def test_a_failed_verification_is_audited_and_never_signed(sealed, database):
    with database.connection_context():
        before = AuditCheckpoint.select().count()
    target = row(database, action="DEVICE_REGISTERED")
    _exec(database, "UPDATE audit_logs SET reason = 'FORGED' WHERE id = %s", (target.id,))
    result = sealed.verify_audit()  # recorded
    assert not result.intact and "edited" in kinds(result)
    with database.connection_context():
        assert AuditCheckpoint.select().count() == before  # nothing signed over the break
    failure = row(database, action="AUDIT_VERIFIED")
    assert (failure.success, failure.reason) == (False, "BROKEN")
    with database.connection_context():
        assert checkpoints.status(database)["failed_verifications"] == 1


@pytest.mark.slow
def test_audit_cli_refuses_bad_input_with_one_line(tmp_path):
    from tests.serving import run_cli

    url = f"sqlite:///{tmp_path}/cli.db"
    assert run_cli("migrate", "--database-url", url, cwd=tmp_path).returncode == 0
    (tmp_path / "afile").write_text("x")
    for argv in (
        ("audit", "verify", "--end", "9999-12-31"),
        ("audit", "verify", "--start", "2026-02-10", "--end", "2026-02-01"),
        ("audit", "verify", "--expect", ""),
        ("audit", "prune", "--before", "0001-01-01", "--export", "out"),
        ("audit", "prune", "--before", "2026-01-01", "--export", ""),
        ("audit", "prune", "--before", "2026-01-01", "--export", str(tmp_path / "afile")),
    ):
        result = run_cli(*argv, "--database-url", url, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode in (1, 2) and len(lines) == 1 and "Traceback" not in result.stderr, (
            argv,
            result.stderr,
        )
