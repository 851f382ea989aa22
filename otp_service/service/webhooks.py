"""A tenant's webhook endpoints, managed through the API: create (the signing secret shown once), list, look at
(with its deliveries counted by status), rotate the secret (the previous one keeps signing for a grace period),
disable and enable, delete, list recent deliveries and replay one.

Each change is one transaction with its audit row, so no endpoint changes unrecorded. The rows name the endpoint,
its URL without query string or fragment (a receiver's URL may carry a token there) and its event types — never
a secret: the secret is derived from the master secret and the endpoint's salt (`webhooks.secrets`), computed for
the one answer that shows it and kept nowhere. None of these actions is in the event catalogue, so managing
webhooks sends no webhook.

An endpoint of another tenant is answered as one that does not exist (404): no answer tells a tenant's client
whether another tenant's endpoint id is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from peewee import Database, fn

from ..audit.rows import SYSTEM, RequestContext, audit_row
from ..config import Settings
from ..core import errors
from ..core.actions import Action
from ..core.keys import Keyring, key_fingerprint
from ..core.transitions import AuditEvent, isoformat, to_datetime
from ..db.database import is_postgres
from ..db.models import Tenant, WebhookDelivery, WebhookEndpoint, WebhookMessage
from ..persistence.store import Store
from ..webhooks import addresses, catalogue, outbox, queue, secrets

MAX_ENDPOINTS = 20  # per tenant: each endpoint is a delivery per event, and a tenant needs a handful
MAX_DESCRIPTION = 256
DEFAULT_GRACE = 86_400  # a rotation's previous secret signs for a day unless told otherwise
MAX_GRACE = 7 * 86_400
DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")
DISABLED, CANCELLED = "DISABLED", "cancelled"


def check_description(value: Any) -> str | None:
    """None, or 1-256 printable characters (it is shown in listings and reports)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_DESCRIPTION or not value.isprintable():
        raise errors.ValidationError(
            f"description must be 1-{MAX_DESCRIPTION} printable characters", details={"field": "description"}
        )
    return value


def check_event_types(value: Any) -> str | None:
    """The filter as stored (`catalogue.normal_types`); None or omitted: every event type."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise errors.InvalidEventType(
            "event_types must be a list of event types (GET /api/v1/webhooks/event-types), or null for all",
            details={"field": "event_types"},
        )
    try:
        return catalogue.normal_types(value)
    except ValueError as exc:
        message = f"{exc} (see GET /api/v1/webhooks/event-types)"
        raise errors.InvalidEventType(message, details={"field": "event_types"}) from None


def check_grace(value: Any) -> int:
    if value is None:
        return DEFAULT_GRACE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GRACE:
        raise errors.ValidationError(
            f"grace_seconds must be a whole number from 0 to {MAX_GRACE} (7 days)", details={"field": "grace_seconds"}
        )
    return value


def event_type_listing() -> list[dict[str, str]]:
    return [{"type": t, "description": catalogue.DESCRIPTIONS[t]} for t in catalogue.EVENT_TYPES]


def endpoint_view(e: WebhookEndpoint, now: datetime) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret, salt or key version."""
    previous = e.previous_valid_until if e.previous_valid_until is not None and e.previous_valid_until > now else None
    return {
        "id": e.id,
        "url": e.url,
        "description": e.description,
        "event_types": catalogue.stored_types(e.event_types),
        "enabled": e.disabled_at is None,
        "created_at": isoformat(e.created_at),
        "disabled_at": isoformat(e.disabled_at),
        "disabled_reason": e.disabled_reason,
        "previous_secret_valid_until": isoformat(previous),
    }


