"""What a report notebook starts from: `prepare` opens the database (the demo's or DATABASE_URL's), turns the
notebook's days into a `Period`, states the audit trail's integrity, and hands back a `ReportContext` whose
methods write the parts every report shares — the header, the integrity statement, the note on its files —
plus the words the notebooks use to put a caller's text or a duration on the page.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlparse

from peewee import Database

from ..audit.chain import findings
from ..core.period import Period
from ..core.tenants import DEFAULT_NAME
from ..db.database import open_database, sqlite_path
from ..db.models import Device
from ..db.models import Tenant as TenantRow
from . import sql
from .output import ReportOutput


@dataclass
class ReportContext:
    """What a report notebook works on: the open database, the period and where its files go."""

    database: Database
    period: Period
    output: ReportOutput
    source: str  # the database, for the reader, without any password
    generated_at: str
    integrity: dict | None = None  # the period's verification and what it was checked with (`integrity_statement`)
    generated_by: str = ""  # who or what asked for the report, in words
    tenant: str = DEFAULT_NAME  # whose users, devices and audit records it covers
    environment: str = ""  # the ENVIRONMENT the statement was made in: a development key's report says so
    signed: bool = False  # made by the `report` command with the service's keys: its files get a signed manifest

    @property
    def start(self) -> datetime:
        """The period's first instant: what the queries take, with `end`."""
        return self.period.start

    @property
    def end(self) -> datetime:
        """The instant after the period's last day (exclusive)."""
        return self.period.end

    def integrity_markdown(self) -> str:
        """The integrity statement a reader checks first: were these records altered? Checked against the last
        checkpoint signed before the report began (never one it signed itself), and its age; each finding in
        the words `audit verify` prints (`audit.chain.findings`), so the two can be compared line by line."""
        found = self.integrity
        if found is None:
            return "## Integrity of these records\n\n**Not checked**: the service's keys were not available."
        against = _against(found)
        if found["intact"] and not found["rows"]:
            verdict = (
                "**Empty period: no audit record is dated in it**, so there was none to recompute; the check "
                f"against {against} found no break."
            )
        elif found["intact"]:
            verdict = (
                f"**Intact.** The {found['rows']:,} audit records written in this period were recomputed link by "
                f"link in their {found['chains']} hash chains and match, checked against {against}: none was "
                "edited, removed, inserted or reordered."
            )
        else:
            lines = found.get("findings") or findings(found["breaks"])
            listed = "\n".join(f"- {in_markdown(line)}" for line in lines)
            verdict = (
                f"**ALTERED.** Checking the {found['rows']:,} audit records of this period against {against} "
                f"found {len(lines)} break(s) (as `audit verify` states them); the figures below include records "
                f"that were changed:\n\n{listed}"
            )
        return f"## Integrity of these records\n\n{verdict}"

    def header(self, title: str, settings: list[tuple[str, str]] = ()) -> str:
        """The report's first lines: what it covers, from which data, when, by whom and with which software, and
        the settings its figures depend on (in words, each a row)."""
        from .. import __version__

        rows = [
            ("Period (UTC)", f'<span class="report-period">{self.period.in_words()}</span>'),
            ("Tenant", f"{in_markdown(self.tenant)}: its users, devices and audit records only"),
            ("Data", self.source),
            (
                "Generated",
                f'<span class="report-generated">{self.generated_at}</span>, '
                f"by {self.generated_by or 'this notebook, run by hand'}",
            ),
            ("Software", f"otp-service {__version__}"),
            ("Environment", f"{in_markdown(self.environment or 'not stated')} (the service's ENVIRONMENT setting)"),
            ("Signing key", _signing_key(self.integrity)),
            *settings,
        ]
        table = "".join(f"| {name} | {value} |\n" for name, value in rows)
        return f"# {title}\n\n| | |\n|---|---|\n{table}"

    def files_note(self) -> str:
        """Where the tables are, besides this page (never a folder of the machine that made it)."""
        tables = sorted(f for f in self.output.files if f.endswith(".csv"))
        raw = ", and every audit record counted (audit_events.csv)," if "audit_events.csv" in tables else ""
        return (
            f"## The data behind this report\n\nEvery table above{raw} is in the report's zip file as CSV "
            "(UTF-8, comma-separated; a cell a spreadsheet would run as a formula starts with an apostrophe): "
            f"{', '.join(tables)}. The file SHA256SUMS in the zip holds each file's SHA-256 hash (the command "
            "`sha256sum -c SHA256SUMS` checks them)."
            + (RELINK_NOTE if raw else "")
            + (SIGNED_NOTE if self.signed else "")
        )


RELINK_NOTE = (
    " Each raw audit record carries what its link hash covers and the hash of the record before it in its chain, "
    "so the chain can be re-linked without the service: `python3 relink.py audit_events.csv` (the script "
    "otp_service/reports/relink.py, standard library only)."
)
SIGNED_NOTE = (
    " This page, its PDF and its zip (each file in it too) are listed with their SHA-256 in the report's manifest "
    "(`<name>.manifest.json` beside the files, or `GET /api/v1/reports/{id}/manifest`), signed with the audit key "
    "named above: `python -m otp_service verify-report <name>.manifest.json --public-key audit-key.pem` checks "
    "them, as does `openssl pkeyutl -verify -rawin` for the signature."
)


