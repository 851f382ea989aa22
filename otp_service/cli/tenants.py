"""`tenants`: create them, list them, set a tenant's own policy (OTP_WINDOW=2 …) and rate limits. Every
change is audited in the tenant's trail, in the transaction that makes it."""

from __future__ import annotations

import argparse
import time

from .common import ACTOR_HELP, Failed, actor_of, command_database, fail, settings_for


def tenant_id_named(name: str) -> int:
    """The id of the tenant `name` (call with the database open): a command given an unknown tenant ends with
    exit code 2, naming it."""
    from ..db.models import Tenant

    found = Tenant.get_or_none(Tenant.name == name)
    if found is None:
        raise Failed(f"there is no tenant named {name!r}: see `python -m otp_service tenants list`", 2)
    return found.id


def cmd_tenants(args: argparse.Namespace) -> int:
    from ..core.tenants import check_name
    from ..service import build_service, tenants

    try:
        if args.action != "list":
            check_name(args.name)
        policy = dict(_pair(item) for item in getattr(args, "settings", None) or ())
    except ValueError as exc:
        return fail(str(exc))
    by = actor_of(args)
    settings = settings_for(args)
    try:
        with command_database(settings.database_url, settings.db_timeout, schema="current") as database:
            journal = build_service(settings, database).journal
            with database.connection_context(), database.atomic():
                if args.action == "create":
                    tenant_id = tenants.create(journal, args.name, time.time(), by)
                elif args.action == "set":
                    now = time.time()
                    tenant = tenants.configure(journal, settings, args.name, policy, args.rate_limits, now, by)
                else:
                    rows = tenants.listing()
    except ValueError as exc:
        return fail(str(exc), 1 if "exists" in str(exc) or "no tenant" in str(exc) else 2)
    if args.action == "create":
        print(f"tenant {args.name} created (id {tenant_id}); give it clients: clients create NAME --tenant {args.name}")
    elif args.action == "set":
        p, r = tenant.policy, tenant.registration
        print(
            f"tenant {args.name}: codes {r.digits} digits, {r.interval} s, {r.algorithm}; window ±{p.window}; "
            f"lock after {p.max_failures} wrong codes for {p.lockout_seconds} s, for good after "
            f"{p.hard_lock_failures}; confirmation {r.confirmation}; rate limits "
            f"{' '.join(f'{s}={v}' for s, v in tenant.rate_limits) or 'the service’s'}"
        )
    else:
        print(f"{'ID':<4} {'NAME':<24} {'CREATED':<10} POLICY / RATE LIMITS")
        for row in rows:
            own = " ".join(filter(None, (row["policy"], row["rate_limits"]))) or "the service's settings"
            print(f"{row['id']:<4} {row['name']:<24} {row['created_at']:%Y-%m-%d} {own}")
    return 0


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise ValueError(f"settings are VARIABLE=VALUE (e.g. OTP_WINDOW=2; an empty value clears it), got {item!r}")
    return name.strip().upper(), value.strip()


def add_parser(sub: argparse._SubParsersAction, formatter: type, url_help: str) -> None:
    p = sub.add_parser("tenants", help="tenants: create, list, set their policy", formatter_class=formatter)
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser("create", help="a new tenant (an application's own users and devices)")
    a.add_argument("name", help="1-64 of a-z 0-9 . _ -")
    actions.add_parser("list", help="every tenant and its own settings")
    a = actions.add_parser("set", help="a tenant's own policy and rate limits", formatter_class=formatter)
    a.add_argument("name", help="the tenant")
    a.add_argument(
        "settings",
        nargs="*",
        metavar="VARIABLE=VALUE",
        help="OTP_DIGITS, OTP_INTERVAL, OTP_ALGORITHM, OTP_WINDOW, OTP_MAX_DRIFT, OTP_MAX_FAILURES, "
        "OTP_LOCKOUT_SECONDS, OTP_HARD_LOCK_FAILURES, OTP_RESYNC_WINDOW, ENROLLMENT_CONFIRMATION (empty: clear)",
    )
    a.add_argument(
        "--rate-limits", help="what all the tenant's clients share, e.g. 'verify=6000/minute' (empty: clear)"
    )
    for name, a in actions.choices.items():
        a.add_argument("--database-url", help=url_help)
        if name != "list":
            a.add_argument("--actor", help=ACTOR_HELP)
    p.set_defaults(run=cmd_tenants)
