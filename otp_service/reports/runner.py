"""Running a report notebook: papermill executes it, nbconvert renders HTML for readers who
are not engineers (code hidden, figures embedded), `pdf` prints that page for archiving, and the
result is kept both on disk and in the `reports` table, because a scheduled job's disk is thrown
away after the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..core.period import Period
from ..core.tenants import DEFAULT_NAME
from .pdf import render_pdf

if TYPE_CHECKING:
    from ..config import Settings

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = {"audit": "03_audit_report.ipynb", "usage": "04_usage_report.ipynb", "user": "06_user_report.ipynb"}
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.IGNORECASE | re.DOTALL)
TITLES = {"audit": "OTP service audit report", "usage": "OTP service usage report", "user": "OTP service user report"}
MANIFEST = "SHA256SUMS"  # in each report's zip: `sha256sum -c SHA256SUMS` checks every other file in it


class ReportError(Exception):
    """A report could not be produced; the message says why, for the operator."""


@dataclass(frozen=True)
class ReportResult:
    """What `run_report` made: the executed notebook, the page as HTML and PDF, the zip of its tables and the
    folder they were written to, and the stored report's id (None when it was not stored)."""

    notebook: Path
    html: Path
    pdf: Path | None  # None: WeasyPrint could not run here (`pdf_problem` says why)
    data_zip: Path
    data_dir: Path
    report_id: int | None
    pdf_problem: str | None = None
    intact: bool | None = None  # the audit trail of the period verified (None: not checked, no keys)
    manifest: Path | None = None  # the signed manifest of its files (None: made without the service's keys)


def report_name(kind: str, start: date, end: date, subject: str | None = None, tenant: str = DEFAULT_NAME) -> str:
    """The name of a report's files, the same on disk and from the API: the tenant (unless the default one), the
    kind, for a user report the user (only characters safe in a file name), and the first and last day, both
    included."""
    within = "" if tenant == DEFAULT_NAME else f"{tenant}-"
    if kind == "user":
        return f"{within}user-{re.sub(r'[^A-Za-z0-9._@-]+', '_', subject or '')[:64]}-{start}_{end}"
    return f"{within}{kind}-{start}_{end}"


def parse_day(text: str, name: str) -> date:
    """A day given to the option --`name` as YYYY-MM-DD; a ReportError naming the option if it is not one."""
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ReportError(f"--{name} must be a date as YYYY-MM-DD, got {text!r}") from None


def period(start: date, end: date) -> Period:
    """The report's days, first and last included, with the instants the queries take; a ReportError (for the
    operator) if the end is before the start."""
    try:
        return Period(start, end)
    except ValueError as exc:
        raise ReportError(str(exc)) from None


def run_report(
    kind: str,
    start: date,
    end: date,
    database_url: str,
    output_dir: Path,
    store: bool = True,
    timeout: float = 600,
    settings: Settings | None = None,
    user_id: str | None = None,
    generated_by: str = "",
    tenant: str = DEFAULT_NAME,
    replacing: int | None = None,
) -> ReportResult:
    """Run a report notebook. With `settings` (the service's keys), the period's audit rows are verified first
    against the checkpoints signed before the report started, and the report states the result (`intact` in
    the result too); only then, and only if they verify, is a checkpoint signed for the report. `user_id`: the
    user a "user" report is about. `generated_by`: who or what asked for it, as the report says it. `tenant`:
    whose data it covers. `replacing`: the stored report (withdrawn by an erasure) this one is made again as."""
    import papermill
    from nbconvert import HTMLExporter

    from ..db.database import UNAVAILABLE_ERRORS, open_database, pending_migrations

    if kind not in NOTEBOOKS:
        raise ReportError(f"unknown report {kind!r}; choose {', '.join(NOTEBOOKS)}")
    if (kind == "user") != bool(user_id):
        raise ReportError("--user-id names the user of a user report, and only of one")
    span = period(start, end)
    database_url = local_database_url(database_url)
    try:
        database = open_database(database_url, 1, 5)
        if pending_migrations(database):
            raise ReportError("the database schema is out of date: run `python -m otp_service migrate` first")
    except UNAVAILABLE_ERRORS as exc:
        raise ReportError(f"cannot reach the database: {str(exc).strip() or type(exc).__name__}") from None

    tenant_id = _tenant_id(database, tenant)
    name = report_name(kind, start, end, user_id, tenant)
    output_dir.mkdir(parents=True, exist_ok=True)
    notebook, html_path, data_dir = output_dir / f"{name}.ipynb", output_dir / f"{name}.html", output_dir / name
    statement: dict | None = None
    parameters = {
        "data": "DATABASE_URL",
        "start": str(start),
        "end": str(end),
        "output_dir": str(data_dir.resolve()),
        "title": TITLES[kind],
        "generated_by": generated_by,
        "tenant": tenant,
    }
    if user_id:
        parameters["user_id"] = user_id
    try:
        # The database URL (and its password) reaches the kernel in its environment, never as a parameter:
        # papermill writes parameters into the notebook it saves.
        with _environment(DATABASE_URL=database_url), _private_kernel() as km:
            km.start_kernel(cwd=str(NOTEBOOKS_DIR))  # it boots (~1 s) while the chains are sealed and verified
            if settings is not None:
                statement = _integrity(settings, database, span, kind)
                parameters["integrity"] = json.dumps(statement, default=str)
            executed = papermill.execute_notebook(
                str(NOTEBOOKS_DIR / NOTEBOOKS[kind]),
                str(notebook),
                kernel_name="python3",
                km=km,
                progress_bar=False,
                cwd=str(NOTEBOOKS_DIR),
                execution_timeout=timeout,
                parameters=parameters,
            )
    except papermill.PapermillExecutionError as exc:
        raise ReportError(f"the {kind} notebook failed: {exc.ename}: {exc.evalue}") from None
    title = f"{TITLES[kind]}{f' for {user_id}' if user_id else ''}, {start} to {end}"
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html = self_contained(exporter.from_notebook_node(executed, resources={"metadata": {"name": title}})[0])
    html_path.write_text(html, encoding="utf-8")
    pdf, problem = render_pdf(html)
    pdf_path = None
    if pdf is not None:
        pdf_path = output_dir / f"{name}.pdf"
        pdf_path.write_bytes(pdf)
    data_zip = zip_tables(data_dir)
    zip_path = output_dir / f"{name}.zip"
    zip_path.write_bytes(data_zip)
    report_id = None
    if store:
        report_id = _store(database, kind, span, html, data_zip, pdf, user_id, tenant_id, replacing)
    intact = None if statement is None else statement["intact"]
    manifest_path = None
    if settings is not None:  # the service's audit key signs what the report was made as
        about = {"kind": kind, "first_day": str(start), "last_day": str(end), "tenant": tenant, "id": report_id}
        about |= {"user_id": user_id} if user_id else {}
        about |= {"generated_by": generated_by, "environment": settings.environment, "audit_records_intact": intact}
        files = [(html_path.name, html.encode("utf-8")), (zip_path.name, data_zip)]
        files += [(pdf_path.name, pdf)] if pdf_path is not None and pdf is not None else []
        manifest_path = _write_manifest(database, settings, output_dir / name, about, files, report_id)
    database.close_all()
    return ReportResult(notebook, html_path, pdf_path, zip_path, data_dir, report_id, problem, intact, manifest_path)


