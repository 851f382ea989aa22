"""Helpers that play the part of an authenticator app holding a registered key, and read the audit trail."""

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

from otp_service.core import totp
from otp_service.db.models import AuditLog


def code_at(registration: dict, at: float, offset_steps: int = 0) -> str:
    key = base64.b64decode(registration["derived_key"])
    interval = registration["interval"]
    return totp.totp(key, at + offset_steps * interval, registration["digits"], interval, registration["algorithm"])


def wrong_code(registration: dict, at: float) -> str:
    """A code that matches no step in a ±10-step window (so it can only fail)."""
    key = base64.b64decode(registration["derived_key"])
    interval, digits = registration["interval"], registration["digits"]
    near = {totp.totp(key, at + k * interval, digits, interval, registration["algorithm"]) for k in range(-12, 13)}
    candidate = 0
    while str(candidate).zfill(digits) in near:
        candidate += 1
    return str(candidate).zfill(digits)


def audit_rows(database, **where) -> list[AuditLog]:
    """Audit rows in order, filtered by column equality."""
    with database.connection_context():
        query = AuditLog.select().order_by(AuditLog.id)
        for name, value in where.items():
            query = query.where(getattr(AuditLog, name) == value)
        return list(query)


def at_once(count: int, attempt) -> list:
    """`attempt()` in `count` threads released together (a barrier), as simultaneous requests; their results."""
    barrier = threading.Barrier(count)

    def released(_):
        barrier.wait()
        return attempt()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(released, range(count)))


def journal_for(database):
    """The audit writer the test service uses (same pseudonym key), for tests that write audit rows directly."""
    from otp_service.audit import chain as integrity
    from otp_service.audit.journal import Journal
    from otp_service.core.keys import Keyring
    from tests.conftest import MASTER_SECRET

    return Journal(database, Keyring({1: MASTER_SECRET}, 1).purpose_key(integrity.PURPOSE), 16)
