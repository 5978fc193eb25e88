"""The support view's query strings and answers (creditapp.api.support)."""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..ledger.tables import MAX_USER_ID
from .purchase_schemas import PurchaseSchema
from .schemas import JobSchema, LotSchema, QueryInteger, TransactionSchema

ID_CURSOR = validate.Regexp(r"[1-9][0-9]{0,17}\Z")


class JsonBoolean(fields.Boolean):
    """true or false, not "yes" or 1: a flag that locks people out is said plainly."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class TeamMembershipSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    role = fields.String(dump_only=True)


class AccountUserSchema(Schema):
    id = fields.Integer(dump_only=True)
    username = fields.String(dump_only=True)
    is_admin = fields.Boolean(dump_only=True)
    disabled = fields.Boolean(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class MeSchema(AccountUserSchema):
    teams = fields.List(fields.Nested(TeamMembershipSchema), dump_only=True)
    api_key = fields.Dict(dump_only=True, allow_none=True, metadata={
        "description": "with an API key: the key's id, prefix and team (null with a login token)"})


class UserQuerySchema(Schema):
    # Printable only: no name holds a control character, and PostgreSQL refuses NUL in text.
    query = fields.String(load_default=None, validate=[
        validate.Length(max=64), validate.Predicate("isprintable", error="Only printable characters.")],
        metadata={"description": "part of the username (any case), or the exact id (ASCII decimal)"})
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, metadata={"description": "the previous page's next_cursor"})


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(AccountUserSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True)


class AccessSchema(Schema):
    disabled = JsonBoolean(load_default=None, allow_none=False)
    is_admin = JsonBoolean(load_default=None, allow_none=False)

    @validates_schema
    def something(self, data, **_kwargs):
        if data["disabled"] is None and data["is_admin"] is None:
            raise ValidationError("give disabled, is_admin or both", "_schema")


class ChargeSchema(Schema):
    id = fields.Integer(dump_only=True, metadata={"description": "the charge id of POST /api/admin/charges/<id>/refund"})
    status = fields.String(dump_only=True)
    credit_type = fields.String(dump_only=True)
    held = fields.Integer(dump_only=True)
    charged = fields.Integer(dump_only=True)
    refunded = fields.Integer(dump_only=True)
    refundable = fields.Integer(dump_only=True)
    feature = fields.String(dump_only=True, allow_none=True)
    user_id = fields.Integer(dump_only=True, allow_none=True)
    key_id = fields.Integer(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    expires_at = fields.DateTime(dump_only=True)
    closed_at = fields.DateTime(dump_only=True, allow_none=True)


class ChargeQuerySchema(Schema):
    user_id = QueryInteger(load_default=None, validate=validate.Range(min=1, max=MAX_USER_ID),
                           metadata={"description": "the user's own wallet"})
    team_id = QueryInteger(load_default=None, validate=validate.Range(min=1, max=MAX_USER_ID),
                           metadata={"description": "a team's wallet (what its members and keys spent)"})

    @validates_schema
    def _one_wallet(self, data, **_kwargs):
        if (data["user_id"] is None) == (data["team_id"] is None):
            raise ValidationError("give user_id or team_id", "_schema")
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=ID_CURSOR)


class ChargePageSchema(Schema):
    items = fields.List(fields.Nested(ChargeSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True)


class ActionSchema(Schema):
    id = fields.Integer(dump_only=True)
    at = fields.DateTime(dump_only=True)
    actor_user_id = fields.Integer(dump_only=True)
    actor_username = fields.String(dump_only=True)
    action = fields.String(dump_only=True, metadata={"description": "grant, team.grant, refund, void, plan.assign, "
                                                     "user.disabled, user.enabled, user.admin_granted, ..."})
    target_user_id = fields.Integer(dump_only=True, allow_none=True)
    details = fields.Dict(dump_only=True)


class ActionQuerySchema(Schema):
    user_id = QueryInteger(load_default=None, validate=validate.Range(min=1, max=MAX_USER_ID))
    limit = QueryInteger(load_default=50, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=ID_CURSOR)


class ActionPageSchema(Schema):
    items = fields.List(fields.Nested(ActionSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True)


class AccountSchema(Schema):
    user = fields.Nested(MeSchema, dump_only=True)
    balance = fields.Dict(dump_only=True, metadata={
        "description": "per credit type: spendable now, held by open holds, debt"})
    lots = fields.List(fields.Nested(LotSchema), dump_only=True)
    holds = fields.List(fields.Nested(ChargeSchema), dump_only=True, metadata={"description": "open holds"})
    transactions = fields.List(fields.Nested(TransactionSchema), dump_only=True)
    jobs = fields.List(fields.Nested(JobSchema), dump_only=True)
    purchases = fields.List(fields.Nested(PurchaseSchema), dump_only=True)
    actions = fields.List(fields.Nested(ActionSchema), dump_only=True)