def _write_manifest(database, settings: Settings, stem: Path, about: dict, files: list, report_id: int | None) -> Path:
    """Sign the manifest of the report's files and write it (and its signature) beside them, and into the
    stored report, so a copy downloaded from the API verifies as one from the folder does."""
    import base64

    from ..audit.checkpoints import Keys
    from ..db.models import Report
    from .manifest import SIGNATURE_SUFFIX, SUFFIX, signed_manifest

    keys = Keys.from_settings(settings)
    about["created_at"] = datetime.utcnow().isoformat(timespec="seconds") + "Z"
    text, signature = signed_manifest(keys.signing, keys.key_id, about, files)
    path = stem.with_name(stem.name + SUFFIX)
    path.write_text(text, encoding="utf-8")
    stem.with_name(stem.name + SIGNATURE_SUFFIX).write_bytes(signature)
    if report_id is not None:
        stored = dict(manifest=text, manifest_signature=base64.b64encode(signature).decode("ascii"))
        with database.connection_context():
            Report.update(**stored).where(Report.id == report_id).execute()
    return path


def _integrity(settings: Settings, database, span: Period, kind: str) -> dict:
    """Verify the period's rows against the checkpoints that exist now, then — only if they verify, and only
    if the rows since the last checkpoint do too — sign one for this report. In that order, so the report
    cites a checkpoint it did not make (one that vouched for itself would prove nothing) and never signs over
    a break."""
    from ..audit.checkpoints import Unverified
    from ..service import build_service

    service = build_service(settings, database)
    statement = service.integrity_statement(span.start, span.end)
    if statement["intact"]:
        try:
            service.checkpoint("report", {"report": {"kind": kind, "start": str(span.first), "end": str(span.last)}})
        except Unverified:
            pass  # the period verified, but rows since the last checkpoint outside it do not: the report
            # says what it checked, and no checkpoint is signed (the service logged and audited the refusal)
    return statement


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _private_kernel() -> Iterator[object]:
    """A kernel that talks over Unix sockets in a private folder, not plain-text TCP on the loopback
    (which any local user could connect to, and which ipykernel warns about on every run)."""
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory(prefix="otp-kernel-") as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
        try:
            yield km
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def local_database_url(url: str) -> str:
    """An SQLite URL with its path made absolute against the caller's working directory (the notebook runs
    elsewhere, where a relative path would name a new, empty file); refused if there is no such file."""
    from ..db.database import sqlite_path

    if not url.startswith("sqlite"):
        return url
    path = sqlite_path(url)
    if not path or path == ":memory:":
        raise ReportError("a report needs a database file, not an in-memory database")
    absolute = Path(path).resolve()
    if not absolute.is_file():
        raise ReportError(
            f"there is no database at {absolute}: run `python -m otp_service migrate` or check DATABASE_URL"
        )
    return f"sqlite:///{quote(str(absolute))}"  # escaped again: `open_database` decodes it


