"""`migrate`: bring the schema up to date. It needs no secrets, only the database's URL."""

from __future__ import annotations

import argparse
import os

from ..config import read
from .common import command_database, url_for


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..db.database import migrate

    with command_database(url_for(args), read(os.environ, ["DB_TIMEOUT"])["db_timeout"]) as database:
        applied = migrate(database)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0