def prepare(
    data: str,
    start: str,
    end: str,
    output_dir: str | None,
    integrity: str = "",
    generated_by: str = "",
    tenant: str = DEFAULT_NAME,
) -> ReportContext:
    """Open the report's database, parse the inclusive dates, make the output folder.

    `data`: "demo" builds the deterministic demo history in a temporary SQLite file, so the notebook runs
    anywhere with no set-up and shows the same figures every time; "DATABASE_URL" opens the database
    that environment variable names (the `report` command sets it: a URL given as a parameter, password
    and all, would be written into the executed notebook). `integrity`: the `report` command's verification
    of the period's audit rows, as JSON; without it the notebook verifies them itself (demo, or the service's
    keys in the environment). `tenant`: whose data the report covers (every query keeps to it, `sql.TENANT`).
    """
    from ..config import read
    from .demo import demo_database
    from .runner import period

    span = period(date.fromisoformat(start), date.fromisoformat(end))
    if data == "demo":
        database_url = demo_database(f"sqlite:///{tempfile.mkdtemp(prefix='otp-demo-')}/demo.db")
        source = "demo history (synthetic: {devices} devices, 28 days to 2026-03-01, seed 7)"  # counted below
    elif data == "DATABASE_URL":
        database_url = read(os.environ, ["DATABASE_URL"])["database_url"]
        parsed = urlparse(database_url)
        # the server and database, never a password; for SQLite the file's name, not a folder of this machine
        source = (
            f"{parsed.scheme}://{parsed.hostname}{parsed.path}"
            if parsed.hostname
            else f"SQLite database {Path(sqlite_path(database_url)).name}"
        )
    else:
        raise ValueError(f'data must be "demo" or "DATABASE_URL", got {data!r}')
    database = open_database(database_url, 1)
    database.connect()
    found = TenantRow.get_or_none(TenantRow.name == tenant)
    if found is None:
        raise ValueError(f"there is no tenant named {tenant!r}")
    sql.TENANT.set(found.id)
    if data == "demo":  # its 40 devices signing in, and those the lifecycle's stories enrol
        source = source.format(devices=Device.select().count())
    output = ReportOutput(output_dir or tempfile.mkdtemp(prefix="otp-report-"))
    generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    checked = json.loads(integrity) if integrity else _verify(database, database_url, data, span)
    environment = (checked or {}).get("environment") or read(os.environ, ["ENVIRONMENT"])["environment"]
    made = (database, span, output, source, generated, checked, generated_by, tenant, environment)
    return ReportContext(*made, signed=bool(integrity))  # the runner passes its statement only when it signs


def _verify(database: Database, database_url: str, data: str, span: Period) -> dict | None:
    """The period's audit rows verified here (demo: with the demo's keys; else the environment's, if set)."""
    from ..config import ConfigError, Settings
    from ..service import build_service
    from .demo import demo_settings

    try:
        settings = demo_settings(database_url) if data == "demo" else Settings.from_env()
    except ConfigError:
        return None
    if data != "demo" and "AUDIT_SIGNING_KEY" in settings.generated:
        return None  # no keys given: the one just generated would call every checkpoint forged
    return build_service(settings, database).integrity_statement(span.start, span.end)


def _against(found: dict) -> str:
    """The checkpoint a statement was checked against, in words: which, when, how long before the check, the
    keys that signed it with their full fingerprints, and the hash of its text (to find it with --expect)."""
    checkpoint = found.get("checkpoint")
    if not checkpoint:
        return "no signed checkpoint (none had been signed before this report)"
    at = checkpoint["at"].replace("T", " ").rstrip("Z")
    age = ""
    if found.get("checked_at"):
        seconds = (_instant(found["checked_at"]) - _instant(checkpoint["at"])).total_seconds()
        age = f"; {age_words(seconds)} old when checked" if seconds >= 0 else "; dated after the check"
    fingerprints = found.get("fingerprints", {})
    keys = ", ".join(
        f"key {name}, public-key SHA-256 {fingerprints[name]}" if name in fingerprints else f"key {name}"
        for name in checkpoint["signed_by"]
    )
    return (
        f"the signed checkpoint #{checkpoint['id']} of {at} UTC (the latest signed before this report began{age}; "
        f"{keys}; SHA-256 of its text {checkpoint.get('sha256', '?')})"
    )


def _signing_key(found: dict | None) -> str:
    """The header's signing key: its id and its whole public-key fingerprint, to compare with `audit keys`."""
    key = (found or {}).get("signing_key")
    if not key:
        return "not available (the integrity of these records was not checked)"
    return f"{key['key_id']}; public-key fingerprint (SHA-256 of the raw Ed25519 key) {key['fingerprint']}"


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def age_words(seconds: float) -> str:
    """How old a checkpoint was, as a reader says it: "less than a minute", "12 minutes", "3 hours", "2 days"
    (rounded down to a whole unit: a checkpoint 59 minutes old is not "1 hour")."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "less than a minute"


MARKDOWN_SPECIALS = str.maketrans({c: f"&#{ord(c)};" for c in "\\`*_{}[]()#+-.!|<>&~"})


def in_markdown(text: str) -> str:
    """Text chosen by an API caller (a user id) put into Markdown as itself: no markup, no HTML, no table cell
    broken by a `|`."""
    return str(text).translate(MARKDOWN_SPECIALS)


def duration_words(seconds: float) -> str:
    """A number of seconds as a reader says it: "2 minutes", "90 seconds", "1 hour"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"
