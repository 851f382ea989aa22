"""Running a report notebook: papermill executes it, nbconvert renders HTML for readers who
are not engineers (code hidden, figures embedded), and the result is kept both on disk and
in the `reports` table, because a scheduled job's disk is thrown away after the run.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = {"audit": "03_audit_report.ipynb", "usage": "04_usage_report.ipynb"}
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.IGNORECASE | re.DOTALL)
TITLES = {"audit": "OTP service audit report", "usage": "OTP service usage report"}


class ReportError(Exception):
    """A report could not be produced; the message says why, for the operator."""


@dataclass(frozen=True)
class ReportResult:
    notebook: Path
    html: Path
    data_dir: Path
    report_id: int | None


def parse_day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ReportError(f"--{name} must be a date as YYYY-MM-DD, got {text!r}") from None


def period(start: date, end: date) -> tuple[datetime, datetime]:
    """Inclusive dates to the half-open UTC interval [start 00:00, end+1 00:00) the queries use."""
    if end < start:
        raise ReportError(f"the end date {end} is before the start date {start}")
    return datetime.combine(start, datetime.min.time()), datetime.combine(end + timedelta(days=1), datetime.min.time())


def run_report(
    kind: str,
    start: date,
    end: date,
    database_url: str,
    output_dir: Path,
    store: bool = True,
    timeout: float = 600,
    settings: Settings | None = None,
) -> ReportResult:
    """Run a report notebook. With `settings` (the service's keys), the audit chains are sealed by a signed
    checkpoint first and the period's rows verified against it; the report states the result."""
    import papermill
    from nbconvert import HTMLExporter

    from .database import UNAVAILABLE_ERRORS, open_database, pending_migrations

    if kind not in NOTEBOOKS:
        raise ReportError(f"unknown report {kind!r}; choose {' or '.join(NOTEBOOKS)}")
    period(start, end)
    database_url = local_database_url(database_url)
    try:
        database = open_database(database_url, 1, 5)
        if pending_migrations(database):
            raise ReportError("the database schema is out of date: run `python -m otp_service migrate` first")
    except UNAVAILABLE_ERRORS as exc:
        raise ReportError(f"cannot reach the database: {str(exc).strip() or type(exc).__name__}") from None

    name = f"{kind}-{start}_{end}"
    output_dir.mkdir(parents=True, exist_ok=True)
    notebook, html_path, data_dir = output_dir / f"{name}.ipynb", output_dir / f"{name}.html", output_dir / name
    parameters = {"data": "DATABASE_URL", "start": str(start), "end": str(end), "output_dir": str(data_dir.resolve())}
    if settings is not None:
        parameters["integrity"] = _integrity(settings, database, *period(start, end))
    try:
        # The database URL (and its password) reaches the kernel in its environment, never as a parameter:
        # papermill writes parameters into the notebook it saves.
        with _environment(DATABASE_URL=database_url), _private_kernel() as km:
            executed = papermill.execute_notebook(
                str(NOTEBOOKS_DIR / NOTEBOOKS[kind]),
                str(notebook),
                kernel_name="python3",
                km=km,
                progress_bar=False,
                cwd=str(NOTEBOOKS_DIR),
                execution_timeout=timeout,
                parameters={**parameters, "title": TITLES[kind]},
            )
    except papermill.PapermillExecutionError as exc:
        raise ReportError(f"the {kind} notebook failed: {exc.ename}: {exc.evalue}") from None
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html = self_contained(
        exporter.from_notebook_node(executed, resources={"metadata": {"name": f"{TITLES[kind]}, {start} to {end}"}})[0]
    )
    html_path.write_text(html, encoding="utf-8")
    report_id = _store(database, kind, start, end, html, data_dir) if store else None
    database.close_all()
    return ReportResult(notebook, html_path, data_dir, report_id)


def _integrity(settings: Settings, database, start: datetime, end: datetime) -> str:
    """Seal the chains (a checkpoint for this report), then verify the period's rows: the statement, as JSON."""
    from .service import build_service

    service = build_service(settings, database)
    service.checkpoint("report")
    return json.dumps(service.verify_audit(start, end, record=False).as_dict(), default=str)


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
    if not url.startswith("sqlite"):
        return url
    path = url.split("://", 1)[1].split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db and sqlite:////abs.db
    if not path or path == ":memory:":
        raise ReportError("a report needs a database file, not an in-memory database")
    absolute = Path(path).resolve()
    if not absolute.is_file():
        raise ReportError(
            f"there is no database at {absolute}: run `python -m otp_service migrate` or check DATABASE_URL"
        )
    return f"sqlite:///{absolute}"


def self_contained(html: str) -> str:
    """Drop every <script>: nbconvert's page loads require.js, MathJax and Mermaid from a CDN, and a report
    of tables and embedded images needs none of them — it must open offline, years from now."""
    return SCRIPT.sub("", html)


def zip_tables(data_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for csv in sorted(data_dir.glob("*.csv")):
            archive.write(csv, csv.name)
    return buffer.getvalue()


def _store(database, kind: str, start: date, end: date, html: str, data_dir: Path) -> int:
    from .models import Report

    begin, until = period(start, end)
    with database.connection_context():
        return Report.insert(
            kind=kind,
            period_start=begin,
            period_end=until,
            created_at=datetime.utcnow(),
            html=html,
            data_zip=zip_tables(data_dir),
        ).execute()
