"""What the low balance alerts route takes and answers."""
from marshmallow import RAISE, Schema, fields, validate

from ..ledger.tables import MAX_AMOUNT
from .schemas import StrictInteger

THRESHOLD = {"description": "alert when the spendable balance goes below this; null: back to the default"}


class AlertThresholdsSchema(Schema):
    """`{"<credit_type>": threshold}`: the credit types to change (others stay as they are)."""

    class Meta:
        unknown = RAISE  # an unknown credit type is a 422, not ignored

    generation_credits = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=MAX_AMOUNT),
                                       metadata=THRESHOLD)
    ai_tokens = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=MAX_AMOUNT), metadata=THRESHOLD)


class AlertSchema(Schema):
    threshold = fields.Integer(dump_only=True, allow_none=True, metadata={
        "description": "in force: the wallet's own, else LOW_BALANCE_THRESHOLDS'; null: no alert"})
    default = fields.Boolean(dump_only=True, metadata={"description": "the threshold is the default (not set here)"})
    alerted = fields.Boolean(dump_only=True, metadata={
        "description": "balance.low was sent and the balance has not been back at or above the threshold since"})


class AlertsSchema(Schema):
    generation_credits = fields.Nested(AlertSchema, dump_only=True)
    ai_tokens = fields.Nested(AlertSchema, dump_only=True)
