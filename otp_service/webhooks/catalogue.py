"""The events a webhook endpoint can take, which audit row each comes from, and the body it is sent as.

Pure: `event_type` reads an audit row (AUDIT_COLUMNS order) and says which event, if any, it is; `body` makes
the JSON a receiver gets from a queued message. Both the SQL path (`store.APPLY`) and the Python path
(`outbox.enqueue`) ask `event_type`, so the mapping lives here once. A body carries what the audit row holds —
never a secret, a code or an API key (no audit row holds one) — and the user only as the row names them now:
after an erasure, by pseudonym (`subject`) alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..core.actions import Action
from ..core.transitions import isoformat

# (action, success, reason) → event type; a reason of None matches any reason not listed for that action
_BY_ROW: dict[tuple[str, bool, str | None], str] = {
    (Action.DEVICE_REGISTERED, True, None): "device.registered",
    (Action.DEVICE_CONFIRMED, True, None): "device.confirmed",
    (Action.DEVICE_LOCKED, True, None): "device.locked",
    (Action.DEVICE_LOCKED, True, "HARD_LOCK"): "device.hard_locked",
    (Action.DEVICE_UNLOCKED, True, None): "device.unlocked",
    (Action.DEVICE_DEACTIVATED, True, None): "device.deactivated",
    (Action.DEVICE_RESYNCED, True, None): "device.resynced",
    (Action.ENROLLMENT_EXPIRED, True, None): "device.enrollment_expired",
    (Action.RECOVERY_CODES_ISSUED, True, None): "recovery_codes.issued",
    (Action.RECOVERY_CODE_VERIFICATION, True, None): "recovery_code.used",
    (Action.RECOVERY_CODES_LOCKED, True, None): "recovery_codes.locked",
    (Action.USER_ERASED, True, None): "user.erased",
    (Action.CLIENT_CREATED, True, None): "client.created",
    (Action.CLIENT_ROTATED, True, None): "client.rotated",
    (Action.CLIENT_REVOKED, True, None): "client.revoked",
    (Action.AUDIT_VERIFIED, False, None): "audit.verification_failed",
}
EVENT_TYPES = tuple(sorted(set(_BY_ROW.values())))
DESCRIPTIONS = {
    "device.registered": "a device was enrolled for a user (pending until confirmed, if confirmation is asked)",
    "device.confirmed": "a pending enrolment's first code was accepted: the device is active",
    "device.locked": "too many wrong codes: the device is locked for a while",
    "device.hard_locked": "the hard limit of wrong codes: locked until an operator unlocks it",
    "device.unlocked": "an operator unlocked the device",
    "device.deactivated": "the device was deactivated",
    "device.resynced": "two consecutive codes set the device's clock offset",
    "device.enrollment_expired": "an enrolment was not confirmed in time",
    "recovery_codes.issued": "a new set of recovery codes replaced the user's old ones",
    "recovery_code.used": "one of the user's recovery codes was used",
    "recovery_codes.locked": "too many wrong recovery codes: the user's codes are locked",
    "user.erased": "a user's personal data was erased (GDPR art. 17); the user is named by pseudonym only",
    "client.created": "an API client was created",
    "client.rotated": "an API client's key was rotated",
    "client.revoked": "an API client was revoked",
    "audit.verification_failed": "a verification of the audit trail found it broken",
}
assert set(DESCRIPTIONS) == set(EVENT_TYPES)
_ACTION, _SUCCESS, _REASON = 1, 2, 3
MAX_BODY_BYTES = 64 * 1024  # a body is made of bounded audit columns; this is the bound a receiver can rely on


def event_type(row: Sequence[Any]) -> str | None:
    """The event an audit row (AUDIT_COLUMNS order) is, or None (most rows are none: a verification is not)."""
    action, success, reason = row[_ACTION], bool(row[_SUCCESS]), row[_REASON]
    return _BY_ROW.get((action, success, reason)) or _BY_ROW.get((action, success, None))


def normal_types(types: Sequence[str] | None) -> str | None:
    """An endpoint's filter as stored: ",a,b," (sorted, so `x` matches where ",x," occurs), or None for all.
    Raises ValueError naming an unknown type."""
    if types is None:
        return None
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown event type(s): {', '.join(unknown)}")
    if not types:
        raise ValueError("give at least one event type, or leave event_types out for all of them")
    return "," + ",".join(sorted(set(types))) + ","


def stored_types(stored: str | None) -> list[str] | None:
    """The filter as a list (None: every event)."""
    return None if stored is None else [t for t in stored.split(",") if t]


def body(
    message_id: int,
    event_type: str,
    occurred_at: datetime,
    tenant_id: int,
    device_id: str | None,
    user_id: str | None,
    subject: str | None,
    actor: str | None,
    request_id: str | None,
    reason: str | None,
    data: str | None,
) -> bytes:
    """The JSON a receiver gets: Standard Webhooks' {type, timestamp, data}, with the message's own id in data."""
    details = json.loads(data) if data else {}
    payload = {
        "type": event_type,
        "timestamp": isoformat(occurred_at),
        "data": {
            "message_id": message_ref(message_id),
            "tenant_id": tenant_id,
            "device_id": device_id,
            "user_id": user_id,
            "subject": subject or details.get("subject"),  # user.erased: its row names the erased pseudonym
            "client": actor,
            "request_id": request_id,
            "reason": reason,
            "details": details,
        },
    }
    encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if len(encoded) > MAX_BODY_BYTES:  # cannot happen with today's columns; a receiver still gets a bounded body
        payload["data"]["details"] = {"truncated": True}
        encoded = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return encoded


def message_ref(message_id: int) -> str:
    """The `webhook-id` of a message: stable across its retries and replays."""
    return f"msg_{message_id}"
