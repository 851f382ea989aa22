"""Retention and erasure that keep the audit trail verifiable.

`prune` exports the rows written before a date (a gzipped CSV and a manifest of their hashes, streamed:
memory stays bounded however many rows), deletes them, and moves each chain's floor to the last pruned
row — the place and hash the rest of the chain follows on from — in a signed checkpoint. So what remains
still verifies from the floor, and the export verifies on its own against the same signed hashes.

`erase` (GDPR art. 17) deletes a user's devices and recovery codes and removes the personal fields (user
id, address, User-Agent) from their audit rows. The chains cover those fields only as a keyed digest, so
they still verify; the erasure is audited by the user's pseudonym, which is how verification knows these
rows' emptied fields are an erasure and not an edit.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from peewee import Database, fn

from ..core.actions import Action
from ..core.transitions import AuditEvent, isoformat
from ..db.database import is_postgres
from ..db.models import AuditChain, AuditLog, Device, RecoveryCodes, Report, UserSpelling, WebhookMessage
from . import chain as integrity
from . import checkpoints
from .checkpoints import Keys
from .journal import CHAIN_COLUMNS, Journal
from .rows import AUDIT_COLUMNS, RequestContext, audit_row

EXPORT_COLUMNS = ("id", *AUDIT_COLUMNS, *CHAIN_COLUMNS)  # every column: the export verifies on its own
PAGE = 10_000


def _rows(chain: int, first: int, last: int) -> Iterator[tuple]:
    """Rows of `chain` at places first..last, in order, a page at a time."""
    fields = [getattr(AuditLog, c) for c in EXPORT_COLUMNS]
    after = first - 1
    while after < last:
        page = list(
            AuditLog.select(*fields)
            .where((AuditLog.chain == chain) & (AuditLog.seq > after) & (AuditLog.seq <= last))
            .order_by(AuditLog.seq)
            .limit(PAGE)
            .tuples()
        )
        if not page:
            return
        yield from page
        after = page[-1][EXPORT_COLUMNS.index("seq")]


def vacuum(database: Database) -> None:
    """After a prune, on PostgreSQL: clear the deleted rows' index entries now rather than when autovacuum
    gets to them. Until then every verification steps over them (a day's check over a table where
    5,000,000 of 10,000,000 rows had been pruned: 1.5 s → 19 s; after this, 1.7 s). Outside any
    transaction, and not bound by the requests' DB_TIMEOUT (11.7 s on that table)."""
    if not is_postgres(database):
        return
    database.execute_sql("SET statement_timeout = 0")
    try:
        database.execute_sql("VACUUM (ANALYZE) audit_logs")
    finally:
        database.execute_sql("RESET statement_timeout")  # back to the connection's own (DB_TIMEOUT)


