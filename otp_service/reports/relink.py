"""Re-link the audit chain from a report's audit_events.csv, with nothing but Python's standard library.

    python relink.py audit_events.csv        (or: python -m otp_service.reports.relink audit_events.csv)

For an auditor: this file imports nothing from the service, so it can be read whole and run on its own, on
any machine with Python 3.9 or newer. For every row it recomputes

    entry_hash = SHA-256(previous_hash ‖ SHA-256(encoding of the row))

where the encoding is the row's columns in a fixed order, each written `<length>:<text>` (`~` for no value,
`T`/`F` for success), the personal fields taken as their keyed digest (`personal`) — so it holds for erased
rows too — and the tenant last unless it is the default one (1). Rows of one chain that follow each other in
the file (`seq` one apart) must also link: the `previous_hash` of the later is the `entry_hash` of the earlier.

What this proves: no exported row was edited, and none was removed from between two exported rows of a chain.
What it cannot: that the export is complete at its ends — compare the heads with the signed checkpoint the
report cites (`python -m otp_service audit verify` does both, with the service's keys).

Exit 0: every row links; 1: the first rows that do not are printed.

The CSV's conventions (reports.output.ReportOutput.rows): UTF-8, an empty cell is no value, and a cell that
starts with an apostrophe had one added (a spreadsheet must not run a cell as a formula), so one is removed.
"""

from __future__ import annotations

import csv
import hashlib
import sys

GENESIS = "0" * 64
DEFAULT_TENANT = "1"
COVERED = ("reason", "device_id", "personal", "subject", "request_id", "data", "client")  # in this order


def value(cell: str) -> str | None:
    """A cell as stored: empty is none, and an apostrophe added in front is taken off."""
    if cell == "":
        return None
    return cell[1:] if cell.startswith("'") else cell


def field(text: str | None) -> str:
    return "~" if text is None else f"{len(text)}:{text}"


def encoding(row: dict[str, str]) -> str:
    """The row's canonical text, as the service hashes it (audit.chain.encode_entry)."""
    time = value(row["time"]).replace("T", " ").removesuffix("Z")  # as stored: "YYYY-MM-DD HH:MM:SS.ffffff"
    success = {"True": "T", "False": "F"}.get(row["success"], "~")
    parts = [field(time), field(value(row["action"])), success, *(field(value(row[c])) for c in COVERED)]
    tenant = value(row["tenant_id"])
    if tenant not in (None, DEFAULT_TENANT):
        parts.append(field(tenant))
    return "".join(parts)


def entry_hash(previous: str, row: dict[str, str]) -> str:
    inner = hashlib.sha256(encoding(row).encode("utf-8")).digest()
    return hashlib.sha256(bytes.fromhex(previous) + inner).hexdigest()


def problems(rows) -> list[str]:
    """Every row that does not link, in the file's order."""
    found, last = [], {}
    for row in rows:
        chain, seq, previous = row["chain"], row["seq"], value(row["previous_hash"])
        if not chain:
            continue  # written before the chains existed: nothing covers it
        if previous is None:
            found.append(f"row {row['id']}: no previous hash (its chain's earlier rows were pruned): not checked")
            continue
        if entry_hash(previous, row) != row["entry_hash"]:
            found.append(f"row {row['id']} (chain {chain}, place {seq}): edited — its hash does not match its content")
        before = last.get(chain)
        if before is not None and int(seq) == int(before[0]) + 1 and previous != before[1]:
            found.append(f"row {row['id']} (chain {chain}, place {seq}): does not follow the row before it")
        last[chain] = (seq, row["entry_hash"])
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(argv[1], newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    found = problems(rows)
    for line in found[:20]:
        print(line)
    broken = [line for line in found if "not checked" not in line]
    checked = sum(1 for row in rows if row["chain"]) - (len(found) - len(broken))
    print(f"{checked} rows checked: {'every one links' if not broken else f'{len(broken)} do not link'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
