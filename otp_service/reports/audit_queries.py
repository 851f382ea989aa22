"""The audit report's figures (notebook 03): how verifications went, who failed most, refused requests,
deactivated devices still in use, what each API client and every administrator did (and for whom: X-Actor,
--actor), the API clients and their scopes, key versions.
The brute-force episodes are in `bursts`, the raw records in `events`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import pandas as pd
from peewee import SQL, Case, fn

from ..core.actions import Action
from ..db.models import ApiClient, AuditLog, Device
from . import sql
from .sql import VERIFY


def audit_totals(start: datetime, end: datetime) -> dict[str, int | float | None]:
    """The audit report's summary. A verification refused as `REPLAYED` is a double submit (a right code sent
    again, usually a second click): it is neither a success nor a guess, so the success rate leaves it out —
    accepted / (verifications - double submits); None when there was nothing to divide by."""
    count = sql.outcome_counts(sql.in_period(start, end))

    verifications, succeeded = count(VERIFY), count(VERIFY, True)
    wrong, replayed = count(VERIFY, False, "INVALID_CODE"), count(VERIFY, False, "REPLAYED")
    attempts = verifications - replayed
    devices_locked = (
        AuditLog.select(fn.COUNT(fn.DISTINCT(AuditLog.device_id)))
        .where(sql.in_period(start, end) & (AuditLog.action == Action.DEVICE_LOCKED))
        .scalar()
    )
    return {
        "registrations": count(Action.DEVICE_REGISTERED, True),
        "registrations_refused": count(Action.DEVICE_REGISTERED, False),
        "verifications": verifications,
        "verifications_succeeded": succeeded,
        "verifications_wrong_code": wrong,
        "verifications_double_submit": replayed,
        "verifications_refused_other": verifications - succeeded - wrong - replayed,
        "success_rate_percent": round(100.0 * succeeded / attempts, 2) if attempts else None,
        "locks": count(Action.DEVICE_LOCKED),
        "devices_locked": devices_locked,
        "unlocks": count(Action.DEVICE_UNLOCKED, True),
        "deactivations": count(Action.DEVICE_DEACTIVATED, True),
        "authentication_failures": _auth_failures(start, end),
        "rate_limit_hits": count(Action.RATE_LIMITED),
    }


def failures_by_reason(start: datetime, end: datetime) -> pd.DataFrame:
    """The period's refused verifications per reason (wrong code, double submit, device locked…), the most
    frequent first: why sign-ins failed."""
    query = (
        AuditLog.select(AuditLog.reason, fn.COUNT(AuditLog.id).alias("n"))
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success)
        .group_by(AuditLog.reason)
        .order_by(SQL("n").desc(), AuditLog.reason)
    )
    return sql.frame(query, ["reason", "failures"])


def daily_verifications(start: datetime, end: datetime) -> pd.DataFrame:
    """Per day: verifications accepted, refused for a wrong code, double submits (`REPLAYED`), and refused for
    another reason (device locked, deactivated, unknown…); every day of the period, with 0 where none."""
    day = sql.day(AuditLog.timestamp)

    def counted(condition):
        return fn.SUM(Case(None, [(condition, 1)], 0))

    query = (
        AuditLog.select(
            day.alias("day"),
            counted(AuditLog.success),
            counted(~AuditLog.success & (AuditLog.reason == "INVALID_CODE")),
            counted(~AuditLog.success & (AuditLog.reason == "REPLAYED")),
            counted(~AuditLog.success & ~AuditLog.reason.in_(["INVALID_CODE", "REPLAYED"])),
        )
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY))
        .group_by(day)
        .order_by(day)
    )
    columns = ["day", "accepted", "wrong code", "double submit", "refused otherwise"]
    frame = sql.frame(query, columns)
    days = sql.every_day(start, end)
    return (
        frame.set_index("day")
        .reindex(days, fill_value=0)
        .rename_axis("day")
        .reset_index()
        .astype({c: int for c in columns[1:]})
    )


def count_failing(column: str, start: datetime, end: datetime) -> int:
    """How many devices, users or client addresses had at least one failed verification: the "of how many"
    beside a top-ten list."""
    field = getattr(AuditLog, column)
    return (
        AuditLog.select(fn.COUNT(fn.DISTINCT(field)))
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success & field.is_null(False))
        .scalar()
    )


def _refusals():
    """How many refusals the rows stand for: one each, but a row of a window's repeated ones stands for as many
    as it says (`http.refusals`)."""
    return fn.SUM(fn.COALESCE(sql.json_field(AuditLog.additional_data, "repeated", "BIGINT"), 1))


def _auth_failures(start: datetime, end: datetime) -> int:
    where = sql.in_period(start, end) & (AuditLog.action == Action.AUTH_FAILED)
    return AuditLog.select(_refusals()).where(where).scalar() or 0


def refused_requests(start: datetime, end: datetime) -> pd.DataFrame:
    """Where requests refused before any device was looked at came from: a wrong or missing API key
    (`AUTH_FAILED`) and rate limiting (`RATE_LIMITED`), per client address, with the API client (if the key was
    known), how many, the user agents seen, and the first and last time. A scanner shows up here."""
    query = (
        AuditLog.select(
            AuditLog.ip_address,
            AuditLog.action,
            AuditLog.actor,
            _refusals().alias("n"),  # a row of repeated refusals counts them all
            fn.COUNT(fn.DISTINCT(AuditLog.user_agent)),
            fn.MIN(AuditLog.user_agent),
            fn.MIN(AuditLog.timestamp),
            fn.MAX(AuditLog.timestamp),
        )
        .where(sql.in_period(start, end) & AuditLog.action.in_([Action.AUTH_FAILED, Action.RATE_LIMITED]))
        .group_by(AuditLog.ip_address, AuditLog.action, AuditLog.actor)
        .order_by(SQL("n").desc(), AuditLog.ip_address, AuditLog.action)
    )
    frame = sql.frame(
        query, ["client address", "refused for", "client", "requests", "user agents", "a user agent", "first", "last"]
    )
    frame["refused for"] = frame["refused for"].map(
        {Action.AUTH_FAILED: "wrong or missing API key", Action.RATE_LIMITED: "rate limit"}
    )
    frame["client"] = frame["client"].fillna("(none)")
    frame["client address"] = frame["client address"].fillna("(not recorded)")
    return sql.stringify_times(frame, ["first", "last"])


def top_failing(column: str, start: datetime, end: datetime, limit: int = 10) -> pd.DataFrame:
    """The devices, users or client IPs with the most refused verifications (any reason), first and last."""
    field = getattr(AuditLog, column)
    query = (
        AuditLog.select(field, fn.COUNT(AuditLog.id).alias("n"), fn.MIN(AuditLog.timestamp), fn.MAX(AuditLog.timestamp))
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & ~AuditLog.success & field.is_null(False))
        .group_by(field)
        .order_by(SQL("n").desc(), field)
        .limit(limit)
    )
    frame = sql.frame(query, [column, "refused", "first", "last"])
    return sql.stringify_times(frame, ["first", "last"])


def _per_device():
    """Per device (and its user): how many rows, from how many client IPs, first and last."""
    return AuditLog.select(
        AuditLog.device_id,
        AuditLog.user_id,
        fn.COUNT(AuditLog.id).alias("n"),
        fn.COUNT(fn.DISTINCT(AuditLog.ip_address)),
        fn.MIN(AuditLog.timestamp),
        fn.MAX(AuditLog.timestamp),
    )


def inactive_device_attempts(start: datetime, end: datetime) -> pd.DataFrame:
    """Verifications of deactivated devices: a lost or stolen phone still being used, or a stale integration."""
    query = (
        _per_device()
        .where(sql.in_period(start, end) & (AuditLog.action == VERIFY) & (AuditLog.reason == "DEVICE_INACTIVE"))
        .group_by(AuditLog.device_id, AuditLog.user_id)
        .order_by(SQL("n").desc(), AuditLog.device_id)
    )
    frame = sql.frame(query, ["device_id", "user_id", "attempts", "client_ips", "first", "last"])
    return sql.stringify_times(frame, ["first", "last"])


NO_CLIENT = "(no client: unauthenticated)"


ADMIN_ACTIONS = (
    Action.DEVICE_DEACTIVATED,
    Action.DEVICE_UNLOCKED,
    Action.DRIFT_RESET,
    Action.CODE_LOOKUP,
    Action.USER_ERASED,
    Action.AUDIT_PRUNED,
    Action.ACCESS_DENIED,
    Action.CLIENT_CREATED,
    Action.CLIENT_ROTATED,
    Action.CLIENT_REVOKED,
    Action.TENANT_CHANGED,
    Action.REPORT_GENERATED,
    Action.REPORTS_LISTED,
    Action.REPORT_DOWNLOADED,
    Action.WEBHOOK_ENDPOINT_CREATED,
    Action.WEBHOOK_ENDPOINT_ROTATED,
    Action.WEBHOOK_ENDPOINT_DISABLED,
    Action.WEBHOOK_ENDPOINT_ENABLED,
    Action.WEBHOOK_ENDPOINT_DELETED,
    Action.WEBHOOK_DELIVERY_REPLAYED,
)


def actions_by_client(start: datetime, end: datetime) -> pd.DataFrame:
    """What each API client did (`actor`), action by action: who verifies, who registers, who administers."""
    ok = fn.SUM(Case(None, [(AuditLog.success, 1)], 0))
    query = (
        AuditLog.select(AuditLog.actor, AuditLog.action, fn.COUNT(AuditLog.id), ok)
        .where(sql.in_period(start, end))
        .group_by(AuditLog.actor, AuditLog.action)
        .order_by(AuditLog.actor, AuditLog.action)
    )
    frame = sql.frame(query, ["client", "action", "audit rows", "of which succeeded"])
    frame["client"] = frame["client"].fillna(NO_CLIENT)
    return frame


def admin_actions(start: datetime, end: datetime) -> pd.DataFrame:
    """Every administrative action, with the client that did it, the person or ticket it was done for (`by`:
    X-Actor, --actor; "(not said)" where none was named) and the device it touched: deactivations, unlocks,
    clock allowance resets, code look-ups, erasures, prunes of the audit trail, refusals for a missing scope,
    changes to the API clients and tenants, and every report made, listed or downloaded (reports hold personal
    data). The reason and details columns are left out when no row has one: an empty column says nothing."""
    query = (
        AuditLog.select(
            AuditLog.timestamp,
            AuditLog.actor,
            AuditLog.action,
            AuditLog.device_id,
            AuditLog.success,
            AuditLog.reason,
            AuditLog.additional_data,
        )
        .where(sql.in_period(start, end) & AuditLog.action.in_(ADMIN_ACTIONS))
        .order_by(AuditLog.id)
    )
    frame = sql.frame(query, ["time", "client", "action", "device_id", "success", "reason", "details"])
    frame["client"] = frame["client"].fillna(NO_CLIENT)
    facts = frame.pop("details").map(_facts)
    frame.insert(2, "person", [f.get("by") or NOT_SAID for f in facts])
    frame["result"] = frame.pop("success").map({True: "done", False: "refused"})  # 1 and 0 too
    frame["reason"] = frame.pop("reason").fillna("")
    frame["device_id"] = frame["device_id"].fillna("")
    frame["details"] = facts.map(_admin_details)
    said = [c for c in ("reason", "details") if len(frame) and not frame[c].astype(bool).any()]
    return sql.stringify_times(frame.drop(columns=said), ["time"])


NOT_SAID = "(not said)"


def _facts(data: str | None) -> dict:
    return json.loads(data) if isinstance(data, str) and data else {}  # pandas may hand over NaN for none


def _admin_details(facts: dict) -> str:
    """What an administrative action's audit data says, in words: which client, scopes, route, report."""
    parts = []
    if "report" in facts or "reports" in facts:
        parts.append(_report_details(facts))
    if "client" in facts:
        parts.append(f"client {facts['client']}")
    if "scopes" in facts:
        parts.append(f"scopes {facts['scopes']}")
    if "route" in facts:
        parts.append(f"{facts['route']} (needs {facts['scope']})" if "scope" in facts else facts["route"])
    if "failed_attempts" in facts:
        parts.append(f"{facts['failed_attempts']} failures still counted")
    if "tenant" in facts and "change" in facts:
        parts.append(f"tenant {facts['tenant']} {facts['change']}")
    if "endpoint" in facts:
        parts.append(_endpoint_details(facts))
    return "; ".join(parts)


