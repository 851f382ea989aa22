"""Every notebook runs under papermill with parameters other than its defaults, and says what they asked for.

nbval (`make test`) checks each notebook's stored outputs with its default parameters only; a parameter that
breaks the notebook (bins that stop increasing, a code computed for the wrong step length, bytes papermill cannot
pass) or prose that ignores it goes unnoticed there. Each case here runs the notebook with two other sets of
parameters — smaller populations, so that it stays quick — and looks for outputs that only those parameters give.
The report notebooks (03, 04, 06) run on their own demo history (`data = "demo"`); the `report` command's path
through a database is `tests/reports/test_reports.py`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

SMALL_DRIFT = {"devices": 60, "attack_trials": 300, "resync_devices": 60, "resync_guesses": 40, "rule_check_devices": 2}
CASES = [
    (
        "01_totp_from_first_principles.ipynb",
        {"uniformity_counters": 20_000, "uniformity_key": "another key, as text"},
        ["key 'another key, as text': 20000 codes"],
    ),
    (
        "01_totp_from_first_principles.ipynb",
        {"uniformity_counters": 30_000, "uniformity_key": "é"},
        ["key 'é': 30000 codes"],
    ),
    (
        "02_clock_drift.ipynb",
        {**SMALL_DRIFT, "days": 45, "interval": 60},
        ["days 30-45", "over 45 days", "60-second steps", "20 steps of 60 seconds", "found at +20, drift now +20"],
    ),
    (
        "02_clock_drift.ipynb",
        {
            **SMALL_DRIFT,
            "days": 120,
            "hard_lock_failures": 20,
            "phone_ahead_minutes": -30,
            "resync_window": 100,
            "resync_windows": [40, 100],
        },
        [
            "days 80-120",
            "`OTP_HARD_LOCK_FAILURES` = 20",
            "guesses, hard lock at 20",
            "the hard lock at 20 in all",
            "30 minutes slow",
            "found at -60, drift now -60",
            "A search of ±40 steps would not have reached the pair.",
        ],
    ),
    (
        "05_audit_integrity.ipynb",
        {"devices": 12, "days": 10, "seed": 3, "erase_user": "user002@example.com", "prune_before": "2026-02-25"},
        ["erased user002@example.com", "prune the rows written before 2026-02-25"],
    ),
    (
        "05_audit_integrity.ipynb",
        {"devices": 15, "days": 20, "seed": 11, "erase_user": "user007@example.com", "prune_before": "2026-02-20"},
        ["erased user007@example.com", "prune the rows written before 2026-02-20"],
    ),
    (
        "03_audit_report.ipynb",
        {"start": "2026-02-10", "end": "2026-02-20", "top": 3},
        ["10 February 2026 to 20 February 2026", "the 3 with the most"],
    ),
    (
        "03_audit_report.ipynb",
        {"start": "2026-02-15", "end": "2026-03-01", "burst_threshold": 8, "title": "Audit, second half"},
        ["15 February 2026 to 1 March 2026", "# Audit, second half", "8 or more failed verifications"],
    ),
    (
        "04_usage_report.ipynb",
        {"start": "2026-02-05", "end": "2026-02-25", "stale_days": 7},
        ["5 February 2026 to 25 February 2026"],
    ),
    (
        "04_usage_report.ipynb",
        {"start": "2026-02-20", "end": "2026-02-28", "title": "Usage, last week"},
        ["20 February 2026 to 28 February 2026", "# Usage, last week"],
    ),
    (
        "06_user_report.ipynb",
        {"user_id": "user005@example.com", "start": "2026-02-10", "end": "2026-02-28"},
        ["| User | user005@example&#46;com", "10 February 2026 to 28 February 2026"],
    ),
    (
        "06_user_report.ipynb",
        {"user_id": "user020@example.com", "start": "2026-02-01", "end": "2026-02-14", "shown": 5},
        ["| User | user020@example&#46;com", "1 February 2026 to 14 February 2026"],
    ),
]


def outputs_text(notebook) -> str:
    """Everything the executed notebook shows as text — streams, Markdown, HTML and plain reprs — with each run of
    white space as one space (so that prose may wrap anywhere)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            for kind in ("text/markdown", "text/html", "text/plain"):
                if kind in output.get("data", {}):
                    parts.append(output["data"][kind])
    return " ".join(" ".join(parts).split())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "parameters", "expected"), CASES, ids=[f"{c[0][:2]}-{i % 2 + 1}" for i, c in enumerate(CASES)]
)
def test_notebook_runs_with_other_parameters_and_follows_them(name, parameters, expected, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    root = str(NOTEBOOKS.parent)  # the kernel imports otp_service from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    executed = papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(tmp_path / name),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        execution_timeout=600,
    )
    text = outputs_text(executed)
    missing = [e for e in expected if e not in text]
    assert not missing, f"{name} with {parameters} does not show {missing}"
