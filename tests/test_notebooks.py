"""Every notebook runs under papermill with parameters other than its defaults, and says what they asked for.

nbval (`make test`) checks each notebook's stored outputs with its default parameters only; a parameter that
breaks the notebook (bins that stop increasing, a code computed for the wrong step length, bytes papermill cannot
pass) or prose that ignores it goes unnoticed there. Each case here runs the notebook with two other sets of
parameters — smaller populations, so that it stays quick — and looks for outputs that only those parameters give.
The report notebooks (03, 04, 06) run on their own demo history (`data = "demo"`); the `report` command's path
through a database is `tests/reports/test_reports.py`'s. Notebook 07 validates an authenticator: its cases give it
codes that pyotp (not the service) computed for a skewed phone, a wrong code, SHA256 with 8 digits and a QR image,
check its verdict, and check that a bad input stops it with one clear ValueError.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyotp
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def phone_codes(uri: str, times: list[str], skew: float) -> str:
    """Notebook 07's `readings`: what a phone whose clock is `skew` seconds off showed at each of `times`, computed
    by pyotp from the URI (independently of the service's engine)."""
    otp = pyotp.parse_uri(uri)
    return json.dumps([[otp.at(datetime.fromisoformat(t).timestamp() + skew), t] for t in times])


class QrOf(str):
    """A `qr_image` parameter: the test writes this URI's QR code (segno) as a PNG and passes its path."""


EXAMPLE_URI = (  # notebook 07's default (notebook 1's example device)
    "otpauth://totp/ACME:alice@example.com?secret=UHBYDVCKSB3B5JFXMQ72GRHC6W3UOTQZ5I5WUMC3FSGGDIBCRUUQ"
    "&issuer=ACME&algorithm=SHA1&digits=6&period=30"
)
RFC_SEED_B32 = base64.b32encode(b"12345678901234567890").decode()  # RFC 6238's SHA-1 seed
RFC_SEED32_B32 = base64.b32encode(b"12345678901234567890123456789012").decode()  # …and its SHA-256 one
OTHER_URI = f"otpauth://totp/Other:bob@example.com?secret={RFC_SEED_B32}&issuer=Other"
SHA256_URI = f"otpauth://totp/ACME:carol@example.com?secret={RFC_SEED32_B32}&issuer=ACME&algorithm=SHA256&digits=8"
TIMES = ["2026-05-04T09:00:07Z", "2026-05-04T09:31:23Z", "2026-05-05T14:12:49Z"]

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
    (  # a phone 95 s fast: every code found 3 or 4 steps ahead, none inside OTP_WINDOW ±1
        "07_validate_authenticator.ipynb",
        {"readings": phone_codes(EXAMPLE_URI, TIMES, 95), "time_precision_seconds": 0},
        [
            "Verdict: clock skew beyond the service's window",
            "readings 1, 2, 3 would be refused as a device's first code (OTP_WINDOW ±1)",
            "a resync",
            {"verdict": "clock skew beyond the service's window", "skew_seconds": (83, 107), "accepted_first": 0},
        ],
    ),
    (  # the second reading's code is another device's: nothing within ±5 steps, whatever the window
        "07_validate_authenticator.ipynb",
        {
            "readings": json.dumps(
                [
                    json.loads(phone_codes(EXAMPLE_URI, TIMES, 4))[0],
                    [pyotp.parse_uri(OTHER_URI).at(datetime.fromisoformat(TIMES[1]).timestamp()), TIMES[1]],
                ]
            ),
            "search_window": 5,
            "otp_window": 2,
        },
        [
            "Verdict: codes do not match",
            "reading 2 matches no step within ±5 (150 s)",
            "the service's window ± 2 steps",
            {"verdict": "codes do not match", "matched": 1, "findings": ["codes do not match"]},
        ],
    ),
    (  # SHA256, 8 digits, read off its QR code: the codes are right, the apps that only do SHA1/6 would not be
        "07_validate_authenticator.ipynb",
        {"qr_image": QrOf(SHA256_URI), "readings": phone_codes(SHA256_URI, TIMES, -7)},
        [
            "decoded from the QR image",
            "Verdict: parameters an app will ignore",
            "algorithm=SHA256, digits=8: Google Authenticator, Microsoft Authenticator, Authy may ignore them",
            "algorithm SHA256 digits 8",
            {"verdict": "parameters an app will ignore", "accepted_first": 3, "matched": 3},
        ],
    ),
    (  # another account's QR code, standard parameters, a phone 20 s slow: OK
        "07_validate_authenticator.ipynb",
        {"qr_image": QrOf(OTHER_URI), "readings": phone_codes(OTHER_URI, TIMES, -20)},
        [
            "decoded from the QR image",
            "Verdict: OK",
            "s behind",
            "issuer Other",
            {"verdict": "OK", "findings": [], "skew_seconds": (-35, -5), "apps_that_may_ignore": []},
        ],
    ),
]


