"""What an authenticator app is given at registration, made once from the key: the key in base64 and base32,
the otpauth URI (Google's Key Uri Format) and, when asked for, its QR code as a `data:` URI.

Made in the process (segno: pure Python, no network), so the key never leaves it but in the one registration
response.
"""

from __future__ import annotations

import base64
from typing import NamedTuple
from urllib.parse import quote, urlencode

import segno

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
