"""Realistic synthetic history, made by calling the service's own commands.

Every audit row it leaves is one the real service wrote, with simulated clocks: people logging in (with the
odd typo and double submit), phones whose clocks drift, devices deactivated and then tried again, one
brute-force attack, a scanner without an API key. From the middle of the period on, the device lifecycle too
(`_lifecycle`): enrolments confirmed with their first code (a few after a wrong one, a few never, so they
expire), phones whose clocks go far off and are resynchronised with two consecutive codes, then set right
(re-centred) or reset by an operator, recovery codes issued and used after a lost phone; webhook endpoints
hear of it (`demo_webhooks`). For a given seed the outcomes — and so every report total — are the same on
every run, even though each run derives fresh keys and recovery codes.
"""

from __future__ import annotations

import base64
import contextlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..audit.rows import RequestContext
from ..core import errors, recovery, totp
from ..core.actions import Action
from ..service import OtpService
from .demo_clients import DEMO_PEOPLE, demo_clients
from .demo_webhooks import demo_endpoints, settle

if TYPE_CHECKING:
    from ..config import Settings

DEFAULT_END = datetime(2026, 3, 1, tzinfo=UTC)
USER_AGENTS = ("AcmeBank-iOS/5.2", "AcmeBank-Android/5.1", "AcmeWeb/2026.02 (Chrome)", "AcmeWeb/2026.02 (Firefox)")
PROFILES = (  # (weight, digits, interval, algorithm)
    (80, 6, 30, "SHA1"),
    (12, 6, 30, "SHA256"),
    (8, 8, 30, "SHA1"),
)


@dataclass
class SimDevice:
    device_id: str
    user_id: str
    key: bytes
    digits: int
    interval: int
    algorithm: str
    registered: float
    offset: float  # seconds the phone's clock is ahead at registration
    ppm: float  # how fast it drifts
    ip: str
    agent: str
    jumps: list[tuple[float, float]] = field(default_factory=list)  # (from, seconds): its clock was set so

    def clock(self, t: float) -> float:
        jumped = sum(seconds for since, seconds in self.jumps if t >= since)
        return t + self.offset + self.ppm * 1e-6 * (t - self.registered) + jumped

    def code(self, t: float) -> str:
        return totp.totp(self.key, self.clock(t), self.digits, self.interval, self.algorithm)

    def wrong_code(self, guess: int, t: float, span: int = 15) -> str:
        """`guess`, moved on until it matches no step within `span` steps of t, on the server's clock or the
        phone's: a typo that is certainly wrong, found without drawing more random numbers (so the run
        stays reproducible)."""
        near = {
            totp.totp(self.key, moment + k * self.interval, self.digits, self.interval, self.algorithm)
            for moment in {t, self.clock(t)}
            for k in range(-span, span + 1)
        }
        modulus = 10**self.digits
        while str(guess % modulus).zfill(self.digits) in near:
            guess += 1
        return str(guess % modulus).zfill(self.digits)


