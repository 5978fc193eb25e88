"""What the purchase routes take and answer."""
from marshmallow import Schema, fields, validate

from ..ledger.tables import TEAM_WALLETS
from ..payments.tables import STATUSES
from .schemas import QueryInteger, StrictInteger, Text


class PackSchema(Schema):
    id = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    credit_type = fields.String(dump_only=True)
    credits = fields.Integer(dump_only=True)
    price = fields.Integer(dump_only=True, metadata={"description": "in the currency's minor unit (cents)"})
    currency = fields.String(dump_only=True, metadata={"description": "ISO 4217, lower case"})
    priority = fields.Integer(dump_only=True)
    expires_in_days = fields.Integer(dump_only=True, allow_none=True)


class PackListSchema(Schema):
    packs = fields.List(fields.Nested(PackSchema), dump_only=True)


class PurchaseCreateSchema(Schema):
    pack = Text(required=True, validate=validate.Length(min=1, max=64))
    team = StrictInteger(load_default=None, validate=validate.Range(min=1, max=2**31 - 1), metadata={
        "description": "buy for this team's wallet (its owner only)"})


class PurchaseSchema(Schema):
    """A purchase; what it costs and gives was frozen when it was made."""

    id = fields.Integer(dump_only=True)
    user_id = fields.Integer(dump_only=True)
    team = fields.Method("_team", dump_only=True, allow_none=True, metadata={
        "description": "the team whose wallet it is for; null for the buyer's own"})
    pack = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    credit_type = fields.String(dump_only=True)
    credits = fields.Integer(dump_only=True)
    price = fields.Integer(dump_only=True)
    currency = fields.String(dump_only=True)
    status = fields.String(dump_only=True, metadata={"description": ", ".join(STATUSES)})
    provider = fields.String(dump_only=True)
    checkout_url = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "where the buyer pays (while the purchase is open)"})
    created_at = fields.AwareDateTime(dump_only=True)
    expires_at = fields.AwareDateTime(dump_only=True, metadata={"description": "when the checkout lapses"})
    paid_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    lot_id = fields.Integer(dump_only=True, allow_none=True, metadata={"description": "the lot it granted"})
    refunded = fields.Integer(dump_only=True, metadata={"description": "money refunded, minor units"})
    credits_taken_back = fields.Integer(dump_only=True)
    failure_reason = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "amount_mismatch or payment_failed"})


    @staticmethod
    def _team(purchase):
        return purchase.wallet_id - TEAM_WALLETS if purchase.wallet_id >= TEAM_WALLETS else None


class PurchasePageSchema(Schema):
    items = fields.List(fields.Nested(PurchaseSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next (older) page; null on the last page"})


class PurchaseQuerySchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Regexp(r"[1-9][0-9]{0,17}\Z"))


class AdminPurchaseQuerySchema(PurchaseQuerySchema):
    user_id = QueryInteger(load_default=None, validate=validate.Range(min=1, max=2**31 - 1))


class WebhookAnswerSchema(Schema):
    received = fields.Boolean(dump_only=True)
    outcome = fields.String(dump_only=True, metadata={
        "description": "applied, deferred, unmatched, ignored, duplicate or stored"})
