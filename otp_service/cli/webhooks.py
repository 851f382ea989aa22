"""`webhooks deliver`: the delivery worker as a process of its own — beside `serve` processes that run it
(WEBHOOK_DELIVERY) or instead of them (WEBHOOK_DELIVERY=false), or from cron with --once, which delivers what
is due now and exits. Claims are leased and skip each other, so any number of these may run at once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor

from .common import command_database, settings_for

THREADS = 2  # a claim and a result at a time are plenty for one worker's database work


def cmd_webhooks(args: argparse.Namespace) -> int:
    from ..http.logs import configure_logging
    from ..service import build_service

    settings = settings_for(args)
    configure_logging(settings.log_level)
    with command_database(settings.database_url, settings.db_timeout, THREADS + 1, schema="current") as database:
        service = build_service(settings, database)
        made = asyncio.run(_deliver(service, args.once))
    if args.once:
        print(f"webhook attempts made: {made}")
    return 0


async def _deliver(service, once: bool) -> int:
    from ..webhooks.delivery import Deliverer

    with ThreadPoolExecutor(THREADS, thread_name_prefix="webhooks") as executor:
        deliverer = Deliverer(service, executor)
        if once:
            return await deliverer.once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await deliverer.run(stop, grace=service.settings.shutdown_grace_seconds)
        return 0
