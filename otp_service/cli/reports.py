"""`report` and `scheduled-report`: check the period and the user here, then run the notebook
(`reports.runner`); its failures come back as ReportError and end the command with exit code 1. A report
whose audit records do not verify is still written (it says ALTERED) and ends with `EXIT_ALTERED`. Every
report made is audited (`REPORT_GENERATED`, with `--actor` if given): it holds personal data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .. import __version__
from .common import actor_of, fail, service_for, settings_for, url_for
from .tenants import tenant_id_named

REPORT_KINDS = ["audit", "usage"]
EXIT_ALTERED = 3  # the report was written, and says its records were altered: a cron job must fail on it


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ..core.errors import ValidationError
    from ..core.validation import user_id
    from ..reports.runner import ReportError, parse_day, period, run_report, user_first_day

    url = url_for(args)
    settings = settings_for(args)  # the keys that verify the audit trail the report states
    by = actor_of(args)
    if args.kind == "regenerate":
        return _regenerate(args, url, settings, by)
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
        return fail(str(exc))
    try:
        if start is None:
            start = min(user_first_day(url, user, args.tenant) or end, end)
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
            tenant=args.tenant,
        )
    except ReportError as exc:
        return fail(str(exc), 1)
    with service_for(args) as service:
        with service.database.connection_context():
            tenant_id = tenant_id_named(args.tenant)
        ctx = _context(tenant_id, by)
        service.record_report_made(
            ctx, args.kind, start, end, report_id=result.report_id, subject=user, intact=result.intact
        )
    pdf = f", {result.pdf}" if result.pdf else ""
    print(f"wrote {result.html}{pdf} and {result.data_zip} (notebook {result.notebook}, files in {result.data_dir})")
    if result.manifest:
        print(f"signed manifest of its files: {result.manifest} (check: verify-report {result.manifest})")
    if result.pdf_problem:
        print(f"otp-service: no PDF: {result.pdf_problem}", file=sys.stderr)
    if result.report_id:
        print(f"stored as report {result.report_id}: GET /api/v1/reports/{result.report_id}")
    if result.intact is False:
        return fail("the audit records of the period do not verify: the report says ALTERED", EXIT_ALTERED)
    return 0


def _regenerate(args: argparse.Namespace, url: str, settings, by: str | None) -> int:
    """Make again every stored report an erasure withdrew (a cron job's work: see render.yaml)."""
    from ..reports.runner import ReportError, regenerate

    try:
        made = regenerate(url, Path(args.output_dir), settings, _generated_by("report regenerate"))
    except ReportError as exc:
        return fail(str(exc), 1)
    if made:
        with service_for(args) as service:  # each in its own tenant's trail
            service.record_reports_remade(_context(None, by), made)
    print(f"made again: {', '.join(f'report {n}' for n, _ in made)}" if made else "no report is withdrawn")
    altered = [n for n, intact in made if intact is False]
    if altered:  # made and stored all the same, saying ALTERED: like `report`, a cron job running it fails
        listed = ", ".join(f"report {n}" for n in altered)
        return fail(f"the audit records of {listed} do not verify: the report says ALTERED", EXIT_ALTERED)
    return 0


def _context(tenant_id: int | None, by: str | None):
    """Who made a report, as its audit row names them: the command line, and the person if `--actor` said (the
    tenant: whose data it covers; None: each report's own, `record_reports_remade`)."""
    from ..audit.rows import RequestContext
    from ..core.transitions import DEFAULT_TENANT

    return RequestContext(
        user_agent="otp-service report (command line)",
        actor="command-line",
        tenant_id=DEFAULT_TENANT if tenant_id is None else tenant_id,
        by=by,
    )


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


def cmd_verify_report(args: argparse.Namespace) -> int:
    """Check a report's signed manifest: the signature with the keys given (or the service's), then each file.
    Exit 0: every file is the one the service made; 1: something differs, is missing, or no key signed it."""
    from ..core import signing
    from ..reports.manifest import verify

    manifest = Path(args.manifest)
    if not manifest.is_file():
        return fail(f"there is no manifest at {manifest}")
    try:
        keys = _public_keys(args.public_key) if args.public_key else _service_keys(args)
    except ValueError as exc:
        return fail(f"--public-key: {exc}")
    try:
        result = verify(manifest, keys, Path(args.signature) if args.signature else None)
    except OSError as exc:  # the manifest or signature given is a folder, or cannot be read
        return fail(f"cannot read {exc.filename or manifest}: {exc.strerror or exc}", 1)
    for problem in result.problems:
        print(f"otp-service: {shown(problem)}", file=sys.stderr)
    if not result.valid:
        return fail(f"{shown(manifest.name)} does not verify: {len(result.problems)} problem(s)", 1)
    fingerprint = signing.fingerprint(keys[result.signer])
    print(f"verified: {result.checked} files as signed by {result.signer} (public-key SHA-256 {fingerprint})")
    # Which report: a genuine manifest of another tenant's, user's or period's report verifies too, so the
    # reader compares every field the signature covers with the report they asked for.
    for field in ("kind", "first_day", "last_day", "tenant", "user_id", "id", "created_at", "environment"):
        if field in result.report:
            print(f"  {field}: {shown(result.report[field])}")
    print(f"  audit records intact: {shown(result.report.get('audit_records_intact'))}")
    print(f"  generated by: {shown(result.report.get('generated_by', ''))}")
    if result.report.get("audit_records_intact") is False:
        print("note: the report itself says its audit records were ALTERED")
    return 0


def shown(value: object) -> str:
    """A value from a file someone else made, fit for a terminal: no escape sequence or line break of its own."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _public_keys(given: list[str]) -> dict:
    """Keys named on the command line: PEM files, or the base64 keys GET /api/v1/audit/keys lists."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from ..core import signing

    keys = {}
    for text in given:
        path = Path(text)
        if path.is_file():
            try:
                key = load_pem_public_key(path.read_bytes())
            except (ValueError, UnsupportedAlgorithm, OSError):
                raise ValueError(f"{text} is not a PEM public key") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{text} is not an Ed25519 key")
        else:
            key = signing.public_key(text)
        keys[signing.key_id(key)] = key
    return keys


def _service_keys(args: argparse.Namespace) -> dict:
    from ..audit.checkpoints import Keys

    return Keys.from_settings(settings_for(args)).public