class WebhookEndpoints:
    """Provided by `OtpService` (`blocking`)."""

    settings: Settings
    keyring: Keyring
    database: Database
    store: Store
    unit_of_work: Callable[..., AbstractContextManager[None]]
    _now: Callable[[float | None], float]

    def create_webhook_endpoint(
        self,
        url: Any,
        event_types: Any = None,
        description: Any = None,
        ctx: RequestContext = SYSTEM,
        now: float | None = None,
        resolve: addresses.Resolve | None = None,
    ) -> dict[str, Any]:
        """A new endpoint of the tenant, and its signing secret — shown in this answer only. The URL is checked
        (and its host resolved: by `resolve`, what the facade looked up ahead, or here) before the transaction."""
        settings = self.settings
        reason = addresses.refused_reason(url, settings.webhook_allow_private, settings.production, resolve)
        if reason is not None:
            raise errors.InvalidWebhookUrl(f"This URL cannot receive webhooks: {reason}.", details={"field": "url"})
        types, description = check_event_types(event_types), check_description(description)
        at, salt, version = to_datetime(self._now(now)), secrets.new_salt(), self.keyring.current_version
        key = secrets.signing_key(self.keyring, salt, version)  # before the write: a missing key fails it
        with self.unit_of_work(write=True):
            tenant = Tenant.select(Tenant.id).where(Tenant.id == ctx.tenant_id)
            if is_postgres(self.database):
                tenant.for_update().scalar()  # concurrent creations in one tenant count one after the other
            existing = WebhookEndpoint.select().where(WebhookEndpoint.tenant_id == ctx.tenant_id).count()
            if existing >= MAX_ENDPOINTS:
                raise errors.TooManyEndpoints(
                    f"This tenant has {existing} webhook endpoints, the most it may have; delete one first."
                )
            endpoint_id = WebhookEndpoint.insert(
                tenant_id=ctx.tenant_id,
                url=url,
                description=description,
                event_types=types,
                salt=salt,
                key_version=version,
                key_hash=key_fingerprint(key),
                created_at=at,
            ).execute()
            endpoint = WebhookEndpoint.get_by_id(endpoint_id)
            self._audit_endpoint(Action.WEBHOOK_ENDPOINT_CREATED, endpoint, at, ctx)
        return {**endpoint_view(endpoint, at), "secret": secrets.shown(key)}

    def webhook_queue_status(self, now: float | None = None) -> tuple[float, int]:
        """What the webhook metrics say (`queue.status`), for a scrape."""
        with self.unit_of_work():
            return queue.status(to_datetime(self._now(now)))

    def list_webhook_endpoints(self, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict[str, Any]:
        at = to_datetime(self._now(now))
        with self.unit_of_work():
            query = WebhookEndpoint.select().where(WebhookEndpoint.tenant_id == ctx.tenant_id)
            return {"endpoints": [endpoint_view(e, at) for e in query.order_by(WebhookEndpoint.id)]}

    def webhook_endpoint(self, endpoint_id: int, ctx: RequestContext = SYSTEM, now: float | None = None) -> dict:
        """One endpoint, with its deliveries counted by status (every status, zero included)."""
        at = to_datetime(self._now(now))
        with self.unit_of_work():
            endpoint = _endpoint(endpoint_id, ctx)
            counts = dict.fromkeys(DELIVERY_STATUSES, 0)
            query = (
                WebhookDelivery.select(WebhookDelivery.status, fn.COUNT(WebhookDelivery.id))
                .where(WebhookDelivery.endpoint_id == endpoint.id)
                .group_by(WebhookDelivery.status)
            )
            counts.update(dict(query.tuples()))
        return {**endpoint_view(endpoint, at), "deliveries": counts}

    def delete_webhook_endpoint(
        self, endpoint_id: int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict[str, Any]:
        """The endpoint and its deliveries go; so do the messages no other endpoint still has a delivery of (they
        can hold a user's id, and nothing would ever read them again)."""
        at = to_datetime(self._now(now))
        with self.unit_of_work(write=True):
            endpoint = _endpoint(endpoint_id, ctx, lock=is_postgres(self.database))
            theirs = WebhookDelivery.endpoint_id == endpoint.id
            pending = WebhookDelivery.select().where(theirs & (WebhookDelivery.status == outbox.PENDING)).count()
            orphans = _delete_orphans(endpoint.id)
            deleted = WebhookDelivery.delete().where(theirs).execute()
            WebhookEndpoint.delete().where(WebhookEndpoint.id == endpoint.id).execute()
            self._audit_endpoint(
                Action.WEBHOOK_ENDPOINT_DELETED, endpoint, at, ctx, cancelled=pending, deliveries=deleted
            )
        return {"id": endpoint.id, "deleted": True, "pending_cancelled": pending, "messages_deleted": orphans}

    def rotate_webhook_endpoint(
        self, endpoint_id: int, grace_seconds: Any = None, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict[str, Any]:
        """A new signing secret, shown in this answer only; the current one moves to previous_* and keeps signing
        (each delivery carries both signatures) until now + grace, so receivers can switch without a gap."""
        grace, at = check_grace(grace_seconds), to_datetime(self._now(now))
        salt, version = secrets.new_salt(), self.keyring.current_version
        key = secrets.signing_key(self.keyring, salt, version)
        with self.unit_of_work(write=True):
            endpoint = _endpoint(endpoint_id, ctx, lock=is_postgres(self.database))
            until = at + timedelta(seconds=grace)
            WebhookEndpoint.update(
                previous_salt=endpoint.salt,
                previous_key_version=endpoint.key_version,
                previous_valid_until=until,
                previous_key_hash=endpoint.key_hash,
                salt=salt,
                key_version=version,
                key_hash=key_fingerprint(key),
            ).where(WebhookEndpoint.id == endpoint.id).execute()
            endpoint = WebhookEndpoint.get_by_id(endpoint.id)
            self._audit_endpoint(
                Action.WEBHOOK_ENDPOINT_ROTATED, endpoint, at, ctx, previous_valid_until=isoformat(until)
            )
        return {**endpoint_view(endpoint, at), "secret": secrets.shown(key)}

    def disable_webhook_endpoint(
        self, endpoint_id: int, ctx: RequestContext = SYSTEM, now: float | None = None, reason: str = DISABLED
    ) -> dict[str, Any]:
        """No more events for the endpoint: it takes no new messages, and its pending deliveries are cancelled
        (replay them after enabling it, if they still matter). Disabling a disabled endpoint changes nothing and
        writes nothing."""
        at = to_datetime(self._now(now))
        with self.unit_of_work(write=True):
            endpoint = _endpoint(endpoint_id, ctx, lock=is_postgres(self.database))
            if endpoint.disabled_at is not None:
                return {**endpoint_view(endpoint, at), "pending_cancelled": 0}
            WebhookEndpoint.update(disabled_at=at, disabled_reason=reason).where(
                WebhookEndpoint.id == endpoint.id
            ).execute()
            cancelled = (
                WebhookDelivery.update(status=CANCELLED, next_attempt_at=None)
                .where((WebhookDelivery.endpoint_id == endpoint.id) & (WebhookDelivery.status == outbox.PENDING))
                .execute()
            )
            endpoint = WebhookEndpoint.get_by_id(endpoint.id)
            self._audit_endpoint(
                Action.WEBHOOK_ENDPOINT_DISABLED, endpoint, at, ctx, reason=reason, cancelled=cancelled
            )
        return {**endpoint_view(endpoint, at), "pending_cancelled": cancelled}

    def enable_webhook_endpoint(
        self, endpoint_id: int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict[str, Any]:
        """Events again from now on (cancelled deliveries stay cancelled: replay the ones wanted). Enabling an
        enabled endpoint changes nothing and writes nothing."""
        at = to_datetime(self._now(now))
        with self.unit_of_work(write=True):
            endpoint = _endpoint(endpoint_id, ctx, lock=is_postgres(self.database))
            if endpoint.disabled_at is None:
                return endpoint_view(endpoint, at)
            was = endpoint.disabled_reason
            WebhookEndpoint.update(disabled_at=None, disabled_reason=None).where(
                WebhookEndpoint.id == endpoint.id
            ).execute()
            endpoint = WebhookEndpoint.get_by_id(endpoint.id)
            self._audit_endpoint(Action.WEBHOOK_ENDPOINT_ENABLED, endpoint, at, ctx, was=was)
        return endpoint_view(endpoint, at)

    def webhook_deliveries(
        self,
        endpoint_id: int,
        status: str | None = None,
        limit: int = 50,
        before: int | None = None,
        ctx: RequestContext = SYSTEM,
    ) -> dict[str, Any]:
        """The endpoint's deliveries, newest first; `before`: the `next_before` of the previous page."""
        with self.unit_of_work():
            endpoint = _endpoint(endpoint_id, ctx)
            query = (
                WebhookDelivery.select(WebhookDelivery, WebhookMessage.event_type)
                .join(WebhookMessage, on=WebhookMessage.id == WebhookDelivery.message_id)
                .where(WebhookDelivery.endpoint_id == endpoint.id)
            )
            if status is not None:
                query = query.where(WebhookDelivery.status == status)
            if before is not None:
                query = query.where(WebhookDelivery.id < before)
            found = list(query.order_by(WebhookDelivery.id.desc()).limit(limit).objects())
        return {
            "endpoint_id": endpoint.id,
            "deliveries": [_delivery_view(d) for d in found],
            "next_before": found[-1].id if len(found) == limit else None,
        }

    def replay_webhook_delivery(
        self, endpoint_id: int, delivery_id: int, ctx: RequestContext = SYSTEM, now: float | None = None
    ) -> dict[str, Any]:
        """The delivery's message queued again for the endpoint, due now: the same message (same webhook-id, so a
        receiver that saw it can tell), a new delivery. Refused for a disabled endpoint: it would only be
        cancelled."""
        at = to_datetime(self._now(now))
        with self.unit_of_work(write=True):
            endpoint = _endpoint(endpoint_id, ctx, lock=is_postgres(self.database))
            delivery = WebhookDelivery.get_or_none(
                (WebhookDelivery.id == delivery_id) & (WebhookDelivery.endpoint_id == endpoint.id)
            )
            message = WebhookMessage.get_or_none(WebhookMessage.id == delivery.message_id) if delivery else None
            if delivery is None or message is None:
                raise errors.DeliveryNotFound(f"Endpoint {endpoint.id} has no delivery {delivery_id}.")
            if endpoint.disabled_at is not None:
                raise errors.EndpointDisabled(
                    f"Endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); enable it before replaying."
                )
            outbox.deliver_to(message.id, [endpoint.id], at)
            replay = (
                WebhookDelivery.select(fn.MAX(WebhookDelivery.id))
                .where((WebhookDelivery.message_id == message.id) & (WebhookDelivery.endpoint_id == endpoint.id))
                .scalar()
            )
            self._audit_endpoint(
                Action.WEBHOOK_DELIVERY_REPLAYED,
                endpoint,
                at,
                ctx,
                delivery=delivery.id,
                replay=replay,
                message=catalogue.message_ref(message.id),
                event_type=message.event_type,
            )
        return {
            "endpoint_id": endpoint.id,
            "delivery_id": replay,
            "replay_of": delivery.id,
            "message_id": catalogue.message_ref(message.id),
            "event_type": message.event_type,
            "status": outbox.PENDING,
            "next_attempt_at": isoformat(at),
        }

    def _audit_endpoint(
        self,
        action: Action,
        endpoint: WebhookEndpoint,
        at: datetime,
        ctx: RequestContext,
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        """The change's row, in its transaction: the endpoint, its URL without query or user info, its event types."""
        data = {
            "endpoint": endpoint.id,
            "url": addresses.without_secrets(endpoint.url),
            "event_types": catalogue.stored_types(endpoint.event_types),
            **extra,
        }
        self.store.record([audit_row(AuditEvent(action, True, reason, data), at, None, None, ctx)])


def _endpoint(endpoint_id: int, ctx: RequestContext, lock: bool = False) -> WebhookEndpoint:
    """The tenant's endpoint (locked until the transaction ends, on PostgreSQL, when it is to change), or 404
    — also for another tenant's."""
    query = WebhookEndpoint.select().where(
        (WebhookEndpoint.id == endpoint_id) & (WebhookEndpoint.tenant_id == ctx.tenant_id)
    )
    found = (query.for_update() if lock else query).first()
    if found is None:
        raise errors.EndpointNotFound(f"No webhook endpoint with id {endpoint_id}.")
    return found


def _delete_orphans(endpoint_id: int) -> int:
    """Delete the messages only this endpoint has deliveries of (before its deliveries go); how many. In SQL, not
    as a list of ids: an endpoint may have had millions of deliveries."""
    other = WebhookDelivery.alias()
    others = other.select(other.id).where((other.message_id == WebhookMessage.id) & (other.endpoint_id != endpoint_id))
    theirs = WebhookDelivery.select(WebhookDelivery.message_id).where(WebhookDelivery.endpoint_id == endpoint_id)
    return WebhookMessage.delete().where(WebhookMessage.id.in_(theirs) & ~fn.EXISTS(others)).execute()


def _delivery_view(d: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "message_id": catalogue.message_ref(d.message_id),
        "event_type": d.event_type,  # joined from its message (`objects()`)
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": isoformat(d.next_attempt_at),
        "last_attempt_at": isoformat(d.last_attempt_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "delivered_at": isoformat(d.delivered_at),
        "created_at": isoformat(d.created_at),
    }
