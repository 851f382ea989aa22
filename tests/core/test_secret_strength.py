"""The guessability estimate production's secrets are judged by: random values of the usual generators, at the
shortest length each variable allows, always pass; repeated, sequential and few-symbol ones never do."""

import base64
import random
import secrets
import uuid

import pytest

from otp_service.core.secret_strength import estimated_bits, shortest_period, unpredictable, weakness


def urlsafe(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# What `secrets` makes, drawn from a seeded generator so that each run judges the same 3000 values: the estimate
# refuses about 1 in 200,000 truly random 16-hex-digit keys (measured: 1 of 200,000 `token_hex(8)`, e.g.
# 6521a00666621665), so unseeded draws would fail this test about once in 70 runs, and a deployment that drew
# such a key is told to draw another.
GENERATORS = {  # (minimum length the value is judged against, a generator of it from a seeded Random)
    "openssl rand -base64 32": (32, lambda rng: base64.b64encode(rng.randbytes(32)).decode()),
    "token_urlsafe(32)": (32, lambda rng: urlsafe(rng.randbytes(32))),
    "openssl rand -hex 16": (32, lambda rng: rng.randbytes(16).hex()),
    "uuid4": (32, lambda rng: str(uuid.UUID(bytes=rng.randbytes(16), version=4))),
    "an API key: token_urlsafe(12)": (16, lambda rng: urlsafe(rng.randbytes(12))),
    "an API key: token_hex(8)": (16, lambda rng: rng.randbytes(8).hex()),
    "an Ed25519 seed": (32, lambda rng: rng.randbytes(32)),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_random_values_at_their_shortest_always_pass(name):
    min_length, generate = GENERATORS[name]
    rng = random.Random(name)
    assert all(weakness(generate(rng), min_length) is None for _ in range(3000))


@pytest.mark.parametrize(
    "value",
    [
        "a" * 32,
        "ab" * 16,
        "abcdefgh" * 4,
        "0123456789abcdef" * 2,
        "abcdefghijklmnopqrstuvwxyz012345",
        "9876543210" * 4,
        "password" * 4,
        "".join(secrets.choice("01") for _ in range(40)),
        "".join(secrets.choice("abc") for _ in range(36)),
        bytes(32),
        bytes(range(32)),
        b"\xff\x00" * 16,
    ],
)
def test_mechanical_values_are_refused(value):
    assert weakness(value, 32) is not None


def test_the_estimate_counts_one_period_and_no_runs():
    assert shortest_period([1, 2, 3, 1, 2, 3, 1]) == 3 and shortest_period([1, 2, 3]) == 3 and shortest_period([]) == 0
    assert unpredictable(list(b"aaaa")) == 2 and unpredictable(list(b"abcdxyz")) == 4 and unpredictable([]) == 0
    assert estimated_bits("a" * 40) == 0 and estimated_bits("ab" * 20) == 2 and estimated_bits("abab" + "c") > 2


def test_a_refusal_describes_the_value_without_repeating_it():
    for value in ("q" * 40, "qwqwqwqwqwqwqwqwqwqwqwqwqwqwqwqw"):
        problem = weakness(value, 32)
        assert problem is not None and "qw" not in problem and "qq" not in problem
