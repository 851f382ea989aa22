"""Where a report's tables and figures go: CSV files a spreadsheet can open without running anything in
them (OWASP's rule against CSV injection), and PNG figures without the machine's details in them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
RAW_ESCAPED = (*FORMULA_STARTS, "'")  # raw records: the apostrophe itself too, so the escape can be undone


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """OWASP's rule against CSV injection: a text cell that Excel or LibreOffice would read as a formula
    (it starts with = + - @, a tab or a carriage return) gets a leading apostrophe. User ids, user agents
    and the like are chosen by whoever calls the API; a report must not run them on a reader's machine."""
    safe = frame.copy()
    for column in safe.columns:
        if pd.api.types.is_string_dtype(safe[column]) or pd.api.types.is_object_dtype(safe[column]):
            safe[column] = safe[column].map(safe_cell)
    return safe


def safe_cell(value: object) -> object:
    """One cell, neutralised as `spreadsheet_safe` says."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class ReportOutput:
    """Where a report notebook writes its CSV tables and PNG figures."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Write `frame` as CSV, with every cell a spreadsheet would run as a formula neutralised; the
        frame itself is returned as it was, for the page."""
        # RFC 4180 line ends: a cell holding a carriage return is then quoted, not cut in two
        spreadsheet_safe(frame).to_csv(self.directory / f"{name}.csv", index=False, lineterminator="\r\n")
        self.files.append(f"{name}.csv")
        return frame

    def rows(self, name: str, columns: list[str], rows: Iterable[tuple]) -> int:
        """Write a stream of rows as CSV, without holding them; returns how many. Neutralised like `table`'s, and
        exactly reversible: a cell that starts with an apostrophe gets one more, so stripping one leading
        apostrophe from every cell that has one gives the values as stored (re-linking the chain needs them)."""
        count = 0
        with open(self.directory / f"{name}.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file, lineterminator="\r\n")
            writer.writerow(columns)
            for row in rows:  # `safe_cell`, inlined: this runs for every value of every raw audit record
                writer.writerow([f"'{v}" if isinstance(v, str) and v.startswith(RAW_ESCAPED) else v for v in row])
                count += 1
        self.files.append(f"{name}.csv")
        return count

    def figure(self, name: str, fig: Figure) -> None:
        """Save `fig` as PNG, without the "Software" tag matplotlib writes: nothing about the machine that made it."""
        fig.savefig(self.directory / f"{name}.png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        self.files.append(f"{name}.png")
