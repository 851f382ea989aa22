"""A report's signed manifest: what files the service made for a report (the HTML page, the PDF, the zip of
tables and every file inside it, among them the raw audit events), each with its SHA-256 and size, and what the
report says of itself (kind, period, tenant, whether its audit records verified), signed with the audit key
(Ed25519, the key that signs the trail's checkpoints).

So an auditor handed the files — from the `report` command's folder, or downloaded from the API — can tell
they are the ones the service made, unchanged, with nothing but the public key: `python -m otp_service
verify-report X.manifest.json`, or OpenSSL for the signature and any SHA-256 tool for the files (README,
"Verifying a report"). The signature is over the manifest file's exact bytes, raw (64 bytes, `.sig`), as
`openssl pkeyutl -verify -rawin` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..core import signing

FORMAT = "otp-service report manifest v1"
SUFFIX, SIGNATURE_SUFFIX = ".manifest.json", ".manifest.sig"
MEMBER = "/"  # a file inside the zip is listed as "<zip name>/<member name>"


def file_entry(content: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}


def describe_files(files: Iterable[tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    """Every file by name with its SHA-256 and size; a zip's members too, each under the zip's name, so the
    raw events are vouched for one by one, not only inside an archive a tool may rewrite."""
    listed: dict[str, dict[str, Any]] = {}
    for name, content in files:
        listed[name] = file_entry(content)
        if name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                for member in sorted(archive.namelist()):
                    listed[f"{name}{MEMBER}{member}"] = file_entry(archive.read(member))
    return listed


def manifest_text(report: dict[str, Any], files: dict[str, dict[str, Any]], key: Ed25519PrivateKey, key_id: str) -> str:
    """The manifest as the file holds it and the signature covers it: indented JSON with sorted keys, so a
    person can read it and it comes out the same for the same report."""
    body = {
        "format": FORMAT,
        "report": report,
        "files": files,
        "signed_by": {"key_id": key_id, "public_key_sha256": signing.fingerprint(key)},
    }
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def sign(key: Ed25519PrivateKey, text: str) -> bytes:
    """The raw 64-byte Ed25519 signature of the manifest's bytes (what `openssl pkeyutl -sigfile` reads)."""
    return key.sign(text.encode("utf-8"))


@dataclass
class ManifestCheck:
    """What verifying a manifest found: the key that signed it (None: no known key did), and each problem."""

    signer: str | None
    report: dict[str, Any] = field(default_factory=dict)
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.signer is not None and not self.problems


def check_signature(text: bytes, signature: bytes, keys: dict[str, Ed25519PublicKey]) -> str | None:
    """The id of the known key whose signature this is, or None."""
    for name, key in sorted(keys.items()):
        try:
            key.verify(signature, text)
        except (InvalidSignature, ValueError):
            continue
        return name
    return None


def verify(manifest: Path, keys: dict[str, Ed25519PublicKey], signature: Path | None = None) -> ManifestCheck:
    """Check the manifest's signature with the known keys, then every file it lists, found beside it (a zip's
    members inside that zip). A file that is missing is a problem, as is one that differs; the PDF may be
    absent only if the manifest does not list it (a report made where WeasyPrint could not run)."""
    text = manifest.read_bytes()
    signature = signature or manifest.with_name(manifest.name.removesuffix(SUFFIX) + SIGNATURE_SUFFIX)
    try:
        signed = signature.read_bytes()
    except FileNotFoundError:
        return ManifestCheck(None, problems=[f"no signature: {signature} is missing"])
    signer = check_signature(text, signed, keys)
    if signer is None:  # nothing in an unsigned manifest is read, listed or shown: it is anyone's text
        tried = ", ".join(sorted(keys)) or "none"
        return ManifestCheck(None, problems=[f"the signature is not valid for any key accepted here ({tried})"])
    try:
        body = json.loads(text)
    except ValueError:
        return ManifestCheck(signer, problems=[f"{manifest.name} is not a manifest (not JSON)"])
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("files"), dict):
        return ManifestCheck(signer, problems=[f"{manifest.name} is not a {FORMAT!r}"])
    result = ManifestCheck(signer, body.get("report") if isinstance(body.get("report"), dict) else {})
    archives: dict[str, zipfile.ZipFile | None] = {}
    for name, expected in sorted(body["files"].items()):
        content = _content(manifest.parent, name, archives)
        if content is None:
            result.problems.append(f"{name}: missing or unreadable")
        elif file_entry(content) != expected:
            result.problems.append(f"{name}: differs (SHA-256 {hashlib.sha256(content).hexdigest()})")
        result.checked += 1
    return result


def _content(folder: Path, name: str, archives: dict[str, zipfile.ZipFile | None]) -> bytes | None:
    outer, _, member = name.partition(MEMBER)
    if not member:
        path = folder / outer
        try:
            return path.read_bytes() if path.is_file() and path.parent == folder else None
        except OSError:
            return None
    if outer not in archives:
        path = folder / outer
        try:
            archives[outer] = zipfile.ZipFile(path) if path.is_file() and path.parent == folder else None
        except (zipfile.BadZipFile, OSError, EOFError):
            archives[outer] = None
    archive = archives[outer]
    try:
        return None if archive is None else archive.read(member)
    except (KeyError, zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, OSError):
        return None  # not there, or not readable as it was written (a bad CRC, a method or flag set by hand)


def signed_manifest(
    key: Ed25519PrivateKey, key_id: str, report: dict[str, Any], files: Iterable[tuple[str, bytes]]
) -> tuple[str, bytes]:
    """The manifest of `files` (name, content) for `report`, and its signature."""
    text = manifest_text(report, describe_files(files), key, key_id)
    return text, sign(key, text)
