"""What the plan and subscription routes take and answer."""
from marshmallow import Schema, fields, validate

from .schemas import Text

AMOUNTS = {"description": "credit type to a whole number"}


class PlanSchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    price = fields.Integer(dump_only=True, metadata={"description": "per period, in the currency's minor unit; 0 = free"})
    currency = fields.String(dump_only=True)
    interval = fields.String(dump_only=True, allow_none=True, metadata={"description": "day, week, month or year"})
    interval_seconds = fields.Integer(dump_only=True, allow_none=True, metadata={
        "description": "the period's length when it is fixed (not for month and year)"})
    allowance = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True, metadata=AMOUNTS)
    rollover_max = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True, metadata=AMOUNTS)
    priority = fields.Integer(dump_only=True)


class PlanListSchema(Schema):
    plans = fields.List(fields.Nested(PlanSchema), dump_only=True)


class PendingSchema(Schema):
    id = fields.Integer(dump_only=True)
    plan = fields.String(dump_only=True)
    checkout_url = fields.String(dump_only=True)


class SubscriptionSchema(Schema):
    """The account's plan now. `remaining`: what is left of this period's allowance and rollover."""

    id = fields.Integer(dump_only=True, allow_none=True, metadata={"description": "null on the default plan"})
    plan = fields.String(dump_only=True, allow_none=True, metadata={"description": "null: no plan at all"})
    name = fields.String(dump_only=True, allow_none=True)
    status = fields.String(dump_only=True, metadata={"description": "active, past_due, canceled, or none"})
    provider = fields.String(dump_only=True, allow_none=True, metadata={"description": "where it is paid; null: free"})
    period_start = fields.DateTime(dump_only=True, allow_none=True)
    period_end = fields.DateTime(dump_only=True, allow_none=True)
    cancel_at_period_end = fields.Boolean(dump_only=True)
    allowance = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True, metadata=AMOUNTS)
    rollover_max = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True, metadata=AMOUNTS)
    remaining = fields.Dict(keys=fields.String(), values=fields.Integer(), dump_only=True, metadata=AMOUNTS)
    pending = fields.Nested(PendingSchema, dump_only=True, allow_none=True, metadata={
        "description": "a paid plan's checkout, open: it takes effect when its first invoice is paid"})
    checkout_url = fields.String(dump_only=True, metadata={"description": "where to send the buyer (201 only)"})


class SubscriptionChoiceSchema(Schema):
    plan = Text(required=True, validate=validate.Length(min=1, max=64))
