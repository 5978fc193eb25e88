"""Webhook endpoints (administrators only): `/api/admin/webhooks`. The outbox, the deliveries and
the signing are creditapp/webhooks'; this is the HTTP side."""
from flask import current_app

from .. import users
from ..auth import caller_must_exist, current_user_id, require_login, require_login_token
from ..webhooks import delivery, endpoints
from ..webhooks.queue import webhook_queue
from ..webhooks.settings import Settings
from .bodies import Blueprint
from .openapi import INVALID, UNAUTHORIZED, document
from .schemas import ErrorSchema
from .webhook_schemas import (
    DeliveryPageSchema, DeliveryQuerySchema, DeliverySchema, EndpointChangeSchema, EndpointInputSchema,
    EndpointListSchema, EndpointSchema, NewEndpointSchema,
)

blp = Blueprint("webhook_endpoints", __name__, url_prefix="/api/admin/webhooks",
                description="Outgoing webhooks: endpoints, signed deliveries and their attempts.")
blp.before_request(require_login())
FORBIDDEN = (403, ErrorSchema, "Not an administrator")
UNKNOWN = (404, ErrorSchema, "unknown_webhook_endpoint")


def _settings() -> Settings:
    return Settings.from_config(current_app.config)


def administrator() -> int:
    require_login_token()  # an API key, however wide, never reconfigures where events go
    admin_id = current_user_id()
    with caller_must_exist():
        users.require_admin(admin_id)
    return admin_id


@blp.post("")
@blp.arguments(EndpointInputSchema)
@blp.response(201, NewEndpointSchema, description="Subscribed; `secret` is shown this once")
@blp.alt_response(422, schema=ErrorSchema, description="validation_error, or invalid_webhook_url (not http(s), "
                  "credentials in it, or a private, loopback or link-local address)")
@document(responses=[UNAUTHORIZED, FORBIDDEN])
def create_endpoint(body):
    """Subscribe a URL to event types; every delivery to it is signed with the secret answered."""
    return endpoints.create(body["url"], body["events"], body["description"], _settings(),
                            actor_user_id=administrator())


@blp.get("")
@blp.response(200, EndpointListSchema)
@document(responses=[UNAUTHORIZED, FORBIDDEN])
def list_endpoints():
    """Every endpoint, with whether it is disabled and why."""
    administrator()
    return {"items": endpoints.all_endpoints()}


@blp.get("/<id:endpoint_id>")
@blp.response(200, EndpointSchema)
@document(responses=[UNAUTHORIZED, FORBIDDEN, UNKNOWN])
def get_endpoint(endpoint_id):
    """One endpoint (its secret is not shown again)."""
    administrator()
    return endpoints.get(endpoint_id)


@blp.patch("/<id:endpoint_id>")
@blp.arguments(EndpointChangeSchema)
@blp.response(200, EndpointSchema)
@blp.alt_response(422, schema=ErrorSchema, description="validation_error, or invalid_webhook_url")
@document(responses=[UNAUTHORIZED, FORBIDDEN, UNKNOWN])
def update_endpoint(changes, endpoint_id):
    """Change the URL, the event types or the description; `"disabled": false` enables it again."""
    return endpoints.update_endpoint(endpoint_id, changes, _settings(), actor_user_id=administrator())


@blp.delete("/<id:endpoint_id>")
@blp.response(204)
@document(responses=[UNAUTHORIZED, FORBIDDEN, UNKNOWN])
def delete_endpoint(endpoint_id):
    """Remove the endpoint and its deliveries; nothing more is sent to it."""
    endpoints.delete_endpoint(endpoint_id, actor_user_id=administrator())
    return ""


@blp.get("/<id:endpoint_id>/deliveries")
@blp.arguments(DeliveryQuerySchema, location="query")
@blp.response(200, DeliveryPageSchema)
@document(responses=[UNAUTHORIZED, FORBIDDEN, UNKNOWN, INVALID])
def list_deliveries(query, endpoint_id):
    """The endpoint's deliveries, newest first, each with every attempt: status, response code, time, error."""
    administrator()
    endpoints.get(endpoint_id)
    before = int(query["cursor"]) if query["cursor"] else None
    items = delivery.page(endpoint_id, limit=query["limit"] + 1, before=before)
    more = len(items) > query["limit"]
    items = items[:query["limit"]]
    return {"items": items, "next_cursor": str(items[-1]["id"]) if more else None}


@blp.post("/<id:endpoint_id>/deliveries/<id:delivery_id>/retry")
@blp.response(202, DeliverySchema, description="Pending again, due now: an attempt is on its way")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_webhook_delivery")
@blp.alt_response(409, schema=ErrorSchema, description="webhook_endpoint_disabled: enable it first")
@document(responses=[UNAUTHORIZED, FORBIDDEN])
def retry_delivery(endpoint_id, delivery_id):
    """Send a delivery again now, whatever it came to (same webhook-id, a new signature)."""
    answer = delivery.retry(endpoint_id, delivery_id, actor_user_id=administrator())
    webhook_queue().send(delivery_id)
    return answer
