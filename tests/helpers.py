"""Helpers that play the part of an authenticator app holding a registered key, and read the audit trail."""

import base64
import hashlib
import hmac
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from otp_service.core import totp
from otp_service.db.models import AuditLog
from otp_service.service import clients


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
    from otp_service.webhooks import outbox
    from tests.conftest import MASTER_SECRET

    return Journal(database, Keyring({1: MASTER_SECRET}, 1).purpose_key(integrity.PURPOSE), 16, then=[outbox.enqueue])


def seed_client_generate(derived_key_b64: str, at: float, digits=6, interval=30) -> int:
    """The original spec's client example, verbatim in logic (it returns an int)."""
    key = base64.b64decode(derived_key_b64)
    msg = struct.pack(">Q", int(at // interval))
    h = hmac.new(key, msg, hashlib.sha1).digest()
    o = h[-1] & 0x0F
    return (struct.unpack(">I", h[o : o + 4])[0] & 0x7FFFFFFF) % (10**digits)


def make_client(database, name, scopes, expires=None):
    """An API client made as `clients create` makes it; its key is remembered by the secrets scan."""
    from tests.conftest import ISSUED_KEYS

    with database.connection_context(), database.atomic():
        key = clients.create(journal_for(database), name, clients.parse_scopes(scopes), time.time(), expires)
    ISSUED_KEYS.add(key)  # the secrets scan: never in a log line, an audit row or another response
    return key
