"""The audit trail's integrity, as `OtpService` (`blocking`) offers it: verifying the chains against the
signed checkpoints in one snapshot, signing checkpoints (on demand, periodically), pruning, and erasing a
user (GDPR art. 17). The work itself is in `audit`; this holds the transactions and the decisions about
when the service signs (never over a trail it could not verify)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Any

from peewee import Database

from .. import metrics
from ..audit import chain as integrity
from ..audit import checkpoints, retention
from ..audit import verify as audit_verify
from ..audit.journal import Journal
from ..audit.rows import SYSTEM, RequestContext
from ..config import Settings
from ..core import errors, signing
from ..core.actions import Action
from ..core.keys import Keyring
from ..core.transitions import isoformat, to_datetime
from ..persistence.engine import Engine
from ..persistence.store import PostgresStore, Store

log = logging.getLogger("otp_service.service")


class AuditTrail:
    """Provided by `OtpService`."""

    settings: Settings
    keyring: Keyring
    database: Database
    journal: Journal
    audit_keys: checkpoints.Keys
    store: Store
    engine: Engine
    _last_signed: tuple[int, str] | None
    _refused: integrity.Break | None  # the first break the last refused periodic checkpoint found
    unit_of_work: Callable[..., AbstractContextManager[None]]
    query: Callable[..., Any]
    record: Callable[..., None]
    _now: Callable[[float | None], float]

    @property
    def pseudonym_keys(self) -> list[bytes]:
        """The pseudonym key under every configured master secret version (rows keep the one they were written with)."""
        return [self.keyring.purpose_key(integrity.PURPOSE, v) for v in reversed(self.keyring.versions)]

    def verify_audit(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        record: bool = True,
        expected: tuple[str, ...] = (),
    ) -> audit_verify.Result:
        """Recompute the chains and check them against the signed checkpoints, in one snapshot (PostgreSQL:
        REPEATABLE READ), so writes, erasures and prunes meanwhile cannot look like tampering. With `record`,
        an intact result is sealed by a checkpoint; a broken one is audited (`AUDIT_VERIFIED`, failed) and
        sealed by nothing: the service never signs what it could not verify."""
        now = to_datetime(self._now(None))
        unsealed = now - timedelta(seconds=2 * self.settings.audit_checkpoint_seconds + 60)  # two periods missed
        args = (self.database, self.audit_keys.public, self.pseudonym_keys, start, end)
        snapshot = isinstance(self.store, PostgresStore)  # SQLite: a write transaction would stop the writers
        with self.unit_of_work(), self.database.atomic() if snapshot else nullcontext():
            if snapshot:
                self.database.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            result = audit_verify.verify(*args, unsealed_before=unsealed, expected=expected)
        if record and result.intact:
            self.checkpoint("verified", {"verification": {"intact": True, "rows": result.rows}})
        elif record:
            data = {"breaks": len(result.breaks), "rows": result.rows, "first": result.lines()[1][:200]}
            self.record(Action.AUDIT_VERIFIED, SYSTEM, reason="BROKEN", data=data)
        return result

    def checkpoint(self, reason: str = "on-demand", extra: dict[str, Any] | None = None) -> int:
        """Sign the chains' heads now, once the rows since the last checkpoint verify (as the periodic one does):
        on demand, at a report or after a verification, a signature must not vouch for a break. Raises
        checkpoints.Unverified (nothing signed; logged and audited once per break)."""
        try:
            with self.unit_of_work(write=True):
                at = to_datetime(self._now(None))
                return checkpoints.take_verified(self.database, self.audit_keys, reason, at, self._sealable, extra).id
        except checkpoints.Unverified as refused:
            self._refuse_to_seal(refused.breaks)
            raise

    def integrity_statement(self, start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
        """What a report states about its records, signing nothing: the period's verification against the
        checkpoints that existed before it (`checkpoint`: the latest that verified, with its age when checked),
        the key that signs them with its full public-key fingerprint, and the environment — so a report can
        neither vouch for itself nor pass a development key's signature off as production's."""
        checked_at = to_datetime(self._now(None))
        result = self.verify_audit(start, end, record=False)
        keys = self.audit_keys
        return result.as_dict() | {
            "checked_at": isoformat(checked_at),
            "environment": self.settings.environment,
            "signing_key": {"key_id": keys.key_id, "fingerprint": signing.fingerprint(keys.signing)},
            "fingerprints": keys.fingerprints(),
            "findings": integrity.findings(result.breaks),
        }

    def checkpoint_if_due(self) -> tuple[int, str] | None:
        """(id, SHA-256 of its signed text) of the checkpoint taken, or None when none was due — or when the
        last checkpoint this process signed is gone or altered: it will not sign over that."""
        with self.unit_of_work():
            if self._last_signed is not None and not checkpoints.still_there(*self._last_signed):
                metrics.AUDIT_CHECKPOINTS_MISSING.inc()
                log.error(
                    "audit checkpoint #%s that this process signed is gone or altered: not signing",
                    self._last_signed[0],
                )
                return None
            try:
                at = to_datetime(self._now(None))
                taken = checkpoints.take_if_due(self.database, self.audit_keys, self.settings, at, self._sealable)
            except checkpoints.Unverified as refused:
                self._refuse_to_seal(refused.breaks)
                return None
        if taken is None:
            return None
        self._last_signed = (taken.id, hashlib.sha256(taken.payload.encode("utf-8")).hexdigest())
        return self._last_signed

    def _sealable(self, snapshot: tuple[integrity.Head, ...]) -> list[integrity.Break]:
        """The breaks among the rows a checkpoint would seal (only those since the last one): the check every
        checkpoint but a prune's makes (a prune verifies the whole trail first)."""
        return audit_verify.since_last_checkpoint(self.database, self.audit_keys.public, self.pseudonym_keys, snapshot)

    def _refuse_to_seal(self, breaks: list[integrity.Break]) -> None:
        """Nothing was signed: say so in the log every time (where, not what: no row's content, so no personal
        data), and audit it once per first break (`AUDIT_VERIFIED`, failed: counted in /metrics) — the task
        asks every few seconds. `audit verify` goes on reporting the break (the rows stay unsealed too)."""
        first = breaks[0]
        where = f"chain {first.chain}, place {first.seq}, row id {first.row_id}"
        log.error("audit rows since the last checkpoint do not verify (%s at %s): not signing", first.kind, where)
        if self._refused == first:
            return
        self._refused = first
        data = {"breaks": len(breaks), "first": f"{first.kind} at {where}", "checkpoint": "refused"}
        self.record(Action.AUDIT_VERIFIED, SYSTEM, reason="BROKEN", data=data)

    def prune_audit(self, before: datetime, export_dir: Any, by: str | None = None) -> dict[str, Any]:
        """Refused on a trail that does not verify: pruning must not bury a break (or trust a forged floor).
        `by`: the person or ticket named with `--actor`, in the AUDIT_PRUNED row."""
        checked = self.verify_audit(record=False)
        if not checked.intact:
            raise errors.AuditBroken("The audit trail does not verify; nothing was pruned. " + checked.lines()[0])
        with self.unit_of_work():
            at = to_datetime(self._now(None))
            manifest = retention.prune(self.database, self.journal, self.audit_keys, before, export_dir, at, by)
            retention.vacuum(self.database)
            return manifest

    def erase_user(self, user_id: str, ctx: RequestContext = SYSTEM) -> dict[str, Any]:
        """GDPR art. 17: the user's devices and recovery codes, and the personal data in their audit rows."""
        with self.unit_of_work():
            at = to_datetime(self._now(None))
            erased = retention.erase(
                self.database, self.journal, self.audit_keys, self.pseudonym_keys, user_id, ctx, at, self._sealable
            )
        if unsealed := erased.pop("unsealed"):  # erased all the same, but not sealed over a break
            self._refuse_to_seal(unsealed)
        for device_id in erased.pop("device_ids"):
            self.engine.cache.forget((ctx.tenant_id, device_id))
        return {"user_id": user_id, **erased}

    def audit_status(self) -> dict[str, Any]:
        """The last verification's time and result, and when the last checkpoint was signed."""
        return self.query(checkpoints.status)
