"""Realistic synthetic history, made by calling the service's own register/verify/deactivate.

Every audit row it leaves is one the real service wrote, with simulated clocks: people
logging in (with the odd typo and double submit), phones whose clocks drift, devices
deactivated and then tried again, one brute-force attack, a scanner without an API key.
For a given seed the outcomes — and so every report total — are the same on every run,
even though each run derives fresh keys.
"""

from __future__ import annotations

import base64
import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from . import errors, totp
from .audit import RequestContext
from .models import Action
from .service import OtpService

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

    def clock(self, t: float) -> float:
        return t + self.offset + self.ppm * 1e-6 * (t - self.registered)

    def code(self, t: float) -> str:
        return totp.totp(self.key, self.clock(t), self.digits, self.interval, self.algorithm)

    def wrong_code(self, guess: int, t: float) -> str:
        """`guess`, moved on until it matches no step near t: a typo that is certainly wrong,
        found without drawing more random numbers (so the run stays reproducible)."""
        near = {
            totp.totp(self.key, t + k * self.interval, self.digits, self.interval, self.algorithm)
            for k in range(-15, 16)
        }
        modulus = 10**self.digits
        while str(guess % modulus).zfill(self.digits) in near:
            guess += 1
        return str(guess % modulus).zfill(self.digits)


def generate(
    service: OtpService, devices: int = 40, days: int = 28, seed: int = 7, end: datetime = DEFAULT_END
) -> dict[str, int]:
    """Fill the service's database with `days` of history ending at `end`; returns counts of what was done."""
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
        day = math.floor((registered - start_ts) / 86400)
        while day < days:
            for _ in range(_poisson(rng, 1.6)):
                t = start_ts + day * 86400 + rng.uniform(7, 23) * 3600
                if t <= registered or (abandon_at and t > abandon_at):
                    continue
                if deactivate_at and t > deactivate_at:
                    if rng.random() < 0.3:
                        at(t, "login", i, "inactive")
                    continue
                roll = rng.random()
                kind = "typo" if roll < 0.06 else "double" if roll < 0.09 else "ok"
                at(t, "login", i, kind, rng.randint(0, 10**8), rng.uniform(0.2, 2.5))
            day += 1
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

    done: Counter[str] = Counter()
    for t, _, kind, args in sorted(events):
        _apply(service, sims, kind, args, t, done)
    return dict(done)


# Which API client the simulated requests come through (the attacker found the login front end's).
DEMO_CLIENTS = {
    "register": "signup",
    "deactivate": "ops-console",
    "login": "login-frontend",
    "attack": "login-frontend",
}


def _apply(service: OtpService, sims: list[SimDevice], kind: str, args: tuple, t: float, done: Counter) -> None:
    if kind == "scan":
        ctx = RequestContext("192.0.2.66", "python-requests/2.32", None)
        service.record(Action.AUTH_FAILED, ctx, now=t)
    elif kind == "rate_limited":
        service.record(
            Action.RATE_LIMITED, RequestContext("192.0.2.66", "python-requests/2.32", None), reason="DEFAULT", now=t
        )
    else:
        sim = sims[args[0]]
        ctx = RequestContext(
            sim.ip if kind != "attack" else "203.0.113.99",
            sim.agent if kind != "attack" else "curl/8.5",
            None,
            actor=DEMO_CLIENTS[kind],
        )
        if kind == "register":
            reg = service.register(
                sim.device_id,
                sim.user_id,
                ctx,
                digits=sim.digits,
                interval=sim.interval,
                algorithm=sim.algorithm,
                now=t,
            )
            sim.key = base64.b64decode(reg["derived_key"])
        elif kind == "deactivate":
            service.deactivate(sim.device_id, ctx, now=t)
        else:
            _login(service, sim, kind, args, t, ctx)
    done[kind] += 1


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


def demo_database(url: str, devices: int = 40, days: int = 28, seed: int = 7, end: datetime = DEFAULT_END) -> str:
    """A database at `url` holding the demo history, under a throwaway master secret (the keys are
    never needed again): what report notebooks use when they are given no database."""
    import secrets

    from .config import Settings
    from .database import migrate, open_database
    from .service import build_service

    settings = Settings.from_env(
        {
            "ENVIRONMENT": "test",
            "MASTER_SECRET": secrets.token_urlsafe(32),
            "API_KEY": secrets.token_urlsafe(16),
            "DATABASE_URL": url,
        }
    )
    database = open_database(url, 1)
    migrate(database)
    generate(build_service(settings, database), devices, days, seed, end)
    database.close_all()
    return url
