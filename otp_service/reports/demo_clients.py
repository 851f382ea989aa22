"""The demo's API clients, as the client table holds them — what the audit report's "Clients and scopes" lists
for the demo history (`demo.demo_database`) — and the people its operators' requests were made for."""

from __future__ import annotations

from datetime import datetime, timedelta

from peewee import Database

from ..db.models import ApiClient

DEMO_PEOPLE = {"deactivate": "maria.okafor@example.com", "drift_reset": "helpdesk ticket HD-2231"}  # X-Actor
# (name, scopes, created, rotated — its old key worked until then —, revoked): days before the history's end.
DEMO_CLIENT_ROWS = (
    ("login-frontend", "verify", 120, None, None),
    ("signup", "enroll", 120, None, None),
    ("ops-console", "manage,read", 90, 45, None),
    ("legacy-sync", "enroll,read", 200, None, 40),
)


def demo_clients(database: Database, end: datetime) -> None:
    """The clients of `DEMO_CLIENT_ROWS`, made, rotated and revoked before the history began, so the trail holds
    no row of those changes (`clients create` would have written them)."""

    def before(days: int | None) -> datetime | None:
        return None if days is None else (end - timedelta(days=days)).replace(tzinfo=None)

    with database.connection_context():
        for n, (name, scopes, created, rotated, revoked) in enumerate(DEMO_CLIENT_ROWS):
            ApiClient.create(
                name=name,
                scopes=scopes,
                key_digest=f"{n:064x}",  # no key: a demo client cannot be called
                previous_key_digest=None if rotated is None else f"{n + 100:064x}",
                previous_valid_until=before(rotated),
                created_at=before(created),
                revoked_at=before(revoked),
            )
