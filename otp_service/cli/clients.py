"""`clients`: create, list, rotate and revoke API clients (each with its own key and scopes)."""

from __future__ import annotations

import argparse
from datetime import date, datetime

from .common import actor_of, command_database, fail, settings_for
from .tenants import tenant_id_named


def cmd_clients(args: argparse.Namespace) -> int:
    """Create, list, rotate and revoke API clients; every change is audited in its own transaction."""
    import time as clock
    from datetime import UTC, timedelta

    from ..reports.runner import ReportError, parse_day
    from ..service import build_service, clients

    try:
        expires = None
        if getattr(args, "expires", None):
            last_day = parse_day(args.expires, "expires")  # the key works through that day (UTC)
            expires = datetime.combine(last_day + timedelta(days=1), datetime.min.time())
            if expires <= datetime.now(UTC).replace(tzinfo=None):
                return fail(f"--expires must be a day in the future, got {args.expires}")
        scopes = clients.parse_scopes(args.scopes) if args.action == "create" else None
        grace = getattr(args, "grace_hours", 0.0)
        if not 0 <= grace <= 24 * 90:  # also refuses nan
            return fail(f"--grace-hours must be between 0 and {24 * 90} (90 days), got {grace}")
        if args.action != "list":
            clients.check_name(args.name)
        by = actor_of(args)
    except (ValueError, ReportError) as exc:
        return fail(str(exc))
    try:
        settings = settings_for(args)  # a bad DATABASE_URL here is a ValueError too: exit code 1
        with command_database(settings.database_url, settings.db_timeout, schema="current") as database:
            journal = build_service(settings, database).journal  # client changes are audited like the rest
            with database.connection_context(), database.atomic():
                now = clock.time()
                if args.action == "create":
                    tenant_id = tenant_id_named(args.tenant)
                    key = clients.create(journal, args.name, scopes, now, expires, tenant_id, by)
                elif args.action == "rotate":
                    key = clients.rotate(journal, args.name, now, timedelta(hours=args.grace_hours), by)
                elif args.action == "revoke":
                    clients.revoke(journal, args.name, now, by)
                else:
                    rows = clients.listing()
    except ValueError as exc:
        return fail(str(exc), 1)
    if args.action in ("create", "rotate"):
        print(f"client {args.name}: its key, shown this once (only its SHA-256 is kept):\n{key}")
        if args.action == "rotate":
            print(f"the previous key keeps working for {args.grace_hours:g} hours")
    elif args.action == "revoke":
        print(f"client {args.name} revoked: its key stops working within seconds")
    else:
        print(
            f"{'TENANT':<16} {'NAME':<24} {'SCOPES':<32} {'STATE':<8} {'CREATED':<10} {'LAST USED':<16} "
            f"{'LAST DAY':<10} OLD KEY UNTIL"
        )
        for row in rows:
            state = "revoked" if row["revoked_at"] else "active"
            last_day = row["expires_at"] and row["expires_at"] - timedelta(days=1)
            print(
                f"{row['tenant']:<16} {row['name']:<24} {row['scopes']:<32} {state:<8} {_day(row['created_at']):<10} "
                f"{_minute(row['last_used_at']):<16} {_day(last_day):<10} {_minute(row['previous_key_until'])}"
            )
        print("(and the keys in API_KEY: every scope, as env or env-1, env-2…)")
    return 0


def _day(value: date | None) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def _minute(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"
