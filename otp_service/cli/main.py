"""Command line: `python -m otp_service serve|migrate|report|demo-data|…`: the parser and `main()`.

Each command lives in the module named for it (`serve`, `migrate`, `reports`, `clients`, `audit`, `users`, `webhooks`,
`demo`); what they share is in `common`. Configuration errors end the command with one line naming the
variable and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import ConfigError
from .audit import cmd_audit
from .clients import cmd_clients
from .common import ACTOR_HELP, Failed, fail
from .demo import cmd_demo_data
from .migrate import cmd_migrate
from .reports import REPORT_KINDS, cmd_report, cmd_scheduled_report, cmd_verify_report
from .serve import cmd_serve
from .tenants import add_parser as add_tenants
from .users import cmd_users
from .webhooks import cmd_webhooks

URL_HELP = "database URL (default: DATABASE_URL, else sqlite:///otp_service.db)"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; those whose default comes from elsewhere say so themselves."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the work failed (database unreachable, a report that failed, `audit verify` found
    a break, a checkpoint refused over rows that do not verify); 2 bad input or configuration (one line naming
    what is wrong); 3 (`report`, `scheduled-report`) the report was written but its audit records do not
    verify: it says ALTERED."""
    parser = argparse.ArgumentParser(
        prog="python -m otp_service",
        description="TOTP (RFC 6238) device registration and verification over HTTP, and its reports.",
        epilog="Configuration comes from environment variables (see the README's Configuration table).",
    )
    parser.add_argument("--version", action="version", version=f"otp-service {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    formatter = _Help

    p = sub.add_parser("serve", help="serve the HTTP API", formatter_class=formatter)
    p.add_argument("--processes", type=int, default=None, help="worker processes (default: WEB_CONCURRENCY, else 1)")
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds requests may finish after SIGTERM (default: SHUTDOWN_GRACE_SECONDS, else 20)",
    )
    p.add_argument("--migrate", action="store_true", help="apply pending migrations first (also in production)")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending database migrations", formatter_class=formatter)
    p.add_argument("--database-url", help=URL_HELP)
    p.set_defaults(run=cmd_migrate)

    p = sub.add_parser(
        "report",
        help="run a report notebook into HTML, CSV and PNG files (and the database)",
        formatter_class=formatter,
    )
    p.add_argument(
        "kind",
        choices=[*REPORT_KINDS, "user", "regenerate"],
        help="which report (regenerate: those an erasure withdrew)",
    )
    p.add_argument("--tenant", default="default", help="whose users, devices and audit records it covers")
    p.add_argument("--user-id", help="the user of a user report (their devices and whole audit trail)")
    p.add_argument(
        "--start", help="first day, YYYY-MM-DD (UTC); a user report without it starts at the user's first record"
    )
    p.add_argument("--end", help="last day, YYYY-MM-DD (UTC), included; a user report without it ends today")
    p.add_argument("--database-url", help=URL_HELP)
    p.add_argument("--output-dir", default="reports", help="folder for the HTML, notebook, CSV and PNG files")
    p.add_argument("--no-store", action="store_true", help="do not keep the report in the database")
    p.add_argument("--actor", help=ACTOR_HELP)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser(
        "scheduled-report", help="the report for the period that just ended (for cron jobs)", formatter_class=formatter
    )
    p.add_argument("kind", choices=REPORT_KINDS, help="which report")
    p.add_argument("--period", choices=["day", "month"], default="day", help="yesterday, or last calendar month")
    p.add_argument("--tenant", default="default", help="whose users, devices and audit records it covers")
    p.add_argument("--database-url", help=URL_HELP)
    p.add_argument("--output-dir", default="reports", help="folder for the HTML, notebook, CSV and PNG files")
    p.add_argument("--actor", help=ACTOR_HELP)
    p.set_defaults(run=cmd_scheduled_report)

    p = sub.add_parser(
        "verify-report",
        help="check a report's signed manifest and every file it lists (exit 1 if anything differs)",
        formatter_class=formatter,
    )
    p.add_argument("manifest", help="the report's .manifest.json, with its files (and .manifest.sig) beside it")
    p.add_argument("--signature", help="the signature file, if it is not the manifest's name with .sig")
    p.add_argument(
        "--public-key",
        action="append",
        metavar="KEY",
        help="a key to accept: a PEM file, or the base64 key from GET /api/v1/audit/keys "
        "(default: the keys this service verifies its checkpoints with)",
    )
    p.set_defaults(run=cmd_verify_report)

    p = sub.add_parser("clients", help="API clients: create, list, rotate, revoke", formatter_class=formatter)
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser("create", help="a new client; prints its key once", formatter_class=formatter)
    a.add_argument("name", help="1-64 of a-z 0-9 . _ -")
    a.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: verify, enroll, manage, read, reports, metrics, webhooks, admin (all of those), "
        "operator",
    )
    a.add_argument("--expires", help="last day the key works, YYYY-MM-DD (UTC); default: never")
    a.add_argument("--tenant", default="default", help="the tenant it acts in (operator: any, named by X-Tenant)")
    a = actions.add_parser("list", help="every client, its scopes and state", formatter_class=formatter)
    a = actions.add_parser(
        "rotate", help="a new key; the old one works for --grace-hours more", formatter_class=formatter
    )
    a.add_argument("name", help="the client")
    a.add_argument("--grace-hours", type=float, default=24.0, help="how long the previous key keeps working")
    a = actions.add_parser(
        "revoke", help="stop a client's key (within seconds, in every process)", formatter_class=formatter
    )
    a.add_argument("name", help="the client")
    for name, a in actions.choices.items():
        a.add_argument("--database-url", help=URL_HELP)
        if name != "list":
            a.add_argument("--actor", help=ACTOR_HELP)
    p.set_defaults(run=cmd_clients)

    p = sub.add_parser(
        "audit", help="the audit trail's integrity: verify, checkpoint, prune, keys", formatter_class=formatter
    )
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser(
        "verify", help="recompute the chains and signatures; exit 1 if anything was changed", formatter_class=formatter
    )
    a.add_argument("--start", help="only rows written from this day, YYYY-MM-DD (UTC)")
    a.add_argument("--end", help="only rows written up to this day, YYYY-MM-DD (UTC), included")
    a.add_argument("--json", action="store_true", help="the result as JSON")
    a.add_argument(
        "--expect",
        action="append",
        metavar="SHA256",
        help="a checkpoint you hold outside the database (its sha256, from the log or a report) that must be there",
    )
    a = actions.add_parser("checkpoint", help="sign the chains' heads now", formatter_class=formatter)
    a = actions.add_parser(
        "prune", help="export rows written before a day, then remove them (retention)", formatter_class=formatter
    )
    a.add_argument("--before", required=True, help="remove rows written before this day, YYYY-MM-DD (UTC)")
    a.add_argument("--export", required=True, help="folder for the CSV.gz export and its manifest")
    a = actions.add_parser(
        "keys", help="the public keys that verify checkpoints and report manifests", formatter_class=formatter
    )
    a.add_argument("--pem", action="store_true", help="the signing key's public half as PEM, for openssl")
    for name, a in actions.choices.items():
        a.add_argument("--database-url", help=URL_HELP)
        if name in ("checkpoint", "prune"):
            a.add_argument("--actor", help=ACTOR_HELP)
    p.set_defaults(run=cmd_audit)

    p = sub.add_parser("users", help="users: erase (GDPR art. 17)", formatter_class=formatter)
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser(
        "erase", help="delete a user's devices and recovery codes and their personal data", formatter_class=formatter
    )
    a.add_argument("user_id", help="the user")
    a.add_argument("--tenant", default="default", help="the tenant whose user it is")
    a.add_argument("--database-url", help=URL_HELP)
    a.add_argument("--actor", help=ACTOR_HELP)
    p.set_defaults(run=cmd_users)

    add_tenants(sub, formatter, URL_HELP)

    p = sub.add_parser("webhooks", help="webhooks: deliver (the delivery worker)", formatter_class=formatter)
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser(
        "deliver",
        help="send due webhook deliveries, retrying on the schedule, until SIGTERM (or once)",
        formatter_class=formatter,
    )
    a.add_argument("--once", action="store_true", help="deliver what is due now and exit (for cron and tests)")
    a.add_argument("--database-url", help=URL_HELP)
    p.set_defaults(run=cmd_webhooks)

    p = sub.add_parser("demo-data", help="fill a database with realistic synthetic history", formatter_class=formatter)
    p.add_argument("--devices", type=int, default=40, help="simulated devices (1-100000)")
    p.add_argument("--days", type=int, default=28, help="days of history (1-3650)")
    p.add_argument("--seed", type=int, default=7, help="random seed: the same seed gives the same history")
    p.add_argument("--end", default="2026-03-01", help="end of the simulated history, YYYY-MM-DD (UTC)")
    p.add_argument("--database-url", help=URL_HELP)
    p.set_defaults(run=cmd_demo_data)

    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except ConfigError as exc:
        return fail(f"configuration error: {exc}")
    except Failed as exc:
        return fail(exc.message, exc.code)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
