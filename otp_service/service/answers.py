"""Answers: a transition's verdict as the caller sees it — the response's data, or the error (status, stable
code, message) to raise — and the metrics each outcome counts. One function per command, written once for
every caller (HTTP, CLI, demo data, tests)."""

from __future__ import annotations

import logging
import math
from typing import Any, NoReturn

from .. import metrics
from ..core import errors
from ..core.provisioning import Provisioning
from ..core.transitions import Transition, isoformat

log = logging.getLogger("otp_service.service")


def registered(keys: Provisioning, transition: Transition) -> dict[str, Any]:
    """The key, once (with its QR code, made beforehand, when asked), or DEVICE_EXISTS."""
    created = transition.verdict == "REGISTERED"
    metrics.REGISTRATIONS.labels("created" if created else "conflict").inc()
    if not created:
        raise errors.DeviceExists(
            f"A device with id {transition.device_id!r} is already registered (active or pending)."
        )
    device = transition.after
    pending = device.pending_until is not None
    answer = {
        "device_id": device.device_id,
        "user_id": device.user_id,
        "derived_key": keys.derived_key,
        "secret_base32": keys.secret_base32,
        "otpauth_uri": keys.otpauth_uri,
        "digits": device.digits,
        "interval": device.interval,
        "algorithm": device.algorithm,
        "issuer": device.issuer,
        "key_version": device.key_version,
        "created_at": isoformat(device.created_at),
        "status": "pending" if pending else "active",
        "confirm_by": isoformat(device.pending_until),
    }
    if keys.qr is not None:
        answer["qr"] = keys.qr
    return answer


def verified(transition: Transition) -> dict[str, Any]:
    verdict, device_id = transition.verdict, transition.device_id
    if verdict == "ACCEPTED":
        metrics.VERIFICATIONS.labels("valid", "").inc()
        return {"device_id": device_id, "valid": True}
    if verdict in ("INVALID_CODE", "REPLAYED"):
        metrics.VERIFICATIONS.labels("invalid", verdict).inc()
        log.debug("verification failed", extra={"device_id": device_id, "reason": verdict})  # audited and counted
        return _failed(transition, {"device_id": device_id, "valid": False})
    metrics.VERIFICATIONS.labels("refused", verdict).inc()
    _refuse(transition)


def _failed(transition: Transition, answer: dict[str, Any]) -> dict[str, Any]:
    """A wrong (or replayed) code's answer: why, and whether this failure locked the device."""
    answer["reason"] = transition.verdict
    if transition.details:  # this failure locked it: the app can tell its user
        metrics.LOCKOUTS.inc()
        answer |= _lock_fields(transition.details)
    return answer


def _lock_fields(details: dict[str, Any]) -> dict[str, Any]:
    """What an answer says of a lock a failure caused: until when, or that only an operator lifts it."""
    if details.get("hard", False):
        return {"locked_until": None, "hard_locked": True}
    return {"locked_until": isoformat(details["locked_until"])}


def _refuse(transition: Transition) -> NoReturn:
    """The error for a code check refused before any code was looked at."""
    verdict, device_id = transition.verdict, transition.device_id
    if verdict == "MALFORMED_CODE":
        raise transition.details["error"]
    if verdict == "ENROLLMENT_EXPIRED":  # this request recorded the expiry
        metrics.ENROLLMENTS_EXPIRED.inc()
    if verdict == "DEVICE_LOCKED":
        raise _locked_error(
            errors.DeviceLocked,
            transition,
            "Too many failed attempts: the device is locked until an operator unlocks it.",
            "Too many failed attempts; the device is locked for {retry} more seconds.",
        )
    raise {
        "DEVICE_NOT_FOUND": errors.DeviceNotFound(f"No device with id {device_id!r}."),
        "DEVICE_INACTIVE": errors.DeviceInactive(f"Device {device_id!r} is deactivated."),
        "KEY_UNAVAILABLE": errors.KeyUnavailableError(
            "This device's key cannot be derived: the service's master secret is misconfigured."
        ),
        "DEVICE_PENDING": errors.DevicePending(
            f"Device {device_id!r} is awaiting confirmation: confirm it with its first code before verifying."
        ),
        "ALREADY_CONFIRMED": errors.AlreadyConfirmed(f"Device {device_id!r} is already confirmed."),
        "ENROLLMENT_EXPIRED": errors.EnrollmentExpired(
            f"The enrolment of device {device_id!r} was not confirmed in time; register it again."
        ),
    }[verdict]


