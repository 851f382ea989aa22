"""Command line: `python -m otp_service serve|migrate|report|demo-data`.

Configuration errors end the command with one line naming the variable and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from .. import __version__
from ..config import ConfigError, Settings, database_url, environment, read

DEV_SECRETS_FILE = Path(".dev-secrets")
DEV_SECRETS = ("MASTER_SECRET", "API_KEY", "AUDIT_SIGNING_KEY")  # 32 random bytes each (URL-safe base64)


def _dev_environment() -> dict[str, str]:
    """The environment, plus development secrets kept in .dev-secrets so devices survive a restart.

    Production never reads or writes the file: there the secrets must come from the environment.
    """
    env = dict(os.environ)
    if environment(env) == "production":
        return env
    stored: dict[str, str] = {}
    if DEV_SECRETS_FILE.exists():
        for line in DEV_SECRETS_FILE.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                stored[name.strip()] = value.strip()
    fresh = {name: stored.get(name) or secrets.token_urlsafe(32) for name in DEV_SECRETS}
    if fresh != {k: stored.get(k) for k in fresh}:
        # Created readable by its owner only (not written first and restricted after).
        descriptor = os.open(DEV_SECRETS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("".join(f"{k}={v}\n" for k, v in fresh.items()))
        DEV_SECRETS_FILE.chmod(0o600)  # a file left from an older version may have been created wider
    for name, value in fresh.items():
        if not env.get(name):
            env[name] = value
    return env


def load_settings(dev_secrets: bool = True) -> Settings:
    return Settings.from_env(_dev_environment() if dev_secrets else None)


def _fail(message: str, code: int = 2) -> int:
    """One line on stderr (a driver's message may span several) and the exit code."""
    print(f"otp-service: {' '.join(message.split())}", file=sys.stderr)
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..db.database import UNAVAILABLE_ERRORS, migrate, open_database

    try:
        database = open_database(_database_url(args), 1, read(os.environ, ["DB_TIMEOUT"])["db_timeout"])
        applied = migrate(database)
    except UNAVAILABLE_ERRORS as exc:
        return _fail(f"cannot reach the database: {exc}".strip(), 1)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def _prepare_multiprocess_metrics(processes: int) -> str | None:
    """Several processes share metrics through files; the folder must be set (and empty) before
    prometheus_client is first imported, and its files from an earlier run must go. Returns the folder
    when this process made it (and so removes it when it is done)."""
    if processes <= 1:
        return None
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = given or tempfile.mkdtemp(prefix="otp-metrics-")
    Path(folder).mkdir(parents=True, exist_ok=True)
    for stale in Path(folder).glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return None if given else folder


def cmd_serve(args: argparse.Namespace) -> int:
    defaults = read(os.environ, ["WEB_CONCURRENCY", "SHUTDOWN_GRACE_SECONDS"])
    if args.processes is None:
        args.processes = defaults["web_concurrency"]
    if args.grace is None:
        args.grace = defaults["shutdown_grace_seconds"]
    if args.processes < 1:
        return _fail("--processes (or WEB_CONCURRENCY) must be at least 1")
    made = _prepare_multiprocess_metrics(args.processes)
    try:
        return _serve(args)
    finally:
        if made and os.getpid() == _MAIN_PID:  # forked workers return through here too
            shutil.rmtree(made, ignore_errors=True)


_MAIN_PID = os.getpid()


def _serve(args: argparse.Namespace) -> int:
    from ..db.database import UNAVAILABLE_ERRORS, migrate, open_database, pending_migrations
    from ..http.logs import configure_logging
    from ..http.server import serve

    settings = load_settings()
    configure_logging(settings.log_level)
    problem = _cannot_listen(settings.host, settings.port)
    if problem:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {problem}", 1)
    try:
        database = open_database(settings.database_url, 1, settings.db_timeout)
        if settings.production and not args.migrate:
            pending = pending_migrations(database)
            if pending:
                return _fail(
                    f"the database schema is out of date ({', '.join(pending)} pending): "
                    "run `python -m otp_service migrate` first",
                    1,
                )
        else:
            migrate(database)
        database.close_all()
    except UNAVAILABLE_ERRORS as exc:
        return _fail(f"cannot reach the database: {exc}".strip(), 1)
    if not settings.production:
        _print_welcome(settings, key_from_environment=bool(os.environ.get("API_KEY", "").strip()))
    return serve(settings, processes=args.processes, grace_seconds=args.grace)


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the service could not bind its port (already in use, not allowed), or None: checked before the
    banner invites anyone to connect, and before any worker starts."""
    from tornado.netutil import bind_sockets

    try:
        for sock in bind_sockets(port, host):
            sock.close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _print_welcome(settings: Settings, key_from_environment: bool) -> None:
    """The development banner. A key the operator set in the environment is never printed (the banner may
    end up in a platform's logs); one generated into .dev-secrets is, so a newcomer can try the API."""
    base = f"http://{settings.host}:{settings.port}"
    if key_from_environment:
        key, where = "<your API_KEY>", "from the environment; not shown"
    else:
        key, where = settings.api_keys[0], f"development only; kept in {DEV_SECRETS_FILE}"
    print(
        f"""
otp-service {settings.environment} on {base}  (database: {masked_url(settings.database_url)})
  API key:  {key}   ({where})
  Try:      curl -s -X POST {base}/api/v1/devices/register -H 'Authorization: Bearer {key}' \\
              -H 'Content-Type: application/json' -d '{{"device_id": "DEVICE-123", "user_id": "user@example.com"}}'
""",
        flush=True,
    )


def masked_url(url: str) -> str:
    """A database URL fit to print: its password replaced by ***."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    return urlunparse(parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)))


def _with_url(args: argparse.Namespace) -> dict[str, str]:
    env = _dev_environment()
    if getattr(args, "database_url", None):
        env["DATABASE_URL"] = args.database_url
    return env


def _database_url(args: argparse.Namespace) -> str:
    """Commands that only touch the database (migrate, report) need no secrets, only its URL."""
    if args.database_url:
        try:
            return database_url(args.database_url)
        except ValueError as exc:
            raise ConfigError("--database-url", str(exc)) from None
    return read(os.environ, ["DATABASE_URL"])["database_url"]


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ..core.errors import ValidationError
    from ..core.validation import user_id
    from ..reports.runner import ReportError, parse_day, period, run_report, user_first_day

    url = _database_url(args)
    settings = Settings.from_env(_with_url(args))  # the keys that verify the audit trail the report states
    user = getattr(args, "user_id", None)
    try:
        if (args.kind == "user") != (user is not None):
            raise ReportError("--user-id is needed for a user report, and only there")
        if user is not None:
            user = user_id(user)
        elif not (args.start and args.end):
            raise ReportError(f"the {args.kind} report needs --start and --end")
        today = datetime.now(UTC).date()
        # A user report covers all the user's history unless told otherwise: from their first record to today.
        end = parse_day(args.end, "end") if args.end else today
        start = parse_day(args.start, "start") if args.start else None
        if start is not None:
            period(start, end)
    except (ReportError, ValidationError) as exc:  # bad input: the same exit code as every command's
        return _fail(str(exc))
    try:
        if start is None:
            start = min(user_first_day(url, user) or end, end)
        result = run_report(
            args.kind,
            start,
            end,
            url,
            Path(args.output_dir),
            store=not args.no_store,
            settings=settings,
            user_id=user,
            generated_by=getattr(args, "generated_by", None) or _generated_by("report"),
        )
    except ReportError as exc:
        return _fail(str(exc), 1)
    pdf = f", {result.pdf}" if result.pdf else ""
    print(f"wrote {result.html}{pdf} and {result.data_zip} (notebook {result.notebook}, files in {result.data_dir})")
    if result.pdf_problem:
        print(f"otp-service: no PDF: {result.pdf_problem}", file=sys.stderr)
    if result.report_id:
        print(f"stored as report {result.report_id}: GET /api/v1/reports/{result.report_id}")
    return 0


def _generated_by(command: str) -> str:
    """Who or what made a report, as the report says it: the command and the account it ran under."""
    import getpass
    import socket

    try:
        account = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name
        account = f"uid {os.getuid()}"
    return f"the `{command}` command (otp-service {__version__}), run by {account} on {socket.gethostname()}"


def cmd_scheduled_report(args: argparse.Namespace) -> int:
    """Yesterday (UTC) for --period day; last calendar month for --period month."""
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    if args.period == "day":
        start = end = today - timedelta(days=1)
    else:
        end = today.replace(day=1) - timedelta(days=1)
        start = end.replace(day=1)
    args.start, args.end, args.no_store = str(start), str(end), False
    args.generated_by = _generated_by(f"scheduled-report {args.kind} --period {args.period}")
    return cmd_report(args)


def _service_for(args: argparse.Namespace):
    """The service over the database `args` names (default DATABASE_URL), checked to be current; or a reason."""
    from ..db.database import open_database, pending_migrations
    from ..service import build_service

    settings = Settings.from_env(_with_url(args))
    database = open_database(settings.database_url, 2, settings.db_timeout)
    if pending_migrations(database):
        raise ConfigError("DATABASE_URL", "the schema is out of date: run `python -m otp_service migrate` first")
    return build_service(settings, database)


def cmd_audit(args: argparse.Namespace) -> int:
    """verify (exit 1 when a chain is broken), checkpoint, prune, keys."""
    import json as json_module
    from datetime import UTC, datetime

    from ..core.errors import AuditBroken, DatabaseUnavailable
    from ..core.period import end_of, start_of
    from ..db.database import UNAVAILABLE_ERRORS
    from ..reports.runner import ReportError, parse_day

    try:
        start = end = before = None
        if getattr(args, "start", None) is not None:
            start = start_of(parse_day(args.start, "start"))
        if getattr(args, "end", None) is not None:
            end = end_of(parse_day(args.end, "end"))  # the last day is included
        if start and end and end <= start:
            return _fail(f"--end must not be before --start, got {args.start} to {args.end}")
        if getattr(args, "before", None) is not None:
            before = start_of(parse_day(args.before, "before"))
            if not datetime(1970, 1, 2) <= before <= datetime.now(UTC).replace(tzinfo=None):
                return _fail(f"--before must be a day from 1970-01-02 to today, got {args.before}")
        for digest in getattr(args, "expect", None) or ():
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                return _fail(f"--expect must be a checkpoint's SHA-256 (64 hex digits), got {digest!r}")
    except (ReportError, OverflowError) as exc:
        return _fail(str(exc) if isinstance(exc, ReportError) else "--end is too far in the future")
    try:
        service = _service_for(args)
        if args.action == "keys":
            for key in service.audit_keys.listing():
                print(f"{key['key_id']}  {key['public_key']}{'  (signing)' if key['current'] else ''}")
            return 0
        if args.action == "checkpoint":
            print(f"checkpoint #{service.checkpoint('on-demand')} signed by {service.audit_keys.key_id}")
            return 0
        if args.action == "prune":
            if not args.export.strip():
                return _fail("--export must name a folder")
            manifest = service.prune_audit(before, Path(args.export))
            print(
                f"exported and removed {manifest['rows']} audit rows written before {args.before}: "
                f"{Path(args.export) / manifest['file']} (manifest beside it); signed checkpoint "
                f"#{manifest['checkpoint']['id']}"
            )
            return 0
        result = service.verify_audit(start, end, record=not (start or end), expected=tuple(args.expect or ()))
    except UNAVAILABLE_ERRORS + (DatabaseUnavailable,) as exc:
        return _fail(f"cannot reach the database: {exc}", 1)
    except AuditBroken as exc:
        return _fail(exc.message, 1)
    except OSError as exc:  # the export folder: not writable, not a folder, a file already there
        return _fail(f"cannot write the export: {exc.strerror or exc}: {exc.filename or args.export}", 1)
    if args.json:
        print(json_module.dumps(result.as_dict(), indent=2, default=str))
    else:
        print("\n".join(result.lines()))
    return 0 if result.intact else 1


def cmd_users(args: argparse.Namespace) -> int:
    """erase: a user's devices, recovery codes and the personal data in their audit rows (GDPR art. 17)."""
    from ..audit.rows import RequestContext
    from ..core.errors import DatabaseUnavailable, ValidationError
    from ..core.validation import user_id
    from ..db.database import UNAVAILABLE_ERRORS

    try:
        uid = user_id(args.user_id)
    except ValidationError as exc:
        return _fail(exc.message)
    try:
        service = _service_for(args)
        operator = RequestContext(user_agent="otp-service users (command line)", actor="command-line")
        erased = service.erase_user(uid, operator)
    except UNAVAILABLE_ERRORS + (DatabaseUnavailable,) as exc:
        return _fail(f"cannot reach the database: {exc}", 1)
    print(
        f"erased: {erased['devices']} device(s), {erased['recovery_codes']} recovery code set(s), personal data "
        f"removed from {erased['audit_rows']} audit row(s); audited as subject {erased['subject'][:16]}…"
    )
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ..core import errors
    from ..db.database import UNAVAILABLE_ERRORS, migrate, open_database
    from ..reports.demo import generate
    from ..reports.runner import ReportError, parse_day
    from ..service import build_service

    settings = Settings.from_env(_with_url(args))
    if not (1 <= args.devices <= 100_000 and 1 <= args.days <= 3650):
        return _fail("--devices must be 1-100000 and --days 1-3650")
    try:
        end = datetime.combine(parse_day(args.end, "end"), datetime.min.time(), UTC)
    except ReportError as exc:
        return _fail(str(exc))
    try:
        database = open_database(settings.database_url, 2, settings.db_timeout)
        migrate(database)
        service = build_service(settings, database)
        done = generate(service, devices=args.devices, days=args.days, seed=args.seed, end=end)
        service.checkpoint("on-demand")  # seal the history it wrote
    except UNAVAILABLE_ERRORS as exc:
        return _fail(f"cannot reach the database: {str(exc).strip()}", 1)
    except errors.DeviceExists:
        return _fail("the database already holds demo devices (DEMO-…); use an empty database", 1)
    print("demo data: " + ", ".join(f"{n} {kind}" for kind, n in sorted(done.items())))
    return 0


URL_HELP = "database URL (default: DATABASE_URL, else sqlite:///otp_service.db)"


def cmd_clients(args: argparse.Namespace) -> int:
    """Create, list, rotate and revoke API clients; every change is audited in its own transaction."""
    import time as clock
    from datetime import UTC, datetime, timedelta

    from ..db.database import UNAVAILABLE_ERRORS, open_database, pending_migrations
    from ..reports.runner import ReportError, parse_day
    from ..service import build_service, clients

    try:
        expires = None
        if getattr(args, "expires", None):
            last_day = parse_day(args.expires, "expires")  # the key works through that day (UTC)
            expires = datetime.combine(last_day + timedelta(days=1), datetime.min.time())
            if expires <= datetime.now(UTC).replace(tzinfo=None):
                return _fail(f"--expires must be a day in the future, got {args.expires}")
        scopes = clients.parse_scopes(args.scopes) if args.action == "create" else None
        grace = getattr(args, "grace_hours", 0.0)
        if not 0 <= grace <= 24 * 90:  # also refuses nan
            return _fail(f"--grace-hours must be between 0 and {24 * 90} (90 days), got {grace}")
        if args.action != "list":
            clients.check_name(args.name)
    except (ValueError, ReportError) as exc:
        return _fail(str(exc))
    try:
        settings = Settings.from_env(_with_url(args))
        database = open_database(settings.database_url, 1, settings.db_timeout)
        if pending_migrations(database):
            return _fail("the database schema is out of date: run `python -m otp_service migrate` first", 1)
        journal = build_service(settings, database).journal  # client changes are audited like the rest
        with database.connection_context(), database.atomic():
            now = clock.time()
            if args.action == "create":
                key = clients.create(journal, args.name, scopes, now, expires)
            elif args.action == "rotate":
                key = clients.rotate(journal, args.name, now, timedelta(hours=args.grace_hours))
            elif args.action == "revoke":
                clients.revoke(journal, args.name, now)
            else:
                rows = clients.listing()
    except ValueError as exc:
        return _fail(str(exc), 1)
    except UNAVAILABLE_ERRORS as exc:
        return _fail(f"cannot reach the database: {exc}", 1)
    if args.action in ("create", "rotate"):
        print(f"client {args.name}: its key, shown this once (only its SHA-256 is kept):\n{key}")
        if args.action == "rotate":
            print(f"the previous key keeps working for {args.grace_hours:g} hours")
    elif args.action == "revoke":
        print(f"client {args.name} revoked: its key stops working within seconds")
    else:
        print(
            f"{'NAME':<24} {'SCOPES':<32} {'STATE':<8} {'CREATED':<10} {'LAST USED':<16} {'LAST DAY':<10} OLD KEY UNTIL"
        )
        for row in rows:
            state = "revoked" if row["revoked_at"] else "active"
            last_day = row["expires_at"] and row["expires_at"] - timedelta(days=1)
            print(
                f"{row['name']:<24} {row['scopes']:<32} {state:<8} {_day(row['created_at']):<10} "
                f"{_minute(row['last_used_at']):<16} {_day(last_day):<10} {_minute(row['previous_key_until'])}"
            )
        print("(and the keys in API_KEY: every scope, as env or env-1, env-2…)")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; those whose default comes from elsewhere say so themselves."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


REPORT_KINDS = ["audit", "usage"]


def _day(value) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def _minute(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the work failed (database unreachable, a report that failed); 2 bad input or
    configuration (one line naming what is wrong)."""
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
    p.add_argument("kind", choices=[*REPORT_KINDS, "user"], help="which report")
    p.add_argument("--user-id", help="the user of a user report (their devices and whole audit trail)")
    p.add_argument(
        "--start", help="first day, YYYY-MM-DD (UTC); a user report without it starts at the user's first record"
    )
    p.add_argument("--end", help="last day, YYYY-MM-DD (UTC), included; a user report without it ends today")
    p.add_argument("--database-url", help=URL_HELP)
    p.add_argument("--output-dir", default="reports", help="folder for the HTML, notebook, CSV and PNG files")
    p.add_argument("--no-store", action="store_true", help="do not keep the report in the database")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser(
        "scheduled-report", help="the report for the period that just ended (for cron jobs)", formatter_class=formatter
    )
    p.add_argument("kind", choices=REPORT_KINDS, help="which report")
    p.add_argument("--period", choices=["day", "month"], default="day", help="yesterday, or last calendar month")
    p.add_argument("--database-url", help=URL_HELP)
    p.add_argument("--output-dir", default="reports", help="folder for the HTML, notebook, CSV and PNG files")
    p.set_defaults(run=cmd_scheduled_report)

    p = sub.add_parser("clients", help="API clients: create, list, rotate, revoke", formatter_class=formatter)
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser("create", help="a new client; prints its key once", formatter_class=formatter)
    a.add_argument("name", help="1-64 of a-z 0-9 . _ -")
    a.add_argument(
        "--scopes", required=True, help="comma-separated: verify, enroll, manage, read, reports, metrics, admin"
    )
    a.add_argument("--expires", help="last day the key works, YYYY-MM-DD (UTC); default: never")
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
    for a in actions.choices.values():
        a.add_argument("--database-url", help=URL_HELP)
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
    a = actions.add_parser("keys", help="the public keys that verify checkpoints", formatter_class=formatter)
    for a in actions.choices.values():
        a.add_argument("--database-url", help=URL_HELP)
    p.set_defaults(run=cmd_audit)

    p = sub.add_parser("users", help="users: erase (GDPR art. 17)", formatter_class=formatter)
    actions = p.add_subparsers(dest="action", required=True, title="actions", metavar="ACTION")
    a = actions.add_parser(
        "erase", help="delete a user's devices and recovery codes and their personal data", formatter_class=formatter
    )
    a.add_argument("user_id", help="the user")
    a.add_argument("--database-url", help=URL_HELP)
    p.set_defaults(run=cmd_users)

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
        return _fail(f"configuration error: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