def generate(
    service: OtpService, devices: int = 40, days: int = 28, seed: int = 7, end: datetime = DEFAULT_END, people=False
) -> dict[str, int]:
    """Fill the database with `days` of history ending at `end`; returns counts of what was done. `people`: the
    operators' requests name whom they were for (X-Actor, `DEMO_PEOPLE`; off: notebook 5's hashes stay)."""
    rng = random.Random(seed)
    end_ts = end.timestamp()
    start_ts = end_ts - days * 86400
    events: list[tuple[float, int, str, tuple]] = []  # (time, tie-breaker, kind, args)
    seq = iter(range(10**9))

    def at(t: float, kind: str, *args) -> None:
        events.append((t, next(seq), kind, args))

    sims: list[SimDevice] = []
    for i in range(devices):
        weight = rng.uniform(0, 100)
        digits, interval, algorithm = next(p[1:] for p in _cumulative(PROFILES) if weight <= p[0])
        registered = start_ts + rng.uniform(0, 0.4) * days * 86400
        drifting = rng.random() < 0.15
        sims.append(
            SimDevice(
                device_id=f"DEMO-{i:04d}",
                user_id=f"user{i % max(1, devices * 4 // 5):03d}@example.com",
                key=b"",
                digits=digits,
                interval=interval,
                algorithm=algorithm,
                registered=registered,
                offset=rng.gauss(0, 6),
                ppm=rng.gauss(0, 4) + (rng.choice((-1, 1)) * rng.uniform(15, 40) if drifting else 0),
                ip=f"198.51.100.{rng.randint(1, 254)}",
                agent=rng.choice(USER_AGENTS),
            )
        )
        at(registered, "register", i)
        deactivate_at = registered + rng.uniform(0.3, 1.0) * (end_ts - registered) if rng.random() < 0.1 else None
        abandon_at = registered + rng.uniform(0.1, 0.4) * (end_ts - registered) if rng.random() < 0.1 else None
        _logins(rng, at, i, registered, start_ts, days, abandon_at, deactivate_at)
        if deactivate_at:
            at(deactivate_at, "deactivate", i)

    # One brute-force attack on an active device, and a scanner probing without an API key.
    victim = rng.randrange(devices)
    attack_start = start_ts + rng.uniform(0.5, 0.8) * days * 86400
    for n in range(40):
        at(attack_start + n * 12.0, "attack", victim, rng.randint(0, 10**8))
    scanner_start = start_ts + rng.uniform(0.2, 0.9) * days * 86400
    for n in range(25):
        at(scanner_start + n * 2.0, "scan", n)
    at(scanner_start + 60, "rate_limited")

    # The lifecycle draws from a random stream of its own: everything above, and its totals, stay as they were.
    _lifecycle(random.Random(f"lifecycle-{seed}"), at, sims, devices, start_ts, days, service.settings)

    done: Counter[str] = Counter()
    codes: dict[str, list[str]] = {}  # each user's recovery codes, as issued
    for t, _, kind, args in sorted(events):
        _apply(service, sims, codes, kind, args, t, done, people)
    return dict(done)


def _logins(
    rng: random.Random,
    at,
    i: int,
    since: float,
    start_ts: float,
    days: int,
    abandon_at: float | None = None,
    deactivate_at: float | None = None,
    skip: tuple[tuple[float, float], ...] = (),
) -> None:
    """Device `i`'s sign-ins, about 1.6 a day in waking hours, after `since`: none after `abandon_at` (the
    phone is lost) or within a `skip` window (when a scenario scripts them), refused ones after `deactivate_at`."""
    day = math.floor((since - start_ts) / 86400)
    while day < days:
        for _ in range(_poisson(rng, 1.6)):
            t = start_ts + day * 86400 + rng.uniform(7, 23) * 3600
            if t <= since or (abandon_at and t > abandon_at) or any(a <= t <= b for a, b in skip):
                continue
            if deactivate_at and t > deactivate_at:
                if rng.random() < 0.3:
                    at(t, "login", i, "inactive")
                continue
            roll = rng.random()
            kind = "typo" if roll < 0.06 else "double" if roll < 0.09 else "ok"
            at(t, "login", i, kind, rng.randint(0, 10**8), rng.uniform(0.2, 2.5))
        day += 1


# The lifecycle's cast, one new user each (`devices // 20` more who simply enrol and sign in): two phones whose
# clocks go far off, two users who lose their phone (and so use recovery codes), two more who keep recovery codes,
# two who never confirm their enrolment (one enrols again the next day), two who type a wrong first code.
LIFECYCLE_ROLES = (
    "fast-clock",
    "slow-clock",
    "lost-typo",
    "lost-reuse",
    "codes",
    "codes",
    "expires-retries",
    "expires",
    "typo",
    "typo",
)


