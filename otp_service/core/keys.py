"""Device keys derived from a master secret, so the database never holds a usable key.

A device key is HMAC-SHA256(master_secret[version], label || device_id || salt). The
database keeps the salt, the version and SHA-256(key): enough to re-derive the key and
to notice a wrong master secret, useless to anyone who steals the database alone.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transitions import DeviceState

log = logging.getLogger("otp_service.service")

KEY_LABEL = b"otp-service/device-key/v1\x00"
PURPOSE_LABEL = b"otp-service/purpose-key/v1\x00"
SALT_BYTES = 16
KEY_CACHE_SIZE = 4096  # derivation is two HMACs (~3 µs): a small cache for the devices in use now is enough


class KeyUnavailable(Exception):
    """The master secret for a device's key version is missing or is not the one it was registered with."""


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def derive_key(master_secret: bytes, device_id: str, salt: bytes) -> bytes:
    """Domain-separated derivation: the label keeps these keys apart from any other use of the secret,
    and the NUL after the device id stops ('ab', 'c…') and ('a', 'bc…') from colliding."""
    message = KEY_LABEL + device_id.encode("utf-8") + b"\x00" + salt
    return hmac.digest(master_secret, message, "sha256")


def key_fingerprint(key: bytes) -> str:
    """What the database stores: SHA-256 of the key, hex. One-way, and only used to detect a wrong master secret."""
    return hashlib.sha256(key).hexdigest()


class Keyring:
    """The master secrets by version: the current one signs new devices, older ones keep old devices working."""

    def __init__(self, secrets_by_version: dict[int, str], current_version: int):
        if current_version not in secrets_by_version:
            raise ValueError("the current version must have a secret")
        self._secrets = {v: s.encode("utf-8") for v, s in secrets_by_version.items()}
        self.current_version = current_version
        self._derive = lru_cache(maxsize=KEY_CACHE_SIZE)(self._derive_uncached)

    @property
    def versions(self) -> list[int]:
        return sorted(self._secrets)

    def new_device_key(self, device_id: str) -> tuple[bytes, bytes, int]:
        """A fresh (key, salt, version) for a registration under the current master secret."""
        salt = new_salt()
        return self._derive(self.current_version, device_id, salt), salt, self.current_version

    def device_key(self, device_id: str, salt: bytes, version: int, fingerprint: str) -> bytes:
        """Re-derive a device's key and prove it is the registered one, or raise KeyUnavailable."""
        key = self._derive(version, device_id, salt)
        if not hmac.compare_digest(key_fingerprint(key), fingerprint):
            raise KeyUnavailable(f"master secret version {version} does not match the key registered for this device")
        return key

    def key_of(self, state: DeviceState) -> bytes | None:
        """The device's key, or None (logged) when its master secret is missing or not the registered one: a
        rule then refuses with KEY_UNAVAILABLE instead of checking a code against the wrong key."""
        try:
            return self.device_key(
                state.device_id, bytes.fromhex(state.salt), state.key_version, state.derived_key_hash
            )
        except KeyUnavailable as exc:
            log.error("cannot derive the key of device %s: %s", state.device_id, exc)
            return None

    def purpose_key_or_none(self, purpose: str, version: int) -> bytes | None:
        """`purpose_key`, or None (logged) when that master secret version is no longer configured."""
        try:
            return self.purpose_key(purpose, version)
        except KeyUnavailable:
            log.error("no master secret for %s of key version %s", purpose, version)
            return None

    def purpose_key(self, purpose: str, version: int | None = None) -> bytes:
        """A key for one other use of the master secret (e.g. "recovery-codes"), apart from every device
        key by its label. `version`: the master secret's version (default: the current one)."""
        secret = self._secrets.get(self.current_version if version is None else version)
        if secret is None:
            raise KeyUnavailable(f"no master secret configured for key version {version}")
        return hmac.digest(secret, PURPOSE_LABEL + purpose.encode("utf-8"), "sha256")

    def _derive_uncached(self, version: int, device_id: str, salt: bytes) -> bytes:
        secret = self._secrets.get(version)
        if secret is None:
            raise KeyUnavailable(f"no master secret configured for key version {version}")
        return derive_key(secret, device_id, salt)
