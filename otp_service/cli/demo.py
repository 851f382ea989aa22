"""`demo-data`: fill an empty database with a realistic synthetic history (for reports and demonstrations)."""

from __future__ import annotations

import argparse

from .common import command_database, fail, settings_for


def cmd_demo_data(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ..core import errors
    from ..reports.demo import generate
    from ..reports.demo_webhooks import demo_endpoints, settle
    from ..reports.runner import ReportError, parse_day
    from ..service import build_service

    settings = settings_for(args)
    if not (1 <= args.devices <= 100_000 and 1 <= args.days <= 3650):
        return fail("--devices must be 1-100000 and --days 1-3650")
    try:
        end = datetime.combine(parse_day(args.end, "end"), datetime.min.time(), UTC)
    except ReportError as exc:
        return fail(str(exc))
    try:
        with command_database(settings.database_url, settings.db_timeout, 2, schema="migrate") as database:
            service = build_service(settings, database)
            hooks = demo_endpoints(database, end)  # the history's events are queued for them, as for any endpoint
            done = generate(service, devices=args.devices, days=args.days, seed=args.seed, end=end)
            settle(database, end, hooks)  # and given the fates a worker would have recorded
            service.checkpoint("on-demand")  # seal the history it wrote
    except errors.DeviceExists:
        return fail("the database already holds demo devices (DEMO-…); use an empty database", 1)
    print("demo data: " + ", ".join(f"{n} {kind}" for kind, n in sorted(done.items())))
    return 0