# Tables read as text: left-aligned from the top of each cell (JupyterLab's style right-aligns every cell).
READER_CSS = (
    "<style>.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th "
    "{ text-align: left !important; vertical-align: top; }</style>"
)


def self_contained(html: str) -> str:
    """Drop every <script>: nbconvert's page loads require.js, MathJax and Mermaid from a CDN, and a report
    of tables and embedded images needs none of them — it must open offline, years from now. Tables are
    set to read as text."""
    return SCRIPT.sub("", html).replace("</head>", f"{READER_CSS}\n</head>", 1)


def zip_tables(data_dir: Path) -> bytes:
    """The report's CSV files (its tables and, for the audit and user reports, the raw audit events), with a
    manifest of their SHA-256 hashes in the format `sha256sum -c` checks."""
    buffer = io.BytesIO()
    sums = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for csv in sorted(data_dir.glob("*.csv")):
            content = csv.read_bytes()
            archive.writestr(csv.name, content)
            sums.append(f"{hashlib.sha256(content).hexdigest()}  {csv.name}\n")
        archive.writestr(MANIFEST, "".join(sums))
    return buffer.getvalue()


def _tenant_id(database, name: str) -> int:
    from ..db.models import Tenant

    with database.connection_context():
        found = Tenant.get_or_none(Tenant.name == name)
    if found is None:
        raise ReportError(f"there is no tenant named {name!r}: see `python -m otp_service tenants list`")
    return found.id


def _store(
    database,
    kind: str,
    span: Period,
    html: str,
    data_zip: bytes,
    pdf: bytes | None,
    subject: str | None,
    tenant_id: int,
    replacing: int | None = None,
) -> int:
    """Keep the report in the database (a scheduled job's disk goes with it), or put it back in the place of
    the one an erasure withdrew."""
    from ..db.models import Report

    content = dict(created_at=datetime.utcnow(), html=html, data_zip=data_zip, pdf=pdf)
    content |= dict(manifest=None, manifest_signature=None)  # signed once stored (`_write_manifest`): it names the id
    with database.connection_context():
        if replacing is not None:
            Report.update(**content, withdrawn_at=None).where(Report.id == replacing).execute()
            return replacing
        fields = dict(kind=kind, period_start=span.start, period_end=span.end, subject=subject, tenant_id=tenant_id)
        return Report.insert(**fields, **content).execute()


def regenerate(
    database_url: str, output_dir: Path, settings: Settings, generated_by: str = ""
) -> list[tuple[int, bool | None]]:
    """Make again every report an erasure withdrew, from the records as they are now (the erased user's
    personal data gone); returns each one's id and whether its period's records verified (`intact`). Each is
    put back in its own place, so its links stay valid."""
    from ..db.database import open_database
    from ..db.models import Report, Tenant

    database = open_database(local_database_url(database_url), 1, 5)
    with database.connection_context():
        withdrawn = list(
            Report.select(Report.id, Report.kind, Report.period_start, Report.period_end, Tenant.name)
            .join(Tenant, on=Report.tenant_id == Tenant.id)
            .where(Report.withdrawn_at.is_null(False))
            .order_by(Report.id)
            .tuples()
        )
    database.close_all()
    made = []
    for report_id, kind, first, after, tenant in withdrawn:
        span = Period.between(_as_datetime(first), _as_datetime(after))
        result = run_report(
            kind,
            span.first,
            span.last,
            database_url,
            output_dir,
            settings=settings,
            generated_by=generated_by,
            tenant=tenant,
            replacing=report_id,
        )
        made.append((report_id, result.intact))
    return made


def user_first_day(database_url: str, user_id: str, tenant: str = DEFAULT_NAME) -> date | None:
    """The day of the user's first audit record or device (None: the service has nothing of them): where a
    user report with no --start begins, so that by default it holds all the user's history."""
    from peewee import fn

    from ..db.database import UNAVAILABLE_ERRORS, open_database
    from ..db.models import AuditLog, Device, UserSpelling

    try:
        database = open_database(local_database_url(database_url), 1, 5)
        tenant_id = _tenant_id(database, tenant)
        with database.connection_context():
            mine = (AuditLog.tenant_id == tenant_id) & AuditLog.user_id.in_(UserSpelling.of(tenant_id, user_id))
            devices = (Device.tenant_id == tenant_id) & (Device.user_id == user_id)
            first = [
                AuditLog.select(fn.MIN(AuditLog.timestamp)).where(mine).scalar(),
                Device.select(fn.MIN(Device.created_at)).where(devices).scalar(),
            ]
        database.close_all()
    except UNAVAILABLE_ERRORS as exc:
        raise ReportError(f"cannot reach the database: {str(exc).strip() or type(exc).__name__}") from None
    found = [_as_datetime(f) for f in first if f is not None]
    return min(found).date() if found else None


def _as_datetime(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