def prune(
    database: Database,
    journal: Journal,
    keys: Keys,
    before: datetime,
    export_dir: Path,
    now: datetime,
    by: str | None = None,
) -> dict[str, Any]:
    """Export, then delete, each chain's rows up to the last one written before `before`; returns the manifest.
    `by`: the person or ticket the operator named (`--actor`), in the AUDIT_PRUNED row.

    A chain is cut at its last row older than `before`: rows are in write order, so the few written just
    after `before` by requests that started before it, and that landed earlier in the chain, go too."""
    cuts: dict[int, tuple[int, str, int]] = {}  # chain -> (floor before, its hash, cut)
    for chain, floor, floor_hash in (
        AuditChain.select(AuditChain.chain, AuditChain.floor_seq, AuditChain.floor_hash)
        .where(AuditChain.chain >= 0)
        .tuples()
    ):
        cut = (
            AuditLog.select(fn.MAX(AuditLog.seq))
            .where((AuditLog.chain == chain) & (AuditLog.seq > floor) & (AuditLog.timestamp < before))
            .scalar()
        )
        if cut:
            cuts[chain] = (floor, floor_hash, cut)
    export_dir.mkdir(parents=True, exist_ok=True)
    name = f"audit-before-{before:%Y-%m-%d}-{now:%Y%m%dT%H%M%S}"
    data_path, manifest_path = export_dir / f"{name}.csv.gz", export_dir / f"{name}.manifest.json"
    if data_path.exists() or manifest_path.exists():  # an earlier export is the only copy of its rows
        raise FileExistsError(f"{data_path.name} already exists in {export_dir}; nothing was removed")
    chains: dict[str, dict[str, Any]] = {}
    count = 0
    with gzip.open(data_path, "wt", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(EXPORT_COLUMNS)
        for chain, (floor, floor_hash, cut) in sorted(cuts.items()):
            last_hash, rows = floor_hash, 0
            for row in _rows(chain, floor + 1, cut):
                writer.writerow([_text(v) for v in row])
                last_hash, rows = row[EXPORT_COLUMNS.index("entry_hash")], rows + 1
            chains[str(chain)] = {
                "from_seq": floor + 1,
                "to_seq": cut,
                "previous_hash": floor_hash,
                "last_hash": last_hash,
            }
            count += rows
    digest = _file_sha256(data_path)
    floors = {chain: [info["to_seq"], info["last_hash"]] for chain, info in chains.items()}
    with database.atomic():
        if is_postgres(database):  # millions of rows: an operator's command, not bound by the requests' DB_TIMEOUT
            database.execute_sql("SET LOCAL statement_timeout = 0")
        for chain, (_, _, cut) in cuts.items():
            AuditLog.delete().where((AuditLog.chain == chain) & (AuditLog.seq <= cut)).execute()
            AuditChain.update(floor_seq=cut, floor_hash=floors[str(chain)][1]).where(
                AuditChain.chain == chain
            ).execute()
        data = {"before": isoformat(before), "rows": count, "export": data_path.name, "sha256": digest}
        operator = replace(_OPERATOR, by=by)
        journal.append([audit_row(AuditEvent(Action.AUDIT_PRUNED, True, None, data), now, None, None, operator)])
        extra = {"floors": floors, "pruned": data}
        checkpoint = checkpoints.take(database, keys, "prune", now, extra)
    manifest = {
        "before": isoformat(before),
        "exported_at": isoformat(now),
        "file": data_path.name,
        "sha256": digest,
        "rows": count,
        "columns": list(EXPORT_COLUMNS),
        "empty_cell": "none (no audit column holds an empty string)",
        "chains": chains,
        "hashing": "entry_hash = sha256(previous entry_hash || sha256(length-prefixed row)); see integrity.py",
        "checkpoint": {
            "id": checkpoint.id,
            "text": checkpoint.payload,
            "signatures": json.loads(checkpoint.signatures),
        },
        "public_keys": keys.listing(),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


NO_MANIFEST = {"manifest": None, "manifest_signature": None}  # a withdrawn report's files are gone: so is their proof
WITHDRAWN_HTML = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Report withdrawn</title></head><body>"
    "<h1>Report withdrawn</h1><p>An erasure of a user's personal data (GDPR art. 17) reached this report; it is "
    "made again from the erased records by <code>python -m otp_service report regenerate</code>.</p></body></html>"
)


def erase(
    database: Database,
    journal: Journal,
    keys: Keys,
    pseudonym_keys: list[bytes],
    user_id: str,
    ctx: RequestContext,
    now: datetime,
    check: checkpoints.Check,
) -> dict[str, Any]:
    """Delete the user's devices and recovery codes and empty the personal fields of their audit rows, in one
    transaction with its audit row (by pseudonym) and a signed checkpoint — all within the tenant `ctx` acts
    in. Stored reports that may name the user go too: the user's own reports are deleted; every other report
    of the tenant whose period ends after the user's first record is withdrawn (its content removed) until
    `report regenerate` makes it again from the erased records.

    On PostgreSQL the devices are deleted first: that takes their rows' locks, so a request deciding on a
    device's old state either committed its audit row before (and this empties it) or waits and finds no
    device (`store.APPLY` records a refusal only on a row it holds).

    The checkpoint is signed only if `check` finds the rows it seals sound; if not, the erasure — a legal
    duty that a broken trail must not block — still happens, unsealed: `checkpoint` is None and `unsealed`
    holds the breaks."""
    tenant_id = ctx.tenant_id
    with database.atomic():
        names = UserSpelling.of(tenant_id, user_id)  # and its spellings from before ids were normalised
        subjects = sorted({integrity.subject(key, name, tenant_id) for key in pseudonym_keys for name in names})
        devices_of = (Device.tenant_id == tenant_id) & Device.user_id.in_(names)
        rows_of = (AuditLog.tenant_id == tenant_id) & AuditLog.user_id.in_(names)
        device_ids = [d for (d,) in Device.select(Device.device_id).where(devices_of).tuples()]
        first_seen = [
            AuditLog.select(fn.MIN(AuditLog.timestamp)).where(rows_of).scalar(),
            Device.select(fn.MIN(Device.created_at)).where(devices_of).scalar(),
        ]
        devices = Device.delete().where(devices_of).execute()
        codes = (
            RecoveryCodes.delete()
            .where((RecoveryCodes.tenant_id == tenant_id) & RecoveryCodes.user_id.in_(names))
            .execute()
        )
        # a stored user report is the user's personal data, whole: it goes too — before the rows are emptied, so
        # that a download of it in flight (which holds the report's row) has committed its row first
        mine = Report.tenant_id == tenant_id
        reports = Report.delete().where(mine & (Report.kind == "user") & Report.subject.in_(names)).execute()
        rows = AuditLog.update(user_id=None, ip_address=None, user_agent=None).where(rows_of).execute()
        # the webhook messages name the user as their audit rows did: queued or delivered, they lose it too (a body
        # is made from the row at each attempt, so a retry or a replay names the user by pseudonym alone)
        messages = (
            WebhookMessage.update(user_id=None)
            .where((WebhookMessage.tenant_id == tenant_id) & WebhookMessage.user_id.in_(names))
            .execute()
        )
        UserSpelling.delete().where((UserSpelling.tenant_id == tenant_id) & (UserSpelling.user_id == user_id)).execute()
        withdrawn = 0
        seen = [_as_datetime(f) for f in first_seen if f is not None]
        if seen:
            withdrawn = (
                Report.update(withdrawn_at=now, html=WITHDRAWN_HTML, data_zip=b"", pdf=None, **NO_MANIFEST)
                .where(mine & (Report.kind != "user") & (Report.period_end > min(seen)))
                .execute()
            )
        data = {
            "subject": subjects[0],
            "subjects": subjects,
            "devices": devices,
            "recovery_codes": codes,
            "rows": rows,
            "webhook_messages": messages,
            "user_reports": reports,
            "reports_withdrawn": withdrawn,
        }
        journal.append([audit_row(AuditEvent(Action.USER_ERASED, True, None, data), now, None, None, ctx)])
        try:
            sealed, unsealed = checkpoints.take_verified(database, keys, "erasure", now, check).id, []
        except checkpoints.Unverified as refused:
            sealed, unsealed = None, refused.breaks
    journal.forget_people()  # the digests it remembers are keyed by user id, address and User-Agent
    return {
        "subject": subjects[0],
        "devices": devices,
        "recovery_codes": codes,
        "audit_rows": rows,
        "webhook_messages": messages,
        "user_reports": reports,
        "reports_withdrawn": withdrawn,
        "device_ids": device_ids,
        "checkpoint": sealed,
        "unsealed": unsealed,
    }


def _as_datetime(value: Any) -> datetime:
    """An aggregate's time (SQLite returns it as text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


_OPERATOR = RequestContext(user_agent="otp-service audit (command line)", actor="command-line")


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(" ", "microseconds")  # the form the chain hashes
    return value  # None is an empty cell: no audit column holds an empty string


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
