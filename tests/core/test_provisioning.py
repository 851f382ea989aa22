"""The otpauth URI the service registers devices with, and its strict inverse (`parse_otpauth_uri`): what an app
is given reads back the same, and a URI an app could read two ways is refused with a message naming why."""

from datetime import datetime

import pytest

from otp_service.core.errors import ValidationError
from otp_service.core.provisioning import otpauth_uri, parse_otpauth_uri, secret_base32
from otp_service.core.transitions import DeviceState

KEY = bytes(range(32))


def device(**changes) -> DeviceState:
    made = DeviceState(
        "D1",
        "alice@example.com",
        "00",
        1,
        "h",
        8,
        60,
        "SHA256",
        "ACME Corp",
        True,
        datetime(2026, 1, 1),
        None,
        0,
        None,
        0,
        0,
        0,
        None,
        0,
    )
    return made._replace(**changes)


@pytest.mark.parametrize("issuer", ["ACME Corp", None, "Ünïcode & co:"])
def test_the_uri_the_service_makes_reads_back_the_same(issuer):
    made = otpauth_uri(secret_base32(KEY), device(issuer=issuer))
    read = parse_otpauth_uri(made)
    assert (read.issuer, read.account, read.key) == (issuer, "alice@example.com", KEY)
    assert (read.algorithm, read.digits, read.interval, read.ignored) == ("SHA256", 8, 60, ())
    assert read.secret_characters == len(secret_base32(KEY))


def test_defaults_lowercase_secrets_and_unknown_parameters():
    read = parse_otpauth_uri("otpauth://totp/bob?secret=gezdgnbvgy3tqojq&image=https%3A%2F%2Fx")
    assert (read.issuer, read.account, read.key) == (None, "bob", b"1234567890")
    assert (read.algorithm, read.digits, read.interval, read.ignored) == ("SHA1", 6, 30, ("image",))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "is empty"),
        ("https://totp/x?secret=GEZDGNBV", "must start with otpauth://"),
        ("otpauth://hotp/x?secret=GEZDGNBV", "of type 'hotp', not totp"),
        ("otpauth://totp/x?issuer=A", "has no secret parameter"),
        ("otpauth://totp/x?secret=GEZ1!", "secret is not base32"),
        ("otpauth://totp/x?secret=GEZDGNBV&secret=MFRGG", "two 'secret' parameters"),
        ("otpauth://totp/A:x?secret=GEZDGNBV&issuer=B", "label names issuer 'A', its issuer parameter 'B'"),
        ("otpauth://totp/x?secret=GEZDGNBV&algorithm=MD5", "would refuse: algorithm must be one of"),
        ("otpauth://totp/x?secret=GEZDGNBV&digits=12", "would refuse: digits must be a whole number from"),
        ("otpauth://totp/x?secret=GEZDGNBV&period=thirty", "period must be a whole number, not 'thirty'"),
    ],
)
def test_a_uri_an_app_could_read_two_ways_is_refused_saying_why(uri, message):
    with pytest.raises(ValidationError) as refused:
        parse_otpauth_uri(uri)
    assert message in refused.value.message and "GEZDGNBV" not in refused.value.message
