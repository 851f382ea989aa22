"""Re-link the audit chain from a report's audit_events.csv, with nothing but Python's standard library.

    python relink.py audit_events.csv        (or: python -m otp_service.reports.relink audit_events.csv)

For an auditor: this file imports nothing from the service, so it can be read whole and run on its own, on
any machine with Python 3.9 or newer. For every row it recomputes

    entry_hash = SHA-256(previous_hash ‖ SHA-256(encoding of the row))

where the encoding is the row's columns in a fixed order, each written `<length>:<text>` (`~` for no value,
`T`/`F` for success), the personal fields taken as their keyed digest (`personal`) — so it holds for erased
rows too — and the tenant last unless it is the default one (1). Rows of one chain that follow each other in
the file (`seq` one apart) must also link: the `previous_hash` of the later is the `entry_hash` of the earlier.
At the end it prints each chain's last place and hash, to compare with a signed checkpoint's heads.

What this shows, and what it does not:
- every exported row's columns are those its hash was computed over, and consecutive rows of a chain follow
  each other: a row edited in the file, or in the database after it was hashed, without recomputing the hashes
  after it, is found;
- the hash is not keyed, so someone who rewrites a row and every hash after it makes a file that passes: that
  the file is the one the service exported is what the report's signed manifest proves (`verify-report`), and
  that the database's chains end where a signed checkpoint says is what `audit verify` proves;
- `user_id`, `ip_address` and `user_agent` are covered only through their keyed digest (`personal`): they can
  be checked with the service's key (`audit verify`), not here;
- places missing between two rows of a chain (`seq` not one apart) are counted, not failed: they are the rows of
  other tenants or users a filtered export leaves out — or rows removed from the file, which the manifest finds.

Exit 0: every row with a chain links; 1: the first rows that do not are printed.

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
    """Every row that does not link, in the file's order. A row without a chain (written before the chains
    existed) or without a previous hash (the first kept after a prune) is noted as not checked, and only where
    it can be: a row of a chain the file has already shown must have a previous hash."""
    found, last = [], {}
    for row in rows:
        chain, seq, previous = value(row["chain"]), value(row["seq"]), value(row["previous_hash"])
        if chain is None:
            found.append(f"row {row['id']}: in no chain (written before the chains existed): not checked")
            continue
        before = last.get(chain)
        if previous is None and before is None:
            found.append(f"row {row['id']}: no previous hash (its chain's earlier rows were pruned): not checked")
        elif previous is None:
            found.append(f"row {row['id']} (chain {chain}, place {seq}): no previous hash after a row of its chain")
        elif entry_hash(previous, row) != row["entry_hash"]:
            found.append(f"row {row['id']} (chain {chain}, place {seq}): edited — its hash does not match its content")
        elif before is not None and int(seq) == int(before[0]) + 1 and previous != before[1]:
            found.append(f"row {row['id']} (chain {chain}, place {seq}): does not follow the row before it")
        elif before is not None and int(seq) <= int(before[0]):
            found.append(f"row {row['id']} (chain {chain}, place {seq}): out of order after place {before[0]}")
        last[chain] = (seq, row["entry_hash"])
    return found


def heads(rows) -> dict[str, tuple[str, str, int]]:
    """Each chain's last place and hash in the file, and how many places the file skips in it."""
    found: dict[str, tuple[str, str, int]] = {}
    for row in rows:
        chain, seq = value(row["chain"]), value(row["seq"])
        if chain is None or seq is None:
            continue
        before = found.get(chain)
        skipped = 0 if before is None else before[2] + max(0, int(seq) - int(before[0]) - 1)
        found[chain] = (seq, row["entry_hash"], skipped)
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(argv[1], newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    found = problems(rows)
    broken = [line for line in found if "not checked" not in line]
    for line in broken[:20]:
        print(line)
    unchecked = len(found) - len(broken)
    for chain, (seq, digest, skipped) in sorted(heads(rows).items(), key=lambda item: int(item[0])):
        gaps = f"; {skipped} places not in this file (other tenants' or users' rows, or removed)" if skipped else ""
        print(f"chain {chain}: last place {seq}, hash {digest}{gaps}")
    checked = len(rows) - unchecked
    verdict = "every one links" if not broken else f"{len(broken)} problem(s)"
    print(f"{checked} rows checked: {verdict}" + (f"; {unchecked} not checked (see above)" if unchecked else ""))
    if unchecked:
        for line in [line for line in found if "not checked" in line][:5]:
            print(line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
