"""The one glossary of the reason codes the service writes into an audit row's `reason` column, in words a
compliance reader understands. Every report that shows a reason takes its meaning from here (`meaning`,
`glossary`), so one code never reads two ways in two reports; `tests/reports/test_reasons.py` reads the
service's own source for every reason it writes and fails if one has no entry here.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from ..core.actions import ROUTE_SCOPES

REASONS: dict[str, str] = {
    # a code refused (verification, confirmation, resynchronisation, recovery code)
    "INVALID_CODE": "wrong code: not the device's (or the user's recovery) code; counts towards a lock",
    "REPLAYED": "double submit: a code already accepted, sent again; not a failed sign-in, not counted towards a lock",
    "DEVICE_LOCKED": "device locked after too many wrong codes: the code was not checked",
    "DEVICE_INACTIVE": "device deactivated: the code was not checked",
    "DEVICE_NOT_FOUND": "no such device (in this tenant)",
    "DEVICE_PENDING": "enrolment not yet confirmed: the device cannot sign in until its first code is typed",
    "ALREADY_CONFIRMED": "a confirmation sent for a device whose enrolment was already confirmed",
    "ENROLLMENT_EXPIRED": "enrolment expired: no right first code arrived in time; the device was never usable",
    "KEY_UNAVAILABLE": "the service could not derive the key to check the code (master-secret version missing)",
    "NO_RECOVERY_CODES": "the user has no recovery codes",
    "LOCKED": "the user's recovery codes are locked after too many wrong ones: the code was not checked",
    # a registration refused
    "DEVICE_EXISTS": "registration refused: an active or pending device already has this id",
    # why a lock was recorded
    "TOO_MANY_FAILURES": "locked for a while after too many wrong codes (longer each time)",
    "HARD_LOCK": "locked until an operator unlocks it: the hard limit of wrong codes was reached",
    # requests refused before any device was looked at
    "REPEATED": "more requests without a valid API key from one address, counted in one record (how many, "
    "first and last are in its details)",
    "INSUFFICIENT_SCOPE": "the API client's key lacks the permission (scope) the operation needs",
    # RATE_LIMITED: the limit that refused (an API client's or a tenant's: `CLIENT:<scope>`, `TENANT:<scope>`)
    "VERIFY": "rate limited: over the client address's limit for code checks",
    "DEFAULT": "rate limited: over the client address's request limit",
    "UNLOCK": "rate limited: over the limit of unlocks of one device",
    "CODE_LOOKUP": "rate limited: over the API client's limit of code look-ups",
    # a webhook endpoint disabled (WEBHOOK_ENDPOINT_DISABLED)
    "DISABLED": "a webhook endpoint was disabled through the API: no events are sent to it until it is enabled",
    "GONE": "a webhook endpoint was disabled because its receiver answered 410 Gone (it asked for no more events)",
    # the audit trail itself
    "BROKEN": "a verification of the audit trail found it altered (the findings are in the record's details)",
    "ALTERED": "a report was made over audit records that do not verify: the report says ALTERED, and lists why",
}

_LIMITS = {"CLIENT": "the API client's", "TENANT": "the tenant's"}


def _rate_limit(code: str) -> str | None:
    """A RATE_LIMITED row's reason names the limit that refused: `CLIENT:VERIFY` (the API client's limit for
    requests needing the verify scope), `TENANT:VERIFY` (the whole tenant's)."""
    whose, _, scope = code.partition(":")
    if whose in _LIMITS and scope.lower() in ROUTE_SCOPES:
        return f"rate limited: over {_LIMITS[whose]} limit for requests needing the {scope.lower()} permission"
    return None


def meaning(code: str | None) -> str:
    """What a reason code means, in words ("" for a row with no reason: a success)."""
    if not code:
        return ""
    return REASONS.get(code) or _rate_limit(code) or "a reason this version of the report does not describe"


def known(code: str) -> bool:
    """Whether the glossary describes `code` (for the test that every code the service writes has an entry)."""
    return code in REASONS or _rate_limit(code) is not None


def glossary(codes: Iterable[str | None]) -> pd.DataFrame:
    """The glossary's entries for the codes a page shows, sorted: printed once under the tables that use them."""
    shown = sorted({c for c in codes if c})
    return pd.DataFrame([(c, meaning(c)) for c in shown], columns=["reason code", "meaning"])