def shown_json(notebook) -> dict:
    """What the notebook displays as JSON (notebook 07's verdict), merged."""
    found = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            found.update(output.get("data", {}).get("application/json", {}))
    return found


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


def case_ids(cases) -> Iterator[str]:
    """`01-1`, `01-2`, `02-1` …: each notebook's cases numbered from 1."""
    seen: dict[str, int] = {}
    for name, *_ in cases:
        seen[name] = seen.get(name, 0) + 1
        yield f"{name[:2]}-{seen[name]}"


def run(name: str, parameters: dict, tmp_path: Path, monkeypatch):
    """The notebook executed by papermill with `parameters` (a QrOf becomes the path of its QR code's PNG)."""
    papermill = pytest.importorskip("papermill")
    root = str(NOTEBOOKS.parent)  # the kernel imports otp_service from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for field, value in parameters.items():
        if isinstance(value, QrOf):
            import segno

            path = tmp_path / f"{field}.png"
            segno.make(str(value), error="m").save(str(path), scale=5, border=4)
            parameters = {**parameters, field: str(path)}
    return papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(tmp_path / name),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        execution_timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("name", "parameters", "expected"), CASES, ids=list(case_ids(CASES)))
def test_notebook_runs_with_other_parameters_and_follows_them(name, parameters, expected, tmp_path, monkeypatch):
    """`expected`: text the outputs show; a dict: fields of the JSON the notebook displays, a tuple a range."""
    executed = run(name, parameters, tmp_path, monkeypatch)
    text = outputs_text(executed)
    missing = [e for e in expected if isinstance(e, str) and e not in text]
    assert not missing, f"{name} with {parameters} does not show {missing}"
    shown = shown_json(executed)
    for fields in (e for e in expected if isinstance(e, dict)):
        for field, want in fields.items():
            got = shown.get(field)
            ok = want[0] <= got <= want[1] if isinstance(want, tuple) else got == want
            assert ok, f"{name} with {parameters}: {field} is {got!r}, expected {want!r}"
    if name.startswith("07"):  # it validates a user's authenticator: its secret is never shown (notebook 1 shows one)
        for secret in re.findall(r"secret=([A-Z2-7]+)", json.dumps(parameters) + EXAMPLE_URI):
            assert secret not in text, f"{name} shows the secret"


BAD_INPUTS = [
    ({"otpauth_uri": "https://example.com/?secret=" + RFC_SEED_B32}, "otpauth_uri must start with otpauth://"),
    ({"otpauth_uri": "otpauth://hotp/x?secret=" + RFC_SEED_B32}, "of type 'hotp', not totp"),
    ({"otpauth_uri": "otpauth://totp/x?secret=NOT-BASE32!"}, "secret is not base32"),
    ({"otpauth_uri": f"otpauth://totp/x?secret={RFC_SEED_B32}&period=5"}, "would refuse: interval"),
    ({"otpauth_uri": f"otpauth://totp/x?secret={RFC_SEED_B32}&digits=6&digits=8"}, "two 'digits' parameters"),
    ({"qr_image": "does-not-exist.png"}, "qr_image 'does-not-exist.png': no such file"),
    ({"qr_image": "nbval-sanitize.cfg"}, "is not an image that can be read (PNG or JPEG)"),
    ({"readings": '[["123456", 2026]'}, "readings is not JSON"),
    ({"readings": "[]"}, "readings must be a non-empty JSON list of [code, time] pairs"),
    (
        {"readings": '[["12345", "2026-03-02T08:15:21Z"]]'},
        'reading 1 (["12345", "2026-03-02T08:15:21Z"]): otp must be exactly 6',
    ),
    ({"readings": '[["123456", "2026-03-02 08:15:21"]]'}, "time must be an ISO-8601 time with a time zone"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("parameters", "message"), BAD_INPUTS, ids=[m[:24] for _, m in BAD_INPUTS])
def test_notebook_07_stops_on_a_bad_input_with_one_clear_value_error(parameters, message, tmp_path, monkeypatch):
    """A bad input is the user's to fix: the run fails with a ValueError saying what is wrong, and the cell shows
    that message alone (no traceback through the notebook's helpers)."""
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        run("07_validate_authenticator.ipynb", parameters, tmp_path, monkeypatch)
    assert (failed.value.ename, message in failed.value.evalue) == ("ValueError", True), failed.value.evalue
    assert len(failed.value.traceback) == 1, failed.value.traceback
    assert RFC_SEED_B32 not in failed.value.evalue