def _endpoint_details(facts: dict) -> str:
    """A webhook endpoint's audit data in words: which endpoint (its URL without query), which events, what
    was replayed or cancelled."""
    types = facts.get("event_types")
    words = [f"webhook endpoint {facts['endpoint']} ({facts.get('url', '')})"]
    words.append("every event" if types is None else f"events {', '.join(types)}")
    if facts.get("replay") is not None:
        words.append(f"delivery {facts.get('delivery')} of {facts.get('message')} replayed as {facts['replay']}")
    if facts.get("cancelled"):
        words.append(f"{facts['cancelled']} pending deliveries cancelled")
    if facts.get("previous_valid_until"):
        words.append(f"previous secret signs until {facts['previous_valid_until']}")
    return ", ".join(words)


def _report_details(facts: dict) -> str:
    """A report's audit data in words: made (kind, days, stored id), listed (which ids) or fetched (which file)."""
    if "reports" in facts:
        listed = facts["reports"]
        return f"listed {len(listed)} report(s){': ' + ', '.join(map(str, listed)) if listed else ''}"
    report = f"report {facts['report']}" if facts.get("report") is not None else "a report kept on disk only"
    if "file" in facts:
        return f"{report} ({facts.get('kind')}), its {FILE_WORDS.get(facts['file'], facts['file'])}"
    made = f"{facts.get('kind')} report {facts.get('first_day')} to {facts.get('last_day')}, {report}"
    verified = {True: "records intact", False: "records ALTERED", None: "records not verified"}[facts.get("intact")]
    return f"{made}{' (made again)' if facts.get('regenerated') else ''}; {verified}"


