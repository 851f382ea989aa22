"""`migrate`: bring the schema up to date. It needs no secrets, only the database's URL."""

from __future__ import annotations

import argparse
import os

from ..config import read
from .common import fail, url_for


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..db.database import UNAVAILABLE_ERRORS, migrate, open_database

    try:
        database = open_database(url_for(args), 1, read(os.environ, ["DB_TIMEOUT"])["db_timeout"])
        applied = migrate(database)
    except UNAVAILABLE_ERRORS as exc:
        return fail(f"cannot reach the database: {exc}".strip(), 1)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return 0
