"""`audit`: verify the trail's chains and signatures, sign a checkpoint, prune (export, then remove) old rows,
list the keys that verify checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import actor_of, fail, service_for, settings_for


def cmd_audit(args: argparse.Namespace) -> int:
    """verify (exit 1 when a chain is broken), checkpoint (exit 1, nothing signed, when the rows it would seal
    do not verify), prune (exit 1 on a trail that does not verify), keys."""
    import json as json_module
    from datetime import UTC, datetime

    from ..audit.chain import findings
    from ..audit.checkpoints import Unverified
    from ..core.errors import AuditBroken
    from ..core.period import end_of, start_of
    from ..reports.runner import ReportError, parse_day

    try:
        start = end = before = None
        if getattr(args, "start", None) is not None:
            start = start_of(parse_day(args.start, "start"))
        if getattr(args, "end", None) is not None:
            end = end_of(parse_day(args.end, "end"))  # the last day is included
        if start and end and end <= start:
            return fail(f"--end must not be before --start, got {args.start} to {args.end}")
        if getattr(args, "before", None) is not None:
            before = start_of(parse_day(args.before, "before"))
            if not datetime(1970, 1, 2) <= before <= datetime.now(UTC).replace(tzinfo=None):
                return fail(f"--before must be a day from 1970-01-02 to today, got {args.before}")
        for digest in getattr(args, "expect", None) or ():
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                return fail(f"--expect must be a checkpoint's SHA-256 (64 hex digits), got {digest!r}")
    except (ReportError, OverflowError) as exc:
        return fail(str(exc) if isinstance(exc, ReportError) else "--end is too far in the future")
    by = actor_of(args)
    if args.action == "keys":  # the keys are settings: no database is opened (nor made) to print them
        from ..audit.checkpoints import Keys

        for key in Keys.from_settings(settings_for(args)).listing():
            if args.pem:  # only the signing key: `> audit-key.pem` makes a file openssl reads
                print(key["public_key_pem"] if key["current"] else "", end="")
                continue
            signs = "  (signing)" if key["current"] else ""
            print(f"{key['key_id']}  {key['public_key']}  sha256:{key['fingerprint']}{signs}")
        return 0
    try:
        with service_for(args) as service:
            if args.action == "checkpoint":
                try:
                    taken = service.checkpoint("on-demand", {"by": by} if by else None)  # in its signed text
                except Unverified as refused:
                    first = findings(refused.breaks)[0]
                    return fail(f"nothing was signed: the rows since the last checkpoint do not verify ({first})", 1)
                print(f"checkpoint #{taken} signed by {service.audit_keys.key_id}")
                return 0
            if args.action == "prune":
                if not args.export.strip():
                    return fail("--export must name a folder")
                manifest = service.prune_audit(before, Path(args.export), by)
                print(
                    f"exported and removed {manifest['rows']} audit rows written before {args.before}: "
                    f"{Path(args.export) / manifest['file']} (manifest beside it); signed checkpoint "
                    f"#{manifest['checkpoint']['id']}"
                )
                return 0
            result = service.verify_audit(start, end, record=not (start or end), expected=tuple(args.expect or ()))
    except AuditBroken as exc:
        return fail(exc.message, 1)
    except OSError as exc:  # the export folder: not writable, not a folder, a file already there
        return fail(f"cannot write the export: {exc.strerror or exc}: {exc.filename or args.export}", 1)
    if args.json:
        print(json_module.dumps(result.as_dict(), indent=2, default=str))
    else:
        print("\n".join(result.lines()))
    return 0 if result.intact else 1
