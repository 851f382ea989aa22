"""Known-answer tests of the TOTP engine against RFC 4226 and RFC 6238, and two independent clients."""

import base64
import hashlib
import hmac

import pyotp
import pytest

from otp_service.core import totp
from tests.helpers import seed_client_generate
from tests.rfc_vectors import (
    RFC4226_EXAMPLE_DBC,
    RFC4226_EXAMPLE_HMAC,
    RFC4226_EXAMPLE_HOTP6,
    RFC4226_HOTP,
    RFC4226_SECRET,
    RFC6238_SEEDS,
    RFC6238_TOTP,
)


def test_dynamic_truncation_worked_example_of_rfc4226_section_5_4():
    assert totp.dynamic_truncate(RFC4226_EXAMPLE_HMAC) == RFC4226_EXAMPLE_DBC
    assert str(RFC4226_EXAMPLE_DBC % 10**6) == RFC4226_EXAMPLE_HOTP6


@pytest.mark.parametrize("counter,truncated,code", RFC4226_HOTP)
def test_hotp_matches_rfc4226_appendix_d(counter, truncated, code):
    digest = hmac.digest(RFC4226_SECRET, totp.counter_bytes(counter), "sha1")
    assert totp.dynamic_truncate(digest) == truncated
    assert totp.hotp(RFC4226_SECRET, counter) == code


@pytest.mark.parametrize("unix_time,step,code,algorithm", RFC6238_TOTP)
def test_totp_matches_rfc6238_appendix_b(unix_time, step, code, algorithm):
    assert totp.time_step(unix_time, 30) == step
    assert totp.totp(RFC6238_SEEDS[algorithm], unix_time, digits=8, interval=30, algorithm=algorithm) == code


def test_appendix_b_has_all_eighteen_rows():
    assert len(RFC6238_TOTP) == 18
    assert {a for *_, a in RFC6238_TOTP} == {"SHA1", "SHA256", "SHA512"}


def test_codes_keep_leading_zeros():
    # 1111111109 / SHA1 is the RFC row whose code starts with 0.
    assert totp.totp(RFC6238_SEEDS["SHA1"], 1111111109, digits=8) == "07081804"


def test_step_boundaries_follow_floor_division():
    assert totp.time_step(29.999, 30) == 0
    assert totp.time_step(30, 30) == 1
    assert totp.time_step(59, 30) == 1
    assert totp.time_step(60, 60) == 1


def test_matching_steps_finds_every_match_in_the_window():
    key = RFC6238_SEEDS["SHA1"]
    code = totp.hotp(key, 1000)
    assert totp.matching_steps(key, code, range(998, 1003)) == [1000]
    assert totp.matching_steps(key, code, range(990, 995)) == []


@pytest.mark.parametrize("at", [0, 59, 1111111109, 1234567890, 2000000000])
def test_engine_agrees_with_pyotp_and_the_seed_client(at):
    key = bytes(range(32))
    b32 = base64.b32encode(key).decode()
    assert totp.totp(key, at) == pyotp.TOTP(b32).at(at)
    assert totp.totp(key, at) == str(seed_client_generate(base64.b64encode(key).decode(), at)).zfill(6)
    for algorithm, digest in (("SHA256", hashlib.sha256), ("SHA512", hashlib.sha512)):
        assert totp.totp(key, at, 8, 60, algorithm) == pyotp.TOTP(b32, digits=8, interval=60, digest=digest).at(at)