def _lifecycle(rng: random.Random, at, sims: list[SimDevice], devices: int, start_ts: float, days: int, settings):
    """Enrolments with confirmation from the middle of the period on (as if it had just been switched on), and
    what follows some of them; times are fractions of the period, so every story fits in any length of it."""
    span = days * 86400.0
    ids = iter(range(devices, 10**9))
    users = max(1, devices * 4 // 5)

    def frac(lo: float, hi: float) -> float:
        return start_ts + rng.uniform(lo, hi) * span

    def sweep(enrolled: float) -> None:
        """The server's minute sweep that first sees the enrolment's deadline passed (earlier ones find nothing)."""
        at(math.ceil((enrolled + settings.enrollment_ttl_seconds) / 60) * 60, "sweep")

    def enrol(user_id: str, when: float, wrong_first: bool = False, confirm: bool = True) -> tuple[int, float]:
        """A new phone, registered at `when` and (unless not `confirm`) confirmed a minute or two later."""
        weight = rng.uniform(0, 100)
        digits, interval, algorithm = next(p[1:] for p in _cumulative(PROFILES) if weight <= p[0])
        i = len(sims)
        sims.append(
            SimDevice(
                device_id=f"DEMO-{next(ids):04d}",
                user_id=user_id,
                key=b"",
                digits=digits,
                interval=interval,
                algorithm=algorithm,
                registered=when,
                offset=rng.gauss(0, 6),
                ppm=rng.gauss(0, 4),
                ip=f"198.51.100.{rng.randint(1, 254)}",
                agent=rng.choice(USER_AGENTS[:2]),  # enrolment is done in the phone app
            )
        )
        at(when, "enrol", i)
        sweep(when)
        return i, confirmation(i, when, wrong_first) if confirm else when

    def confirmation(i: int, when: float, wrong_first: bool, slow: bool = False) -> float:
        """The owner types the first code (a wrong one first, if `wrong_first`); returns when it was accepted."""
        t = when + (rng.uniform(150, 300) if slow else rng.uniform(20, 110))
        if wrong_first:
            at(t, "confirm", i, "wrong", rng.randint(0, 10**8))
            t += rng.uniform(15, 45)
        at(t, "confirm", i, "ok")
        return t

    for n, role in enumerate(LIFECYCLE_ROLES + ("plain",) * (devices // 20)):
        user_id = f"user{users + n:03d}@example.com"
        i, confirmed = enrol(user_id, frac(0.5, 0.65), wrong_first=role == "typo", confirm=not role.startswith("exp"))
        sim = sims[i]
        if role == "expires":
            continue
        if role == "expires-retries":  # registers the same phone again the next day, and confirms it this time
            again = confirmed + rng.uniform(0.02, 0.04) * span
            at(again, "enrol", i)
            sweep(again)
            confirmed = confirmation(i, again, wrong_first=False, slow=True)
        if role in ("lost-typo", "lost-reuse", "codes"):
            at(confirmed + rng.uniform(30, 90), "issue_codes", i)
        lost_at, skip = None, ()
        if role in ("fast-clock", "slow-clock"):
            # Its clock is set 15-18 minutes wrong; the next sign-ins fail, so its owner resynchronises it with two
            # consecutive codes (the slow one mistypes the second code first). Later the clock is set right:
            # the fast phone's next sign-in is re-centred; the slow phone's offset is reset by an operator.
            wrong_by = rng.uniform(15, 18) * 60 * (1 if role == "fast-clock" else -1)
            jumped, fixed = frac(0.68, 0.72), frac(0.85, 0.88)
            sim.jumps += [(jumped, wrong_by), (fixed, -wrong_by)]
            tried = jumped + rng.uniform(0.002, 0.004) * span
            at(tried, "login", i, "ok", 0, rng.uniform(3, 8))
            at(tried + rng.uniform(30, 60), "login", i, "ok", 0, rng.uniform(3, 8))
            resynced = tried + rng.uniform(120, 300)
            if role == "slow-clock":
                at(resynced, "resync", i, "typo", rng.randint(0, 10**8))
                resynced += rng.uniform(40, 90)
            at(resynced, "resync", i, "ok")
            if role == "fast-clock":
                after_fix = fixed + rng.uniform(0.001, 0.002) * span
                at(after_fix, "login", i, "ok", 0, rng.uniform(0.5, 2.5))
            else:
                after_fix = fixed + rng.uniform(300, 900)
                at(after_fix, "drift_reset", i)
            skip = ((jumped, resynced + 1), (fixed, after_fix + 1))
        if role in ("lost-typo", "lost-reuse"):
            # The phone is lost: its owner signs in with a recovery code (one mistypes it first), the help desk
            # deactivates the phone, and a new one is enrolled a couple of days later. The other owner signs in
            # again before that with the code already used (crossed out on the sheet, but typed anyway), then the next.
            lost_at = frac(0.74, 0.8)
            recovered = lost_at + rng.uniform(0.003, 0.006) * span
            if role == "lost-typo":
                at(recovered, "use_code", i, 0, "typo")
                recovered += rng.uniform(20, 60)
            at(recovered, "use_code", i, 0, "ok")
            at(recovered + rng.uniform(0.002, 0.004) * span, "deactivate", i)
            if role == "lost-reuse":
                again = lost_at + rng.uniform(0.03, 0.04) * span
                at(again, "use_code", i, 0, "ok")
                at(again + rng.uniform(20, 40), "use_code", i, 1, "ok")
            new, new_confirmed = enrol(user_id, lost_at + rng.uniform(0.06, 0.08) * span)
            _logins(rng, at, new, new_confirmed, start_ts, days)
        _logins(rng, at, i, confirmed, start_ts, days, abandon_at=lost_at, skip=skip)


# Which API client the simulated requests come through (the attacker found the login front end's).
DEMO_CLIENTS = {
    "register": "signup",
    "enrol": "signup",
    "confirm": "signup",
    "issue_codes": "signup",
    "deactivate": "ops-console",
    "drift_reset": "ops-console",
    "login": "login-frontend",
    "resync": "login-frontend",
    "use_code": "login-frontend",
    "attack": "login-frontend",
}


def _apply(
    service: OtpService,
    sims: list[SimDevice],
    codes: dict[str, list[str]],
    kind: str,
    args: tuple,
    t: float,
    done: Counter,
    people: bool = False,
) -> None:
    if kind == "scan":
        ctx = RequestContext("192.0.2.66", "python-requests/2.32", None)
        service.record(Action.AUTH_FAILED, ctx, now=t)
    elif kind == "rate_limited":
        service.record(
            Action.RATE_LIMITED, RequestContext("192.0.2.66", "python-requests/2.32", None), reason="DEFAULT", now=t
        )
    elif kind == "sweep":
        expired = service.expire_pending(now=t)
        if expired:
            done["expired"] += expired
        return
    else:
        sim = sims[args[0]]
        ctx = RequestContext(
            sim.ip if kind != "attack" else "203.0.113.99",
            sim.agent if kind != "attack" else "curl/8.5",
            None,
            actor=DEMO_CLIENTS[kind],
            by=DEMO_PEOPLE.get(kind) if people else None,
        )
        if kind in ("register", "enrol"):
            reg = service.register(
                sim.device_id,
                sim.user_id,
                ctx,
                digits=sim.digits,
                interval=sim.interval,
                algorithm=sim.algorithm,
                confirm=kind == "enrol",
                now=t,
            )
            sim.key = base64.b64decode(reg["derived_key"])
            if kind == "register" and reg["status"] == "pending":  # ENROLLMENT_CONFIRMATION=required
                service.confirm(sim.device_id, sim.code(t), ctx, now=t)
        elif kind == "deactivate":
            service.deactivate(sim.device_id, ctx, now=t)
        elif kind == "issue_codes":
            codes[sim.user_id] = service.issue_recovery_codes(sim.user_id, ctx, now=t)["codes"]
        elif kind == "login" or kind == "attack":
            _login(service, sim, kind, args, t, ctx)
        else:
            _lifecycle_request(service, sim, codes, kind, args, t, ctx)
    done[kind] += 1


def _lifecycle_request(
    service: OtpService, sim: SimDevice, codes: dict[str, list[str]], kind: str, args: tuple, t: float, ctx
) -> None:
    # locked, expired or inactive: the service audited the refusal, as it would for a real client
    with contextlib.suppress(errors.ServiceError):
        if kind == "confirm":
            code = sim.code(t) if args[1] == "ok" else sim.wrong_code(args[2], t)
            service.confirm(sim.device_id, code, ctx, now=t)
        elif kind == "resync":  # the code shown, then the next one, sent together
            span = service.policy.resync_window + 1  # a mistyped second code: no pair anywhere resync looks
            second = sim.code(t) if args[1] == "ok" else sim.wrong_code(args[2], t, span)
            service.resync(sim.device_id, sim.code(t - sim.interval), second, ctx, now=t)
        elif kind == "drift_reset":
            service.reset_drift(sim.device_id, ctx, now=t)
        elif kind == "use_code":
            code = codes[sim.user_id][args[1]]
            service.use_recovery_code(sim.user_id, code if args[2] == "ok" else _misread(code), ctx, now=t)


def _misread(code: str) -> str:
    """A recovery code with one character read as the next in the alphabet: not that code, nor (but with a
    chance of about one in 10^17) any other of the set."""
    alphabet = recovery.ALPHABET
    position = 5  # the second group's first character
    wrong = alphabet[(alphabet.index(code[position]) + 1) % len(alphabet)]
    return code[:position] + wrong + code[position + 1 :]


def _login(service: OtpService, sim: SimDevice, kind: str, args: tuple, t: float, ctx: RequestContext) -> None:
    try:
        if kind == "attack":
            service.verify(sim.device_id, sim.wrong_code(args[1], t), ctx, now=t)
        elif args[1] == "inactive":
            service.verify(sim.device_id, sim.code(t), ctx, now=t)
        else:
            mode, guess, delay = args[1:]
            code = sim.wrong_code(guess, t) if mode == "typo" else sim.code(t)
            service.verify(sim.device_id, code, ctx, now=t + delay)
            if mode == "double":
                service.verify(sim.device_id, code, ctx, now=t + delay + 0.8)
    except errors.ServiceError:
        pass  # locked or inactive: the service audited it, as it would for a real client


def _cumulative(profiles):
    total = 0
    for weight, *rest in profiles:
        total += weight
        yield (total, *rest)


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


DEMO_MASTER_SECRET = "demo-master-secret-not-for-production-0123"  # demo databases only: throwaway keys
DEMO_SIGNING_KEY = "ZGVtby1hdWRpdC1zaWduaW5nLWtleS1kZW1vLW9ubHk="  # 32 bytes, base64: demo checkpoints


def demo_settings(url: str) -> Settings:
    """The settings demo databases are written (and verified) with: fixed throwaway secrets, so a report can
    check the demo trail's chains and signature like a real one's."""
    from ..config import Settings

    env = {"ENVIRONMENT": "test", "DATABASE_URL": url, "API_KEY": "demo-api-key-not-for-production"}
    return Settings.from_env(env | {"MASTER_SECRET": DEMO_MASTER_SECRET, "AUDIT_SIGNING_KEY": DEMO_SIGNING_KEY})


def demo_database(url: str, devices: int = 40, days: int = 28, seed: int = 7, end: datetime = DEFAULT_END) -> str:
    """A database at `url` holding the demo history, its audit chains sealed by a checkpoint at its end: what
    report notebooks use when they are given no database."""
    from ..db.database import migrate, open_database
    from ..service import build_service

    database = open_database(url, 1)
    migrate(database)
    service = build_service(demo_settings(url), database, clock=end.timestamp)
    hooks = demo_endpoints(database, end)
    generate(service, devices, days, seed, end, people=True)
    settle(database, end, hooks)
    demo_clients(database, end)
    service.checkpoint("on-demand")
    database.close_all()
    return url
