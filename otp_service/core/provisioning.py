"""What an authenticator app is given at registration, made once from the key: the key in base64 and base32,
the otpauth URI (Google's Key Uri Format) and, when asked for, its QR code as a `data:` URI.

Made in the process (segno: pure Python, no network), so the key never leaves it but in the one registration
response.
"""

from __future__ import annotations

import base64
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import segno

from . import validation
from .errors import ValidationError
from .transitions import DeviceState


class Provisioning(NamedTuple):
    derived_key: str  # standard base64
    secret_base32: str  # RFC 4648 base32 without padding, as authenticator apps take it
    otpauth_uri: str
    qr: str | None  # data: URI of the QR code, when asked for


def secret_base32(key: bytes) -> str:
    return base64.b32encode(key).decode("ascii").rstrip("=")


def otpauth_uri(secret: str, device: DeviceState) -> str:
    """The Key Uri Format that authenticator apps scan (label is issuer:account, both percent-encoded)."""
    label = quote(device.user_id, safe="@.")
    params = {"secret": secret}
    if device.issuer:
        label = f"{quote(device.issuer, safe='')}:{label}"
        params["issuer"] = device.issuer
    params.update(algorithm=device.algorithm, digits=str(device.digits), period=str(device.interval))
    return f"otpauth://totp/{label}?{urlencode(params, quote_via=quote)}"


def qr_data_uri(uri: str, kind: str) -> str:
    """The otpauth URI's QR code as a `data:` URI (SVG or PNG). Error correction M (15 %): a phone's camera
    reads it off a dim screen."""
    try:
        code = segno.make(uri, error="m", micro=False)
    except segno.DataOverflowError:
        raise ValidationError(
            "qr cannot be made: the otpauth URI is too long for a QR code (use a shorter user_id or issuer)",
            details={"field": "qr"},
        ) from None
    if kind == "svg":
        return code.svg_data_uri(scale=4, border=4)
    return code.png_data_uri(scale=6, border=4)


def provision(key: bytes, device: DeviceState, qr: str | None = None) -> Provisioning:
    """Everything the registration answer carries of the key; a QR code that cannot be made fails here,
    before anything is written."""
    secret = secret_base32(key)
    uri = otpauth_uri(secret, device)
    return Provisioning(
        base64.b64encode(key).decode("ascii"), secret, uri, None if qr is None else qr_data_uri(uri, qr)
    )


class OtpauthAccount(NamedTuple):
    """What an otpauth URI tells an app: the key as bytes (never to be shown), and what the app is asked for."""

    issuer: str | None
    account: str
    key: bytes
    secret_characters: int  # how many base32 characters the secret was written with
    algorithm: str
    digits: int
    interval: int
    ignored: tuple[str, ...]  # parameters the Key Uri Format does not define for TOTP (an app ignores them)


def _whole(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValidationError(f"otpauth_uri's {name} must be a whole number, not {value!r}", details={"field": name})
    return int(value)


def parse_otpauth_uri(uri: str) -> OtpauthAccount:
    """The inverse of `otpauth_uri`: the Key Uri Format's TOTP URI, read strictly — anything an app might read two
    ways (two `secret`s, an issuer in the label and another in the parameter) is refused, and the algorithm, digits
    and period go through the checks a registration would (ValidationError naming what is wrong)."""

    def refuse(message: str) -> ValidationError:
        return ValidationError(f"otpauth_uri {message}", details={"field": "otpauth_uri"})

    if not isinstance(uri, str) or not uri.strip():
        raise refuse("is empty: give an otpauth://totp/… URI")
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "otpauth":
        raise refuse(f"must start with otpauth:// (its scheme is {parts.scheme or 'missing'!r})")
    if parts.netloc.lower() != "totp":
        raise refuse(f"is of type {parts.netloc!r}, not totp: the service issues time-based codes")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in params:
            raise refuse(f"has two {name!r} parameters: apps may take either one")
        params[name] = value
    secret = params.pop("secret", "").replace(" ", "")
    if not secret:
        raise refuse("has no secret parameter")
    try:
        key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    except ValueError:  # binascii.Error is one
        raise refuse("secret is not base32 (RFC 4648: the letters A-Z and digits 2-7)") from None
    in_label, colon, account = parts.path.lstrip("/").partition(":")
    issuer, account = (unquote(in_label), unquote(account)) if colon else (None, unquote(in_label))
    issuer_param = params.pop("issuer", None)
    if issuer is not None and issuer_param is not None and issuer_param != issuer:
        raise refuse(f"label names issuer {issuer!r}, its issuer parameter {issuer_param!r}")
    try:
        algorithm = validation.algorithm(params.pop("algorithm", "SHA1"))
        digits = validation.digits(_whole(params.pop("digits", "6"), "digits"))
        interval = validation.interval(_whole(params.pop("period", "30"), "period"))
    except ValidationError as exc:
        raise refuse(f"asks for what the service would refuse: {exc}") from None
    return OtpauthAccount(
        issuer if issuer is not None else issuer_param,
        account,
        key,
        len(secret.rstrip("=")),
        algorithm,
        digits,
        interval,
        tuple(sorted(params)),
    )
