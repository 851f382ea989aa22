"""Time only moves forward within a chain, and the service seals only what it verified (attack review,
findings 1 and 2) — on SQLite and PostgreSQL.

1. A row appended at a chain's tail with a correct link but an earlier time than the row before it (a
   back-dated row) is a break (`backdated`), sealed or not; the writers never make one, whatever the clock
   does (they clamp to the chain's last time).
2. The periodic checkpoint verifies the rows written since the last checkpoint before it signs, and signs
   nothing over a row that does not verify."""

import logging
from datetime import timedelta

import pytest

from otp_service.audit import chain as integrity
from otp_service.audit import checkpoints
from otp_service.audit import verify as audit_verify
from otp_service.audit.journal import CHAIN_COLUMNS
from otp_service.audit.rows import AUDIT_COLUMNS, RequestContext, audit_row
from otp_service.core.actions import Action
from otp_service.core.transitions import AuditEvent, to_datetime
from otp_service.db.models import AuditChain, AuditCheckpoint, AuditLog
from tests.audit.test_audit_integrity import CTX, _exec, history, kinds, verify
from tests.conftest import service_for, settings_for
from tests.helpers import audit_rows, code_at, wrong_code

FORGER = RequestContext("203.0.113.9", "forger", None, "app")


def chain_times(database) -> dict[int, list]:
    """Each chain's row times, in place order."""
    times: dict[int, list] = {}
    for r in sorted(audit_rows(database), key=lambda r: (r.chain, r.seq)):
        times.setdefault(r.chain, []).append(r.timestamp)
    return times


def forge_at_tail(service, database, back: timedelta, chain: int | None = None) -> AuditLog:
    """What someone with write access to the database can do: append a row at the end of a chain, correctly
    linked to its head, but dated `back` before the head row."""
    with database.atomic():
        query = AuditChain.select().where((AuditChain.chain >= 0) & (AuditChain.seq > 0)).order_by(AuditChain.chain)
        head = query.where(AuditChain.chain == chain).get() if chain is not None else query.get()
        last = AuditLog.get((AuditLog.chain == head.chain) & (AuditLog.seq == head.seq))
        event = AuditEvent(Action.OTP_VERIFICATION, True, None, None)
        row = audit_row(event, last.timestamp - back, "D0", "user0", FORGER)
        entry = service.journal.entry(row)
        link = integrity.link(head.head, entry)
        values = (*row, head.chain, head.seq + 1, link, entry.personal, entry.subject)
        forged = AuditLog.insert(dict(zip((*AUDIT_COLUMNS, *CHAIN_COLUMNS), values, strict=True))).execute()
        AuditChain.update(seq=head.seq + 1, head=link).where(AuditChain.chain == head.chain).execute()
    return AuditLog.get_by_id(forged)


@pytest.fixture
def sealed(service, database, clock):
    history(service, clock)
    service.checkpoint()
    clock.advance(60)
    reg = service.register("LATE", "user9", CTX)
    service.verify("LATE", code_at(reg, clock.now), CTX)
    assert verify(service).intact
    return service


def latest_checkpoint(database):
    with database.connection_context():
        return AuditCheckpoint.select().order_by(AuditCheckpoint.id.desc()).first()


# -- finding 1: monotonic time within a chain ----------------------------------------------------------------


def test_a_backdated_row_at_a_chains_tail_is_found_and_stays_found_once_sealed(sealed, database, clock):
    forged = forge_at_tail(sealed, database, timedelta(days=3))
    result = verify(sealed)
    assert "backdated" in kinds(result), result.lines()
    broken = next(b for b in result.breaks if b.kind == "backdated")
    assert (broken.chain, broken.seq, broken.row_id) == (forged.chain, forged.seq, forged.id)
    line = next(line for line in result.lines() if "backdated" in line)
    assert f"chain {forged.chain}" in line and f"row id {forged.id}" in line and "earlier than" in line
    with pytest.raises(checkpoints.Unverified):  # an on-demand checkpoint refuses to seal it
        sealed.checkpoint()
    with database.connection_context():  # sealed anyway (as a version before that refusal would): still found
        checkpoints.take(database, sealed.audit_keys, "on-demand", to_datetime(clock.now))
    assert kinds(verify(sealed)) == ["backdated"]


def test_the_same_time_as_the_row_before_is_not_backdated(sealed, database):
    forge_at_tail(sealed, database, timedelta(0))
    assert verify(sealed).intact


@pytest.fixture
def one_chain(db_url, database, clock, backend):
    """The service with a single chain: every row follows the one written before it."""
    yield from service_for(settings_for(db_url, AUDIT_CHAINS="1"), database, clock, backend)


