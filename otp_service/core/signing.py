"""Ed25519 signatures, as pure functions over `cryptography`: the keys that sign the audit trail's checkpoints
(AUDIT_SIGNING_KEY, a 32-byte seed in base64), their ids and public halves, signing a text and checking
which known keys signed it. No database, no clock: `audit.checkpoints` decides what is signed and when."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat


def key_bytes(text: str) -> bytes:
    """32 bytes written in base64, standard or URL-safe, padded or not (generated secrets come in both)."""
    text = text.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise ValueError("must be 32 bytes in base64") from None
    if len(raw) != 32:
        raise ValueError(f"must be 32 bytes in base64, got {len(raw)} bytes")
    return raw


def signing_key(seed: str) -> Ed25519PrivateKey:
    """AUDIT_SIGNING_KEY: the 32-byte Ed25519 seed, base64."""
    return Ed25519PrivateKey.from_private_bytes(key_bytes(seed))


def public_key(public: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(key_bytes(public))


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A key's default id: a short fingerprint of its public key."""
    return "ed25519:" + hashlib.sha256(base64.b64decode(public_b64(key))).hexdigest()[:16]


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The SHA-256 of the raw 32-byte public key, in hex, whole: what a reader compares with the key published
    outside the service (`audit keys`) — a 16-digit id is a name, not enough to tell a key from a look-alike."""
    return hashlib.sha256(base64.b64decode(public_b64(key))).hexdigest()


def public_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo): what `openssl pkeyutl -verify -pubin -inkey` reads."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def new_signing_seed() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode("ascii")


def sign(key: Ed25519PrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode("utf-8"))).decode("ascii")


def valid_signers(text: str, signatures: dict[str, str], keys: dict[str, Ed25519PublicKey]) -> list[str]:
    """The ids of the known keys whose signature on `text` is valid."""
    valid = []
    for key_id, signature in sorted(signatures.items()):
        key = keys.get(key_id)
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(signature), text.encode("utf-8"))
        except (InvalidSignature, ValueError):
            continue
        valid.append(key_id)
    return valid
