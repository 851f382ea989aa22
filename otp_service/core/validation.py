"""Parsing of client input into the values the domain works with, or a ValidationError naming the field.

Each parser accepts exactly the documented forms and nothing that merely looks like them
(Unicode digits, whitespace, signs, floats, booleans), because an authentication service
must not have two spellings of one code.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import InvalidActor, ValidationError
from .totp import ALGORITHMS, DIGITS_RANGE, INTERVAL_RANGE

DEVICE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}", re.ASCII)
ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)
MAX_USER_ID = 254
MAX_ISSUER = 64


def _fail(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field} {message}", details={"field": field})


def device_id(value: Any, field: str = "device_id") -> str:
    if not isinstance(value, str) or not DEVICE_ID.fullmatch(value):
        raise _fail(field, "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return value


def _printable(value: Any, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or not value.isprintable():
        raise _fail(field, f"must be 1-{max_length} printable characters with no control characters")
    return value


def normal_user_id(value: str) -> str:
    """The one spelling of a user id: Unicode NFKC, so that a full-width `Ａlice`, a decomposed `é` (e +
    combining accent) or a ligature is the same user as its plain spelling, wherever it comes from.
    Case is kept: user ids are the client application's own identifiers (often case-sensitive: base64 ids,
    Unix names), and folding them could merge two of its users into one. Letters of different scripts that
    look alike (Latin `a`, Cyrillic `а`) stay different users — the README says why apps should send ids,
    not what people typed."""
    return unicodedata.normalize("NFKC", value)


def user_id(value: Any) -> str:
    """A user id, in its one spelling (`normal_user_id`): every route and command reads ids through here."""
    if isinstance(value, str):
        value = normal_user_id(value)
    return _printable(value, "user_id", MAX_USER_ID)


MAX_ACTOR = 128


def actor(value: Any, field: str = "X-Actor") -> str:
    """The person or ticket behind an administrative request or command (`X-Actor`, `--actor`), as the audit
    trail records it beside the client: NFKC-normalised (one spelling of a name, as for user ids), 1-128
    printable characters — no control or format characters (a bidi override could make a row read as someone
    else's) and no surrounding spaces. Refused with INVALID_ACTOR, never trimmed into another name."""
    if isinstance(value, str):
        value = unicodedata.normalize("NFKC", value)
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_ACTOR
        or not value.isprintable()
        or value != value.strip()
        or not any(unicodedata.category(c)[0] in "LNPS" and c not in INVISIBLE for c in value)
        or _stacked_marks(value) > MAX_STACKED_MARKS
    ):
        raise InvalidActor(
            f"{field} must name a person or ticket in 1-{MAX_ACTOR} printable characters (UTF-8), at least one of "
            "them visible: no control or format characters (such as a bidi override), no blank fillers, no more "
            f"than {MAX_STACKED_MARKS} accents on one letter, and no leading or trailing spaces",
            details={"field": field},
        )
    return value


# Letters that show nothing (Hangul fillers, the blank Braille pattern): a name made of them reads as no one.
INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")
MAX_STACKED_MARKS = 3  # combining marks on one base: enough for any language, too few to smear over other text


def _stacked_marks(value: str) -> int:
    """The longest run of combining marks (Mn, Me) in `value`."""
    longest = run = 0
    for c in value:
        run = run + 1 if unicodedata.category(c) in ("Mn", "Me") else 0
        longest = max(longest, run)
    return longest


def issuer(value: Any) -> str | None:
    if value is None:
        return None
    value = _printable(value, "issuer", MAX_ISSUER)
    if ":" in value:
        raise _fail("issuer", "must not contain ':' (it separates issuer and account in an otpauth URI)")
    return value


def _whole_number(value: Any, field: str, allowed: range) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise _fail(field, f"must be a whole number from {allowed.start} to {allowed.stop - 1}")
    return value