def test_writers_clamp_to_the_chains_last_time_when_the_clock_goes_back(one_chain, database, clock):
    """A clock stepped back (NTP, another process's clock) must not make an honest row look back-dated: each
    path (the hot path's statement, the journal) writes the chain's last time instead."""
    reg = one_chain.register("C1", "user1", CTX)
    one_chain.verify("C1", code_at(reg, clock.now), CTX)
    high = max(r.timestamp for r in audit_rows(database))
    clock.advance(-3600)  # an hour back
    one_chain.verify("C1", wrong_code(reg, clock.now), CTX)  # the verification path
    one_chain.register("C2", "user2", CTX)
    one_chain.record(Action.AUTH_FAILED, CTX)  # the journal
    clock.advance(-60)
    one_chain.deactivate("C2", CTX)
    times = chain_times(database)[0]
    assert times == sorted(times) and len(times) == len(audit_rows(database))
    assert times[-4:] == [high] * 4  # clamped to the last time the chain had
    assert verify(one_chain).intact
    clock.advance(7200)
    one_chain.record(Action.AUTH_FAILED, CTX)
    assert chain_times(database)[0][-1] > high  # and time goes on from the clock once it is ahead again
    one_chain.checkpoint()
    assert verify(one_chain).intact


def test_rows_before_the_upgrade_keep_their_times_and_the_boundary_is_signed(service, database, clock):
    """A database upgraded to this check keeps the rows it had (written before writers clamped): the migration
    records each chain's place then (`timed_from`), the checkpoints sign it, and moving it is a break."""
    history(service, clock)
    forged = forge_at_tail(service, database, timedelta(seconds=1))  # as an old writer could have
    _exec(database, "UPDATE audit_chains SET timed_from = seq WHERE chain >= 0")  # what the migration does
    assert verify(service).intact
    service.checkpoint()
    assert verify(service).intact
    later = forge_at_tail(service, database, timedelta(minutes=1), chain=forged.chain)
    assert [(b.kind, b.row_id) for b in verify(service).breaks] == [("backdated", later.id)]
    _exec(database, "UPDATE audit_chains SET timed_from = seq WHERE chain = %s", (forged.chain,))
    assert "edited" in kinds(verify(service))  # the boundary moved past the forged row: it differs from the signed one


# -- finding 2: the periodic checkpoint verifies what it seals ---------------------------------------------


def due(service, clock):
    clock.advance(service.settings.audit_checkpoint_seconds + 1)


def test_a_periodic_checkpoint_signs_the_rows_it_verified(sealed, database, clock):
    due(sealed, clock)
    taken = sealed.checkpoint_if_due()
    assert taken is not None and taken[0] == latest_checkpoint(database).id
    assert verify(sealed).intact


@pytest.mark.parametrize("tamper", ["edited", "backdated"])
def test_a_periodic_checkpoint_refuses_to_seal_a_tampered_row(sealed, database, clock, caplog, tamper):
    before = latest_checkpoint(database)
    if tamper == "edited":
        target = max(audit_rows(database), key=lambda r: r.id)  # written after the last checkpoint
        _exec(database, "UPDATE audit_logs SET reason = 'FORGED' WHERE id = %s", (target.id,))
    else:
        target = forge_at_tail(sealed, database, timedelta(days=1))
    due(sealed, clock)
    with caplog.at_level(logging.ERROR, logger="otp_service.service"):
        assert sealed.checkpoint_if_due() is None
        assert sealed.checkpoint_if_due() is None  # asked again (every few seconds): still refused
    assert latest_checkpoint(database).id == before.id  # nothing signed
    with database.connection_context():
        covered = [h for c in AuditCheckpoint.select() for h in audit_verify.stored(c).heads]
    assert not any(h.chain == target.chain and h.seq >= target.seq for h in covered)
    errors = [r for r in caplog.records if "not signing" in r.getMessage()]
    assert errors and all("user" not in r.getMessage() and "198.51" not in r.getMessage() for r in errors)
    assert f"row id {target.id}" in errors[0].getMessage() and tamper in errors[0].getMessage()
    refusals = audit_rows(database, action="AUDIT_VERIFIED")
    assert [(r.success, r.reason) for r in refusals] == [(False, "BROKEN")]  # audited once, not every round
    assert tamper in kinds(verify(sealed))  # and `audit verify` keeps reporting it


def test_the_periodic_check_reads_only_the_rows_since_the_last_checkpoint(sealed, database, clock, monkeypatch):
    with database.connection_context():
        signed = {h.chain: h.seq for h in audit_verify.stored(latest_checkpoint(database)).heads}
    asked = []
    real = audit_verify.chain_rows_between

    def spy(database, chain, lo, hi):
        asked.append((chain, lo))
        return real(database, chain, lo, hi)

    monkeypatch.setattr(audit_verify, "chain_rows_between", spy)
    due(sealed, clock)
    assert sealed.checkpoint_if_due() is not None
    assert asked and all(lo == signed.get(chain, 0) + 1 for chain, lo in asked)
