"""Shared fixtures: a real database (SQLite always, PostgreSQL when TEST_DATABASE_URL is set),
the domain service over it, and the HTTP API served on a loopback port from a thread.

Nothing is mocked: the tests talk to the same database engines and the same Tornado
application that production runs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import http.client
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass

import peewee
import psycopg2
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from otp_service.config import Settings
from otp_service.core.keys import Keyring
from otp_service.db.database import migrate, open_database
from otp_service.http.app import build_state, make_app
from otp_service.http.server import MAX_BODY_BYTES
from otp_service.service import AsyncOtpService, OtpService
from tests.openapi_check import check_response

PG_URL = os.environ.get("TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
# Fresh each run: production refuses a secret written down in the repository, and production instances the tests
# start (or production commands run on a test's rows) take these too.
API_KEY = "test-api-key-" + secrets.token_hex(16)
MASTER_SECRET = "test-master-secret-" + secrets.token_hex(16)
T0 = 1_764_000_000.0  # a fixed "now" (2025-11-24T16:00:00Z), on a 30 s step boundary


def pytest_report_header(config):
    pg = f"SQLite and PostgreSQL at {PG_URL}" if PG_URL else "SQLite only (set TEST_DATABASE_URL to add PostgreSQL)"
    redis = f"Redis at {REDIS_URL}" if REDIS_URL else "no Redis (set REDIS_URL to add the shared rate-limit tests)"
    return [f"databases: {pg}", f"rate limits: {redis}"]


def pytest_generate_tests(metafunc):
    """Every test that asks for `db_url` runs once per configured database engine."""
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite"] + (["postgres"] if PG_URL else [])
        if metafunc.definition.get_closest_marker("postgres"):
            backends = ["postgres"]
        metafunc.parametrize("backend", backends)


def pytest_collection_modifyitems(config, items):
    """Tests that need a server which is not configured are skipped, each with the reason in the summary
    (`-ra`). CI configures both."""
    missing = {
        "redis": None if REDIS_URL else "needs REDIS_URL (a Redis server for the shared rate-limit tests)",
        "postgres": None if PG_URL else "needs TEST_DATABASE_URL (a PostgreSQL database, which the tests wipe)",
    }
    for item in items:
        for marker, reason in missing.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionstart(session):
    """A configured server that cannot be reached is one clear message up front, not an error per test."""
    if PG_URL:
        try:
            psycopg2.connect(PG_URL, connect_timeout=5).close()
        except psycopg2.Error as exc:
            pytest.exit(f"TEST_DATABASE_URL={PG_URL}: cannot connect ({str(exc).strip()})", returncode=3)
    if REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            pytest.exit(f"REDIS_URL={REDIS_URL}: cannot connect ({exc})", returncode=3)


# -- the secrets scan ------------------------------------------------------------------------------
# Every key and code any test issues is remembered; after each test, every response body it received
# (but the one registration response that must carry the key), every log line and every audit and
# device row are searched for them. One hit fails the test that produced it.

ISSUED_KEYS: set[str] = set()
ISSUED_CODES: set[str] = set()
SEEN_RESPONSES: list[tuple[str, str]] = []  # (path, body)


class _LogCapture(logging.Handler):
    """Keeps each record's message and its `extra` fields (the record's own timestamps are left out:
    their digits are not codes)."""

    lines: list[str] = []
    standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    # Times inside messages (peewee logs its SQL parameters): their microseconds are six digits too.
    times = re.compile(r"datetime\.datetime\([^)]*\)|\d\d:\d\d:\d\d\.\d+")

    def emit(self, record):
        extra = {k: v for k, v in vars(record).items() if k not in self.standard}
        self.lines.append(self.times.sub("<time>", record.getMessage() + " " + json.dumps(extra, default=str)))


_LOG_CAPTURE = _LogCapture(level=logging.DEBUG)
logging.getLogger().addHandler(_LOG_CAPTURE)
logging.getLogger().setLevel(logging.DEBUG)


def remember_registration(data: dict) -> None:
    key = base64.b64decode(data["derived_key"])
    ISSUED_KEYS.update({data["derived_key"], data["secret_base32"], key.hex(), base64.b32encode(key).decode()})


def remember_recovery_codes(codes: list[str]) -> None:
    """Recovery codes as issued and as typed (no hyphens): neither may appear in a log, row or other answer."""
    ISSUED_KEYS.update(codes)
    ISSUED_KEYS.update(code.replace("-", "") for code in codes)


def remember_webhook_secret(secret: str) -> None:
    """A webhook endpoint's signing secret (`whsec_…`), as shown, as its key's base64 and hex: shown once, in the
    answer that made it, and nowhere else — no other answer, log line or row."""
    encoded = secret.removeprefix("whsec_")
    ISSUED_KEYS.update({secret, encoded, base64.b64decode(encoded).hex()})


WEBHOOK_SECRET_ANSWERS = re.compile(r"^/api/v1/webhooks/endpoints(/[^/]+/rotate)?$")  # the two that show one


def remember_code(code) -> None:
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) >= 6:
        ISSUED_CODES.add(code)
    elif isinstance(code, int) and not isinstance(code, bool) and code >= 0:
        ISSUED_CODES.add(str(code).zfill(6))


def find_secrets(text: str, codes: bool = True) -> list[str]:
    """Keys anywhere; codes only as whole tokens (not inside a longer number or a hex string)."""
    hits = [k for k in ISSUED_KEYS | {API_KEY, MASTER_SECRET} if k in text]
    if codes and ISSUED_CODES:
        pattern = re.compile(r"(?<![0-9A-Za-z])(" + "|".join(sorted(ISSUED_CODES)) + r")(?![0-9A-Za-z])")
        hits += pattern.findall(text)
    return hits


@pytest.fixture(autouse=True)
def secrets_scan(request, monkeypatch):
    """Every path (blocking or on the event loop) runs a command as a plan; its answer is wrapped here."""
    original_register, original_verify = OtpService.plan_register, OtpService.plan_verify
    original_resync = OtpService.plan_resync
    original_issue = OtpService.issue_recovery_codes
    original_create_hook = OtpService.create_webhook_endpoint
    original_rotate_hook = OtpService.rotate_webhook_endpoint

    def create_webhook_endpoint(self, *args, **kwargs):
        data = original_create_hook(self, *args, **kwargs)
        remember_webhook_secret(data["secret"])
        return data

    def rotate_webhook_endpoint(self, *args, **kwargs):
        data = original_rotate_hook(self, *args, **kwargs)
        remember_webhook_secret(data["secret"])
        return data

    def issue_recovery_codes(self, *args, **kwargs):
        data = original_issue(self, *args, **kwargs)
        remember_recovery_codes(data["codes"])
        return data

    def plan_register(self, *args, **kwargs):
        plan = original_register(self, *args, **kwargs)

        def answer(transition):
            data = plan.answer(transition)
            remember_registration(data)
            return data

        return dataclasses.replace(plan, answer=answer)

    def plan_verify(self, device_id, otp, *args, **kwargs):
        plan = original_verify(self, device_id, otp, *args, **kwargs)

        def answer(transition):
            result = plan.answer(transition)
            if result["valid"]:  # an accepted code is a secret whoever sent it; fuzzers' guesses are not
                remember_code(otp)
            return result

        return dataclasses.replace(plan, answer=answer)

    def plan_resync(self, device_id, otp1, otp2, *args, **kwargs):
        plan = original_resync(self, device_id, otp1, otp2, *args, **kwargs)

        def answer(transition):
            result = plan.answer(transition)
            if result["resynced"]:  # two accepted codes: secrets like any accepted one
                remember_code(otp1)
                remember_code(otp2)
            return result

        return dataclasses.replace(plan, answer=answer)

    monkeypatch.setattr(OtpService, "plan_register", plan_register)
    monkeypatch.setattr(OtpService, "plan_verify", plan_verify)
    monkeypatch.setattr(OtpService, "plan_resync", plan_resync)
    monkeypatch.setattr(OtpService, "issue_recovery_codes", issue_recovery_codes)
    monkeypatch.setattr(OtpService, "create_webhook_endpoint", create_webhook_endpoint)
    monkeypatch.setattr(OtpService, "rotate_webhook_endpoint", rotate_webhook_endpoint)
    SEEN_RESPONSES.clear()
    _LOG_CAPTURE.lines.clear()
    ISSUED_KEYS.clear()  # each test is scanned for what it issued itself
    ISSUED_CODES.clear()
    if _LOG_CAPTURE not in logging.getLogger().handlers:  # a test may have reconfigured logging
        logging.getLogger().addHandler(_LOG_CAPTURE)
        logging.getLogger().setLevel(logging.DEBUG)
    yield
    for path, body in SEEN_RESPONSES:
        hits = find_secrets(body, codes=not path.startswith(("/metrics", "/api/v1/debug/")))
        assert not hits, f"a response from {path} contains a secret"
    assert not find_secrets("\n".join(_LOG_CAPTURE.lines)), "a log line contains a secret"


class FakeClock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


RESET_POSTGRES = """
TRUNCATE devices, audit_logs, reports, api_clients, recovery_codes, audit_checkpoints, webhook_endpoints,
    webhook_messages, webhook_deliveries RESTART IDENTITY;