FILE_WORDS = {"html": "HTML page", "data": "CSV zip", "pdf": "PDF"}
_ENV_KEY = re.compile(r"env(-[0-9]+)?")  # the keys in API_KEY (`service.clients.env_callers`)
_SERVICE = ("command-line", "otp-service", "metrics-token")  # names the service gives itself, not clients


def clients_and_scopes(start: datetime, end: datetime) -> pd.DataFrame:
    """Every API client of the tenant as it stood at the period's end — its scopes, when it was created, its
    state then (active, expired, revoked: since when), its key rotations (from the trail, or the last one the
    client table remembers), its last audit record up to the period's end and its records in the period — and
    any other client whose records are in the tenant's trail of the period (API_KEY's keys; an `operator` of another
    tenant). Created, rotated and revoked are as the client table has them now: a name revoked and given again
    shows its current incarnation (the trail's CLIENT_* rows, in the table above, hold the earlier ones)."""
    before_end = (AuditLog.timestamp < end) & sql.of_tenant(AuditLog)
    last_seen = dict(
        AuditLog.select(AuditLog.actor, fn.MAX(AuditLog.timestamp))
        .where(before_end & AuditLog.actor.is_null(False))
        .group_by(AuditLog.actor)
        .tuples()
    )
    in_period = dict(
        AuditLog.select(AuditLog.actor, fn.COUNT(AuditLog.id))
        .where(sql.in_period(start, end) & AuditLog.actor.is_null(False))
        .group_by(AuditLog.actor)
        .tuples()
    )
    named = sql.json_field(AuditLog.additional_data, "client", "TEXT")
    rotations = {
        name: (n, last)
        for name, n, last in AuditLog.select(named, fn.COUNT(AuditLog.id), fn.MAX(AuditLog.timestamp))
        .where(before_end & (AuditLog.action == Action.CLIENT_ROTATED))
        .group_by(named)
        .tuples()
    }
    rows, listed = [], set()
    for client in ApiClient.select().where(sql.of_tenant(ApiClient)).order_by(ApiClient.name):
        listed.add(client.name)
        rows.append(_client_row(client, end, rotations.get(client.name), last_seen, in_period))
    others = ApiClient.select().where(ApiClient.name.in_([a for a in in_period if a not in listed] or [""]))
    for client in others:  # another tenant's client that acted here (an operator, naming this tenant)
        listed.add(client.name)
        row = _client_row(client, end, rotations.get(client.name), last_seen, in_period)
        rows.append(row | {"client": f"{client.name} (of another tenant)"})
    for actor in sorted(set(in_period) - listed - set(_SERVICE)):
        env = _ENV_KEY.fullmatch(actor) is not None
        rows.append(
            {
                "client": actor,
                "scopes": "admin, operator (a key in API_KEY)" if env else "(unknown: not in the client table)",
                "created": "(configuration)" if env else "",
                "at the period's end": "configured" if env else "",
                "key rotations": "by changing API_KEY" if env else "",
                "last record": _time(last_seen.get(actor)),
                "records in the period": in_period.get(actor, 0),
            }
        )
    return pd.DataFrame(rows, columns=CLIENT_COLUMNS)