def digits(value: Any) -> int:
    return _whole_number(value, "digits", DIGITS_RANGE)


def interval(value: Any) -> int:
    return _whole_number(value, "interval", INTERVAL_RANGE)


def algorithm(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in ALGORITHMS:
        raise _fail("algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    return value.upper()


def otp_syntax(value: Any, field: str = "otp") -> str | int:
    """The code as sent, before the device's digit count is known: a digit string or a non-negative int."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _fail(field, "must be a string of digits or a whole number")
    if isinstance(value, int):
        if not 0 <= value < 10 ** max(DIGITS_RANGE):
            raise _fail(field, "must be a non-negative number of at most 8 digits")
        return value
    if not ASCII_DIGITS.fullmatch(value) or len(value) > max(DIGITS_RANGE):
        raise _fail(field, "must be a string of 6 to 8 ASCII digits")
    return value


def required_otp(body: dict[str, Any], field: str) -> str | int:
    if field not in body:
        raise _fail(field, "is required")
    return otp_syntax(body[field], field)


def flag(value: Any, field: str) -> bool:
    """An optional JSON boolean (absent or null: false)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail(field, "must be true or false")
    return value


QR_FORMATS = ("svg", "png")


def qr_format(value: Any) -> str | None:
    if value is None:
        return None
    if value not in QR_FORMATS:
        raise _fail("qr", f"must be one of {', '.join(QR_FORMATS)}")
    return value


MAX_LOOKUP_RANGE = timedelta(days=7)
EARLIEST, LATEST = datetime(1970, 1, 1), datetime(9000, 1, 1)  # TOTP starts at the epoch


def timestamp(value: Any, field: str) -> datetime:
    """An ISO-8601 time with its offset (or Z), as naive UTC, the form the database keeps."""
    if not isinstance(value, str) or len(value) > 40:
        raise _fail(field, "must be an ISO-8601 time with a time zone, such as 2026-11-26T10:02:00Z")
    try:
        parsed = datetime.fromisoformat(value)
        utc = None if parsed.tzinfo is None else parsed.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        utc = None
    if utc is None:
        raise _fail(field, "must be an ISO-8601 time with a time zone, such as 2026-11-26T10:02:00Z")
    if not EARLIEST <= utc < LATEST:
        raise _fail(field, f"must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC)")
    return utc


def time_range(start: Any, end: Any, longest: timedelta) -> tuple[datetime, datetime]:
    """(from, to), `to` after `from` and at most `longest` later."""
    first, last = timestamp(start, "from"), timestamp(end, "to")
    if last <= first:
        raise _fail("to", "must be later than from")
    if last - first > longest:
        raise _fail("to", f"must be at most {longest.days} days after from")
    return first, last


def otp_for_device(value: str | int, device_digits: int) -> str:
    """The code in the device's canonical form: exactly `device_digits` ASCII digits.

    An integer is zero-padded, since clients that send JSON numbers lose leading zeros
    (the original client example sends int(012345) as 12345).
    """
    if isinstance(value, int):
        if value >= 10**device_digits:
            raise _fail("otp", f"has more than {device_digits} digits")
        return str(value).zfill(device_digits)
    if len(value) != device_digits:
        raise _fail("otp", f"must be exactly {device_digits} digits for this device")
    return value


PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX = 50, 200  # entries per page of a listing


def limit(value: str | None, default: int = PAGE_LIMIT_DEFAULT, maximum: int = PAGE_LIMIT_MAX) -> int:
    if value is None:
        return default
    if not ASCII_DIGITS.fullmatch(value) or not 1 <= int(value) <= maximum:
        raise _fail("limit", f"must be a whole number from 1 to {maximum}")
    return int(value)


def cursor(value: str | None) -> int | None:
    if value is None:
        return None
    if not ASCII_DIGITS.fullmatch(value) or len(value) > 18:
        raise _fail("before", "must be a cursor returned as next_before")
    return int(value)