def confirmed(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "CONFIRMED":
        metrics.CONFIRMATIONS.labels("confirmed").inc()
        return {"device_id": transition.device_id, "valid": True, "status": "active"}
    if transition.verdict in ("INVALID_CODE", "REPLAYED"):
        metrics.CONFIRMATIONS.labels("invalid").inc()
        return _failed(transition, {"device_id": transition.device_id, "valid": False, "status": "pending"})
    _refuse(transition)


def resynced(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "RESYNCED":
        metrics.RESYNCS.labels("resynced").inc()
        return {"device_id": transition.device_id, "resynced": True, "drift": transition.after.drift}
    if transition.verdict in ("INVALID_CODE", "REPLAYED"):
        metrics.RESYNCS.labels("failed").inc()
        return _failed(transition, {"device_id": transition.device_id, "resynced": False})
    _refuse(transition)


def drift_reset(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "DEVICE_NOT_FOUND":
        raise errors.DeviceNotFound(f"No device with id {transition.device_id!r}.")
    return {"device_id": transition.device_id, "drift": 0, "previous_drift": transition.before.drift}


def expired(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "EXPIRED":
        metrics.ENROLLMENTS_EXPIRED.inc()
    return {"device_id": transition.device_id, "expired": transition.verdict == "EXPIRED"}


def recovery_used(user_id: str, transition: Transition) -> dict[str, Any]:
    verdict = transition.verdict
    if verdict == "ACCEPTED":
        metrics.RECOVERY_CODES.labels("used").inc()
        return {"user_id": user_id, "valid": True, "remaining": transition.details["remaining"]}
    if verdict == "INVALID_CODE":
        metrics.RECOVERY_CODES.labels("invalid").inc()
        answer = {"user_id": user_id, "valid": False, "reason": verdict}
        return answer | (_lock_fields(transition.details) if transition.details else {})
    if verdict == "REPLAYED":
        metrics.RECOVERY_CODES.labels("replayed").inc()
        return {"user_id": user_id, "valid": False, "reason": verdict}
    if verdict == "NO_RECOVERY_CODES":
        raise errors.NoRecoveryCodes(f"User {user_id!r} has no recovery codes.")
    if verdict == "KEY_UNAVAILABLE":
        raise errors.KeyUnavailableError("The recovery codes' key cannot be derived: the master secret is missing.")
    raise _locked_error(
        errors.RecoveryCodesLocked,
        transition,
        "Too many wrong recovery codes: they are locked until an operator issues new ones.",
        "Too many wrong recovery codes; try again in {retry} seconds.",
    )


def _locked_error(
    error: type[errors.ServiceError], transition: Transition, hard_message: str, message: str
) -> errors.ServiceError:
    """A refusal while locked (a device, or a user's recovery codes): for good until an operator acts, or for
    `retry` more seconds (Retry-After)."""
    if transition.details.get("hard"):
        return error(hard_message, details={"locked_until": None, "hard_locked": True})
    locked_until = transition.details["locked_until"]
    retry = max(1, math.ceil((locked_until - transition.at).total_seconds()))
    return error(
        message.format(retry=retry),
        details={"locked_until": isoformat(locked_until), "retry_after": retry},
        headers={"Retry-After": str(retry)},
    )


def deactivated(transition: Transition) -> dict[str, Any]:
    """Idempotent: a second deactivation answers like the first, with the first one's time."""
    if transition.verdict == "DEVICE_NOT_FOUND":
        raise errors.DeviceNotFound(f"No device with id {transition.device_id!r}.")
    if transition.verdict == "DEACTIVATED":
        metrics.DEACTIVATIONS.inc()
    deactivated_at = transition.current.deactivated_at
    return {"device_id": transition.device_id, "is_active": False, "deactivated_at": isoformat(deactivated_at)}


def unlocked(transition: Transition) -> dict[str, Any]:
    if transition.verdict == "DEVICE_NOT_FOUND":
        raise errors.DeviceNotFound(f"No device with id {transition.device_id!r}.")
    metrics.UNLOCKS.inc()
    failed = transition.after.failed_attempts
    return {"device_id": transition.device_id, "failed_attempts": failed, "locked_until": None}