UPDATE audit_chains SET seq = 0, head = repeat('0', 64), floor_seq = 0, floor_hash = repeat('0', 64), head_at = NULL,
    timed_from = 0;
DELETE FROM tenants WHERE id > 1;
SELECT setval(pg_get_serial_sequence('tenants', 'id'), 1);
"""


def _reset_postgres(database) -> None:
    with database.connection_context():
        database.execute_sql(RESET_POSTGRES)


_pg_migrated = False


@pytest.fixture
def db_url(backend, tmp_path):
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/test.db"
    return PG_URL


def settings_for(db_url: str, **env: str) -> Settings:
    base = {
        "ENVIRONMENT": "test",
        "MASTER_SECRET": MASTER_SECRET,
        "API_KEY": API_KEY,
        "DATABASE_URL": db_url,
        "RATE_LIMIT_VERIFY": "100000/minute",
        "RATE_LIMIT_DEFAULT": "100000/minute",
        "DB_POOL_SIZE": "24",
    }
    base.update(env)
    return Settings.from_env(base)


@pytest.fixture
def database(db_url, request):
    global _pg_migrated
    db = open_database(db_url, pool_size=24, timeout=5)
    if db_url.startswith("sqlite") or not _pg_migrated:
        migrate(db)
        _pg_migrated = _pg_migrated or not db_url.startswith("sqlite")
    if not db_url.startswith("sqlite"):
        _reset_postgres(db)
    yield db
    scan_tables_for_secrets(db, database_taken_away=request.node.get_closest_marker("faults") is not None)
    db.close_all()


def scan_tables_for_secrets(database, database_taken_away: bool = False) -> None:
    """Part of the secrets scan: no audit or device row may hold a key or a code. Only a fault test, which
    takes the database away and checks its own rows, may leave it unreadable; anywhere else an unreadable
    table fails the test rather than skip its scan."""
    try:
        with database.connection_context():
            tables = ("audit_logs", "devices", "recovery_codes", "webhook_endpoints", "webhook_messages")
            for table in (*tables, "webhook_deliveries"):
                rows = database.execute_sql(f"SELECT * FROM {table}").fetchall()
                text = _LogCapture.times.sub("<time>", json.dumps(rows, default=str))  # microseconds are digits
                assert not find_secrets(text), f"{table} holds a secret"
    except peewee.OperationalError:
        if not database_taken_away:
            raise


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def settings(db_url):
    return settings_for(db_url)


class EventLoopService(OtpService):
    """The service as the server runs it on PostgreSQL — commands on an event loop (`AsyncOtpService`), their
    statements shared with concurrent ones — behind the blocking interface the tests call, from any thread."""

    def start(self) -> EventLoopService:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.front = AsyncOtpService(self)
        self.loop.call_soon_threadsafe(self.front.start)
        return self

    def execute(self, plan):
        return asyncio.run_coroutine_threadsafe(self.front.execute(plan), self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.front.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def service_for(settings: Settings, database, clock, backend: str):
    """SQLite: the blocking service the thread pool runs. PostgreSQL: the event-loop path the server runs."""
    keyring = Keyring(settings.master_secrets, settings.master_secret_version)
    if backend == "sqlite":
        yield OtpService(settings, keyring, database, clock=clock)
        return
    service = EventLoopService(settings, keyring, database, clock=clock).start()
    yield service
    service.stop()


@pytest.fixture
def service(settings, database, clock, backend):
    yield from service_for(settings, database, clock, backend)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: dict
    raw: bytes


class Client:
    """A tiny HTTP client for the API under test: real sockets, real Tornado."""

    def __init__(self, port: int):
        self.port = port

    def request(
        self, method: str, path: str, body=None, *, headers=None, auth: str | None = API_KEY, raw: bytes | None = None
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"User-Agent": "pytest-client/1.0"}
        if auth is not None:
            sent["Authorization"] = f"Bearer {auth}"
        payload = raw
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        conn.request(method, path, body=payload, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        content_type = resp.headers.get("Content-Type", "")
        parsed = json.loads(data) if data and content_type.startswith("application/json") else {}
        check_response(method, path, resp.status, content_type, parsed)
        for field in ("otp", "otp1", "otp2"):  # a code sent for a verification, confirmation or resync
            if isinstance(body, dict) and field in body:
                remember_code(body[field])
        if path.startswith("/api/v1/devices/register") and resp.status == 201:
            remember_registration(parsed["data"])  # the one response allowed to carry the key
        elif path.endswith("/recovery-codes") and resp.status == 201:
            remember_recovery_codes(parsed["data"]["codes"])  # the one response allowed to carry them
        elif WEBHOOK_SECRET_ANSWERS.match(path.split("?")[0]) and method == "POST" and resp.status in (200, 201):
            remember_webhook_secret(parsed["data"]["secret"])  # the one response allowed to carry it
        else:
            SEEN_RESPONSES.append((path, data.decode("utf-8", "replace")))
        return Response(resp.status, resp.headers, parsed, data)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)


class RunningServer:
    """The real application on a loopback port, its IOLoop on a background thread."""

    def __init__(self, settings: Settings, clock=None, database=None):
        self.state = None
        self._ready = threading.Event()
        self._sockets = bind_sockets(0, "127.0.0.1")
        self.port = self._sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(settings, clock, database), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        self.client = Client(self.port)

    def _run(self, settings, clock, database):
        async def main():
            self.loop = asyncio.get_running_loop()
            self.state = build_state(settings, database=database, clock=clock)
            self.state.service.start()
            self.server = HTTPServer(make_app(self.state), max_body_size=MAX_BODY_BYTES, body_timeout=10)
            self.server.add_sockets(self._sockets)
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            self.server.stop()
            await self.server.close_all_connections()
            self.state.service.close()

        asyncio.run(main())

    def stop(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def make_server(database, clock):
    servers = []

    def start(settings: Settings, use_clock=True, own_database=False) -> RunningServer:
        server = RunningServer(
            settings, clock=clock if use_clock else None, database=None if own_database else database
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(make_server, settings) -> Client:
    return make_server(settings).client
