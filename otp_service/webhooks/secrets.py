"""An endpoint's signing secret, derived — like a device's key — from the master secret: HMAC-SHA256 of the
endpoint's random salt under a purpose key of the master secret's version. The database holds the salt and the
version, which sign nothing without the master secret; the secret is shown once, when it is made."""

from __future__ import annotations

import base64
import hmac
import secrets as random

from ..core.keys import Keyring

PURPOSE = "webhook-signing"
PREFIX = "whsec_"  # Standard Webhooks: the base64 of the key after this prefix


def new_salt() -> str:
    return random.token_hex(16)


def signing_key(keyring: Keyring, salt: str, version: int) -> bytes:
    """The 32-byte HMAC key (raises `KeyUnavailable` when that master secret version is gone)."""
    return hmac.digest(keyring.purpose_key(PURPOSE, version), bytes.fromhex(salt), "sha256")


def shown(key: bytes) -> str:
    """The secret as a receiver configures it (and `standardwebhooks.Webhook` takes it)."""
    return PREFIX + base64.b64encode(key).decode()
