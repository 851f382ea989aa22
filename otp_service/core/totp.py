"""HOTP (RFC 4226) and TOTP (RFC 6238), as pure functions.

Each function mirrors a section of the RFCs so that the code can be read side by side
with them. Nothing here touches the clock, the database or a secret store: callers
pass the key and the time in, which is what makes the RFC vectors testable.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

ALGORITHMS = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
DIGITS_RANGE = range(6, 9)  # RFC 4226 §5.3 needs at least 6; 8 is the most a 31-bit value fills well.
INTERVAL_RANGE = range(15, 301)  # seconds per step this service accepts (RFC 6238 recommends 30)
_POW10 = [10**n for n in range(10)]


def counter_bytes(counter: int) -> bytes:
    """The moving factor C as the RFC's 8-byte big-endian string (RFC 4226 §5.1)."""
    return counter.to_bytes(8, "big")


def dynamic_truncate(hmac_result: bytes) -> int:
    """DT: take 4 bytes at the offset named by the low nibble of the last byte (RFC 4226 §5.3).

    The top bit is masked so the result is the same whether a platform reads it as
    signed or unsigned.
    """
    offset = hmac_result[-1] & 0x0F
    return int.from_bytes(hmac_result[offset : offset + 4], "big") & 0x7FFFFFFF


def hotp(key: bytes, counter: int, digits: int = 6, algorithm: str = "SHA1") -> str:
    """HOTP(K, C) = Truncate(HMAC(K, C)) mod 10^Digit, zero-padded (RFC 4226 §5.3)."""
    digest = hmac.digest(key, counter_bytes(counter), ALGORITHMS[algorithm])
    return str(dynamic_truncate(digest) % _POW10[digits]).zfill(digits)


def time_step(unix_time: float, interval: int = 30, t0: int = 0) -> int:
    """T = floor((Current Unix time - T0) / X) (RFC 6238 §4.2)."""
    return int((unix_time - t0) // interval)


def totp(key: bytes, unix_time: float, digits: int = 6, interval: int = 30, algorithm: str = "SHA1") -> str:
    """TOTP = HOTP(K, T) (RFC 6238 §4.2)."""
    return hotp(key, time_step(unix_time, interval), digits, algorithm)


def matching_steps(key: bytes, code: str, steps: Iterable[int], digits: int = 6, algorithm: str = "SHA1") -> list[int]:
    """Every step in `steps` whose code equals `code` (a string of `digits` ASCII digits).

    All candidates are computed and compared in constant time, with no early exit, so the
    response time does not reveal which step (if any) matched (RFC 6238 §5.2 allows a
    window; RFC 4226 §7.2 asks for a look-ahead without a timing oracle). The comparison is
    on the numbers as 4-byte strings, which is the same test as on the zero-padded digits.
    """
    name, modulus = ALGORITHMS[algorithm], _POW10[digits]
    wanted = int(code).to_bytes(4, "big")
    found = []
    for step in steps:
        value = dynamic_truncate(hmac.digest(key, step.to_bytes(8, "big"), name)) % modulus
        if hmac.compare_digest(value.to_bytes(4, "big"), wanted):
            found.append(step)
    return found
