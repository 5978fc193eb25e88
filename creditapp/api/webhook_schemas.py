"""What the webhook endpoint routes take and answer."""
from marshmallow import Schema, fields, validate

from ..webhooks.addresses import MAX_URL_LENGTH
from ..webhooks.outbox import EVENT_TYPES
from .schemas import QueryInteger, StrictBoolean, Text

EVENTS = {"description": f"event types: {', '.join(EVENT_TYPES)}"}


class EndpointInputSchema(Schema):
    url = Text(required=True, validate=validate.Length(min=1, max=MAX_URL_LENGTH), metadata={
        "description": "http(s), no credentials, a public address (unless WEBHOOK_ALLOW_PRIVATE)"})
    events = fields.List(Text(validate=validate.OneOf(EVENT_TYPES)), required=True,
                         validate=validate.Length(min=1, max=len(EVENT_TYPES)), metadata=EVENTS)
    description = Text(load_default=None, allow_none=True, validate=validate.Length(max=500))


class EndpointChangeSchema(Schema):
    url = Text(validate=validate.Length(min=1, max=MAX_URL_LENGTH))
    events = fields.List(Text(validate=validate.OneOf(EVENT_TYPES)),
                         validate=validate.Length(min=1, max=len(EVENT_TYPES)), metadata=EVENTS)
    description = Text(allow_none=True, validate=validate.Length(max=500))
    disabled = StrictBoolean(metadata={"description": "false: enabled again, its run of failures forgotten"})


class EndpointSchema(Schema):
    id = fields.Integer(dump_only=True)
    url = fields.String(dump_only=True)
    events = fields.List(fields.String(), dump_only=True)
    description = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)
    disabled = fields.Boolean(dump_only=True)
    disabled_at = fields.DateTime(dump_only=True, allow_none=True)
    disabled_reason = fields.String(dump_only=True, allow_none=True)
    failing_since = fields.DateTime(dump_only=True, allow_none=True, metadata={
        "description": "the first failed attempt since the last success; WEBHOOK_DISABLE_AFTER_DAYS after it, "
                       "a failure disables the endpoint"})


class NewEndpointSchema(EndpointSchema):
    secret = fields.String(dump_only=True, metadata={
        "description": "whsec_...: verify the webhook-signature header with it (shown this once)"})


class EndpointListSchema(Schema):
    items = fields.List(fields.Nested(EndpointSchema), dump_only=True)


class AttemptSchema(Schema):
    number = fields.Integer(dump_only=True)
    status = fields.String(dump_only=True, metadata={"description": "delivering, succeeded, failed or lost"})
    response_code = fields.Integer(dump_only=True, allow_none=True)
    started_at = fields.DateTime(dump_only=True)
    finished_at = fields.DateTime(dump_only=True, allow_none=True)
    duration_ms = fields.Integer(dump_only=True, allow_none=True)
    error = fields.String(dump_only=True, allow_none=True)


class DeliverySchema(Schema):
    id = fields.Integer(dump_only=True)
    event_id = fields.Integer(dump_only=True)
    event_type = fields.String(dump_only=True)
    webhook_id = fields.String(dump_only=True, metadata={"description": "the webhook-id header: the same on retries"})
    status = fields.String(dump_only=True, metadata={"description": "pending, succeeded, failed or skipped"})
    attempts = fields.List(fields.Nested(AttemptSchema), dump_only=True)
    next_attempt_at = fields.DateTime(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    delivered_at = fields.DateTime(dump_only=True, allow_none=True)


class DeliveryPageSchema(Schema):
    items = fields.List(fields.Nested(DeliverySchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next (older) page; null on the last page"})


class DeliveryQuerySchema(Schema):
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Regexp(r"[1-9][0-9]{0,17}\Z"))
