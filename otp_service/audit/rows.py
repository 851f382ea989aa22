"""Who asked, and the audit row as every path writes it.

Every value is brought into the form and size its column holds here, before any statement sees it,
so no request can carry a value the database refuses (which, in a statement shared by a batch of
requests, would fail the others too).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..core.transitions import DEFAULT_TENANT, AuditEvent

USER_AGENT_MAX = 256  # the audit column's size
REQUEST_ID_MAX = 64
AUDIT_COLUMNS = (
    "timestamp",
    "action",
    "success",
    "reason",
    "device_id",
    "user_id",
    "ip_address",
    "user_agent",
    "request_id",
    "additional_data",
    "actor",
    "tenant_id",
)


@lru_cache(maxsize=4096)  # every request asks for its client's address, and clients come back
def normal_ip(value: str | None) -> str | None:
    """An IP address in its normal text form, or None: no IPv6 zone id ("fe80::1%eth0" is a client-chosen
    string of any length), no IPv4-mapped disguise of an IPv4 address."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


@dataclass(frozen=True)
class RequestContext:
    """Who is asking, as the audit trail records it: a normal IP address or None, the User-Agent cut to what
    its column holds (None when empty), a request id of at most 64 characters, the API client, and the person
    or ticket it acted for (`by`: X-Actor or --actor, already validated), which every row it writes records in
    its additional data (hashed into the chain like the rest) — not a column of its own."""

    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    actor: str | None = None  # the API client's name (None: the service itself, e.g. the CLI)
    tenant_id: int = DEFAULT_TENANT  # the tenant the request acts in: every row and state it touches is its
    by: str | None = None  # the person or ticket behind an administrative request (None: not said)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip_address", normal_ip(self.ip_address))
        object.__setattr__(self, "user_agent", (self.user_agent or None) and self.user_agent[:USER_AGENT_MAX])
        object.__setattr__(self, "request_id", (self.request_id or None) and self.request_id[:REQUEST_ID_MAX])


BY = "by"  # the key of the additional data that names the person behind a request (`RequestContext.by`)
SYSTEM = RequestContext(ip_address=None, user_agent="otp-service", request_id=None, actor="otp-service")


_COMPACT = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode  # made once: json.dumps makes one a call


def compact_json(data: dict[str, Any] | None) -> str | None:
    return None if not data else _COMPACT(data)


def audit_row(
    event: AuditEvent, at: datetime, device_id: str | None, user_id: str | None, ctx: RequestContext
) -> tuple:
    """The row, in AUDIT_COLUMNS order; the context's person (`by`) goes into the additional data."""
    data = event.data if ctx.by is None else {**(event.data or {}), BY: ctx.by}
    return (
        at,
        str(event.action),
        event.success,
        event.reason,
        device_id,
        user_id,
        ctx.ip_address,
        ctx.user_agent,
        ctx.request_id,
        compact_json(data),
        ctx.actor,
        ctx.tenant_id,
    )
