"""Every path applies the same decision: one scenario — accept, replay, wrong codes up to the lock, a code
while locked, unlock, empty and over-long User-Agents, deactivation twice, an inactive and an unknown
device, a malformed code — run through every way a command reaches the database, on SQLite and (with
TEST_DATABASE_URL) PostgreSQL, must give the same answers, device rows and audit rows, field by field."""

import asyncio
import base64
import json

from otp_service.audit.rows import RequestContext
from otp_service.core import errors, totp
from otp_service.core.keys import Keyring
from otp_service.db.database import migrate, open_database
from otp_service.db.models import AuditLog, Device
from otp_service.service import AsyncOtpService, OtpService
from tests.conftest import PG_URL, RESET_POSTGRES, FakeClock, settings_for

APP = RequestContext("203.0.113.9", "AcmeBank-iOS/5.2", "req-1")
NO_AGENT = RequestContext("203.0.113.9", "", "req-2")
LONG_AGENT = RequestContext("2001:db8::1", "X" * 500, "req-3")

EXPECTED_TRAIL = [
    ("DEVICE_REGISTERED", True, None),
    ("OTP_VERIFICATION", True, None),
    ("OTP_VERIFICATION", False, "REPLAYED"),
    *[("OTP_VERIFICATION", False, "INVALID_CODE")] * 5,
    ("DEVICE_LOCKED", True, "TOO_MANY_FAILURES"),
    ("OTP_VERIFICATION", False, "DEVICE_LOCKED"),
    ("DEVICE_UNLOCKED", True, None),
    ("OTP_VERIFICATION", True, None),
    ("OTP_VERIFICATION", False, "INVALID_CODE"),
    ("OTP_VERIFICATION", False, "INVALID_CODE"),
    ("DEVICE_DEACTIVATED", True, None),
    ("OTP_VERIFICATION", False, "DEVICE_INACTIVE"),
    ("OTP_VERIFICATION", False, "DEVICE_NOT_FOUND"),
]


def scenario(call, clock) -> list:
    """The answers, in order: a result dict, or an error's code and details."""

    def attempt(name, *args):
        try:
            return call(name, *args)
        except errors.ServiceError as exc:
            return {"error": exc.code, **exc.details}

    reg = call("register", "P-1", "alice", APP)
    key = base64.b64decode(reg["derived_key"])

    def code(offset=0):
        return totp.totp(key, clock.now + 30 * offset)

    answers = [attempt("verify", "P-1", code(), APP), attempt("verify", "P-1", code(), APP)]
    answers += [attempt("verify", "P-1", f"00000{n}", APP) for n in range(5)]
    answers += [attempt("verify", "P-1", code(), APP), attempt("unlock", "P-1", APP)]
    clock.advance(30)
    answers += [attempt("verify", "P-1", code(), APP)]
    answers += [attempt("verify", "P-1", "000009", NO_AGENT), attempt("verify", "P-1", "000008", LONG_AGENT)]
    answers += [attempt("verify", "P-1", "1234567", APP)]  # malformed for a 6-digit device: nothing recorded
    answers += [attempt("deactivate", "P-1", APP)]
    clock.advance(5)
    answers += [attempt("deactivate", "P-1", APP), attempt("verify", "P-1", code(), APP)]
    answers += [attempt("verify", "NO-SUCH", "123456", APP)]
    return answers


def rows(database) -> tuple[list, list]:
    with database.connection_context():
        devices = [
            {k: v for k, v in d.items() if k not in ("salt", "derived_key_hash")} for d in Device.select().dicts()
        ]
        placed = ("id", "chain", "seq", "entry_hash")  # where a row lands in the chains; what it says is compared
        audit = [
            {k: v for k, v in a.items() if k not in placed} for a in AuditLog.select().order_by(AuditLog.id).dicts()
        ]
    for row in audit:
        row["additional_data"] = json.loads(row["additional_data"]) if row["additional_data"] else None
    return devices, audit


def fresh(url: str):
    database = open_database(url, pool_size=8, timeout=5)
    migrate(database)
    if url.startswith("postgres"):
        with database.connection_context():
            database.execute_sql(RESET_POSTGRES)
    return database


def blocking(service):
    return lambda name, *args: getattr(service, name)(*args)


def on_the_event_loop(service):
    front = service.front = AsyncOtpService(service)
    return lambda name, *args: asyncio.run(getattr(front, name)(*args))


def under_the_row_lock(service):
    service.store.optimistic = False  # every command read, decided and applied with the row held
    return blocking(service)


def paths(tmp_path):
    yield "sqlite", f"sqlite:///{tmp_path}/parity.db", blocking
    if PG_URL:
        for driver in (blocking, on_the_event_loop, under_the_row_lock):
            yield "postgres", PG_URL, driver


def test_every_path_gives_the_same_answers_and_rows(tmp_path):
    results = {}
    for backend, url, driver in paths(tmp_path):
        database, clock = fresh(url), FakeClock()
        settings = settings_for(url)
        service = OtpService(settings, Keyring(settings.master_secrets, 1), database, clock=clock)
        answers = scenario(driver(service), clock)
        results[f"{backend}/{driver.__name__}"] = (answers, *rows(database))
        if hasattr(service, "front"):
            service.front.close()
        database.close_all()

    first_name, (answers, devices, audit) = next(iter(results.items()))
    assert [(a["action"], a["success"], a["reason"]) for a in audit] == EXPECTED_TRAIL
    assert [a["user_agent"] for a in audit[11:15]] == ["AcmeBank-iOS/5.2", None, "X" * 256, "AcmeBank-iOS/5.2"]
    assert [a["ip_address"] for a in audit[11:15]] == ["203.0.113.9", "203.0.113.9", "2001:db8::1", "203.0.113.9"]
    assert answers[7]["error"] == "DEVICE_LOCKED" and answers[6]["locked_until"] == answers[7]["locked_until"]
    assert answers[12]["error"] == "VALIDATION_ERROR" and answers[14] == answers[13]
    assert devices[0]["failed_attempts"] == 2 and devices[0]["is_active"] is False and devices[0]["version"] == 11
    for name, result in results.items():
        for part, mine, theirs in zip(("answers", "devices", "audit rows"), result, results[first_name], strict=True):
            assert mine == theirs, f"{name} differs from {first_name} in its {part}"
