"""The webhook endpoints' handlers (scope `webhooks`, in the client's tenant): parse the request, await one call
of the service (`service.webhooks`), answer in the JSON envelope. What the rules are — which URLs, which event
types, how long a rotation's grace — is the service's, so every caller gets the same answer."""

from __future__ import annotations

from ..core import errors, validation
from ..service.webhooks import DELIVERY_STATUSES, event_type_listing
from .access import ApiHandler

_SECRET_ONCE = "Store the secret now: it is never shown again."


def _id(value: str, what: str) -> int:
    """A path's numeric id; anything else is an id no endpoint or delivery has (404, as for another tenant's)."""
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        error = errors.DeliveryNotFound if what == "delivery" else errors.EndpointNotFound
        raise error(f"No {what} with id {value[:32]!r}.")
    return int(value)


def _only(body: dict, fields: tuple[str, ...]) -> None:
    """A field this route does not know is refused, not ignored: `"events": [...]` for `event_types` would make an
    endpoint that takes every event — the opposite of what was asked."""
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise errors.ValidationError(
            f"Unknown field(s): {', '.join(unknown)[:200]}; this route takes {', '.join(fields)}",
            details={"field": unknown[0][:64]},
        )


class WebhookEventTypesHandler(ApiHandler):
    async def get(self) -> None:
        self.respond({"event_types": event_type_listing()}, "Event types an endpoint can take")


class WebhookEndpointsHandler(ApiHandler):
    async def get(self) -> None:
        self.respond(await self.service.list_webhook_endpoints(self.context), "Webhook endpoints of the tenant")

    async def post(self) -> None:
        body = self.json_body()
        _only(body, ("url", "event_types", "description"))
        if "url" not in body:
            raise errors.InvalidWebhookUrl("url is required", details={"field": "url"})
        data = await self.service.create_webhook_endpoint(
            body["url"], body.get("event_types"), body.get("description"), self.context
        )
        self.respond(data, f"Webhook endpoint created. {_SECRET_ONCE}", 201)


class WebhookEndpointHandler(ApiHandler):
    async def get(self, endpoint_id: str) -> None:
        data = await self.service.webhook_endpoint(_id(endpoint_id, "webhook endpoint"), self.context)
        self.respond(data, "Webhook endpoint found")

    async def delete(self, endpoint_id: str) -> None:
        data = await self.service.delete_webhook_endpoint(_id(endpoint_id, "webhook endpoint"), self.context)
        self.respond(data, "Webhook endpoint deleted, with its deliveries")


class WebhookRotateHandler(ApiHandler):
    async def post(self, endpoint_id: str) -> None:
        endpoint = _id(endpoint_id, "webhook endpoint")
        body = self.json_body() if self._body else {}  # no body: the default grace
        _only(body, ("grace_seconds",))
        grace = body.get("grace_seconds")
        data = await self.service.rotate_webhook_endpoint(endpoint, grace, self.context)
        until = data["previous_secret_valid_until"]
        kept = f"; the previous one signs too until {until}" if until else ""
        self.respond(data, f"Signing secret rotated{kept}. {_SECRET_ONCE}")


class WebhookDisableHandler(ApiHandler):
    async def post(self, endpoint_id: str) -> None:
        data = await self.service.disable_webhook_endpoint(_id(endpoint_id, "webhook endpoint"), self.context)
        self.respond(data, "Webhook endpoint disabled; its pending deliveries are cancelled")


class WebhookEnableHandler(ApiHandler):
    async def post(self, endpoint_id: str) -> None:
        data = await self.service.enable_webhook_endpoint(_id(endpoint_id, "webhook endpoint"), self.context)
        self.respond(data, "Webhook endpoint enabled")


class WebhookDeliveriesHandler(ApiHandler):
    async def get(self, endpoint_id: str) -> None:
        endpoint = _id(endpoint_id, "webhook endpoint")
        status = self.get_query_argument("status", None)
        if status is not None and status not in DELIVERY_STATUSES:
            raise errors.ValidationError(
                f"status must be one of {', '.join(DELIVERY_STATUSES)}", details={"field": "status"}
            )
        limit = validation.limit(self.get_query_argument("limit", None))
        before = validation.cursor(self.get_query_argument("before", None))
        data = await self.service.webhook_deliveries(endpoint, status, limit, before, self.context)
        self.respond(data, "Deliveries of the endpoint, newest first")


class WebhookReplayHandler(ApiHandler):
    async def post(self, endpoint_id: str, delivery_id: str) -> None:
        endpoint, delivery = _id(endpoint_id, "webhook endpoint"), _id(delivery_id, "delivery")
        data = await self.service.replay_webhook_delivery(endpoint, delivery, self.context)
        self.respond(data, "The message is queued again for the endpoint", 202)
