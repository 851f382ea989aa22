"""The one glossary of reason codes (`reports/reasons.py`): every reason the service writes into an audit row
has an entry, found by reading the service's own source, so a new refusal cannot reach a report unexplained."""

import json
import re
from pathlib import Path

from otp_service.core.actions import ROUTE_SCOPES
from otp_service.reports import reasons

PACKAGE = Path(__file__).resolve().parents[2] / "otp_service"
NOTEBOOKS = PACKAGE.parent / "notebooks"

# Where a reason is written: an audit event's third field, a `refuse("…")` of the code checks, a
# `record(…, reason="…")`, a rate limit's `_limit(scope, key, message, "REASON")`.
WRITES = (
    re.compile(r'AuditEvent\([^()]*?,\s*(?:True|False|success),\s*"([A-Z_:]+)"'),
    re.compile(r'\brefuse\(\s*(?:"([A-Z_]+)"|\n)'),
    re.compile(r'reason="([A-Z_:]+)"'),
    re.compile(r'_limit\(\s*"[a-z_]+",[^"]*"[^"]*",\s*\w+,\s*"([A-Z_]+)"', re.S),
)


def written_reasons() -> set[str]:
    """Every reason literal the service's source writes, outside the reports (which only read them)."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if "reports" in path.parts:
            continue
        text = path.read_text()
        for pattern in WRITES:
            found |= {m for m in pattern.findall(text) if m}
        for conditional in re.findall(r'refuse\("([A-Z_]+)" if [^)]* else "([A-Z_]+)"\)', text):
            found |= set(conditional)
    return found


def address_limits() -> set[str]:
    """A request over its address's limit is recorded with the limit's name in capitals (`rate=` of a route)."""
    http = PACKAGE / "http"
    names = set(
        re.findall(
            r'rate(?:: str)?\s*=\s*"([a-z_]+)"', (http / "routes.py").read_text() + (http / "route.py").read_text()
        )
    )
    return {name.upper() for name in names}


def test_every_reason_code_the_service_writes_has_a_glossary_entry():
    written = written_reasons()
    # the scan sees the code checks', the recovery codes', the locks' and the requests' reasons
    assert {
        "INVALID_CODE",
        "REPLAYED",
        "DEVICE_LOCKED",
        "ENROLLMENT_EXPIRED",
        "DEVICE_INACTIVE",
        "HARD_LOCK",
    } <= written
    assert {"NO_RECOVERY_CODES", "LOCKED", "DEVICE_EXISTS", "REPEATED", "INSUFFICIENT_SCOPE", "BROKEN"} <= written
    assert {"UNLOCK", "CODE_LOOKUP"} <= written and {"VERIFY", "DEFAULT"} <= address_limits()
    limits = {f"{whose}:{scope.upper()}" for whose in ("CLIENT", "TENANT") for scope in ROUTE_SCOPES}
    missing = sorted(code for code in written | address_limits() | limits if not reasons.known(code))
    assert missing == [], f"reason codes written by the service with no entry in reports/reasons.py: {missing}"


def test_the_glossary_describes_the_codes_a_page_shows_and_says_so_of_one_it_does_not_know():
    table = reasons.glossary(["REPLAYED", None, "INVALID_CODE", "REPLAYED", "CLIENT:VERIFY"])
    assert list(table.columns) == ["reason code", "meaning"]
    assert list(table["reason code"]) == ["CLIENT:VERIFY", "INVALID_CODE", "REPLAYED"]
    assert table["meaning"].iloc[0].startswith("rate limited: over the API client's limit")
    assert "double submit" in reasons.meaning("REPLAYED") and reasons.meaning(None) == ""
    assert not reasons.known("CLIENT:NOSUCHSCOPE")
    assert reasons.meaning("SOMETHING_NEW") == "a reason this version of the report does not describe"


def test_no_report_notebook_keeps_a_glossary_of_its_own():
    """One code, one meaning: a notebook that shows reasons takes them from `reasons`, never its own table."""
    for path in sorted(NOTEBOOKS.glob("0[346]_*.ipynb")):
        source = "".join(
            "".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"
        )
        assert '"INVALID_CODE":' not in source and '"DEVICE_LOCKED":' not in source, path.name