CLIENT_COLUMNS = [
    "client",
    "scopes",
    "created",
    "at the period's end",
    "key rotations",
    "last record",
    "records in the period",
]


def _client_row(client: ApiClient, end: datetime, rotated, last_seen: dict, in_period: dict) -> dict:
    created, revoked, expires = (_as_time(t) for t in (client.created_at, client.revoked_at, client.expires_at))
    if created >= end:
        state = f"not yet created (created {_time(created)})"
    elif revoked is not None and revoked < end:
        state = f"revoked {_time(revoked)}"
    elif expires is not None and expires <= end:
        state = f"expired {_time(expires)}"
    else:
        later = f"; revoked {_time(revoked)}, after the period" if revoked is not None else ""
        until = f", its key works until {expires - timedelta(days=1):%Y-%m-%d}" if expires is not None else ""
        state = f"active{until}{later}"
    if rotated:
        rotations = f"{rotated[0]}, the last {_time(_as_time(rotated[1]))}"
    elif client.previous_valid_until is not None and _as_time(client.previous_valid_until) < end:
        rotations = f"rotated; its old key worked until {_time(_as_time(client.previous_valid_until))}"
    else:
        rotations = "none"
    return {
        "client": client.name,
        "scopes": ", ".join(client.scopes.split(",")),
        "created": _time(created),
        "at the period's end": state,
        "key rotations": rotations,
        "last record": _time(last_seen.get(client.name)),
        "records in the period": in_period.get(client.name, 0),
    }


def _as_time(value) -> datetime | None:
    """A stored time as a datetime (SQLite hands text over)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _time(value) -> str:
    """A time to the second, UTC, as the report's other tables write it; "never" for none."""
    value = _as_time(value)
    return "never" if value is None else f"{value:%Y-%m-%dT%H:%M:%S}Z"


def key_versions() -> pd.DataFrame:
    """Devices (all, and active) by the master-secret version their key derives from, now: how far a rotation
    of the master secret has got."""
    active = fn.SUM(Case(None, [(Device.is_active, 1)], 0))
    query = (
        Device.select(Device.key_version, fn.COUNT(Device.device_id), active)
        .where(sql.of_tenant(Device))
        .group_by(Device.key_version)
        .order_by(Device.key_version)
    )
    return sql.frame(query, ["key_version", "devices", "active"])
