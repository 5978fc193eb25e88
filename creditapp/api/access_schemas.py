"""What the key and team routes take and answer."""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..access.tables import ROLES
from ..ledger.tables import CREDIT_TYPES, MAX_AMOUNT
from .schemas import IsoDateTime, StrictInteger, Text

PERIODS = ("day", "week", "month")
Amounts = lambda **kw: fields.Dict(  # noqa: E731  (a per-credit-type amount map)
    keys=fields.String(validate=validate.OneOf(CREDIT_TYPES)),
    values=StrictInteger(validate=validate.Range(min=0, max=MAX_AMOUNT)), **kw)


class _Period:
    @validates_schema
    def one_period(self, data, **_):
        period, seconds = data.get(self.PERIOD), data.get(self.SECONDS)
        if period is not None and seconds is not None:
            raise ValidationError({self.SECONDS: [f"Give {self.PERIOD} or {self.SECONDS}, not both."]})


class KeyCreateSchema(_Period, Schema):
    PERIOD, SECONDS = "budget_period", "budget_period_seconds"
    name = Text(required=True, validate=validate.Length(min=1, max=100))
    budget = Amounts(load_default=dict)
    budget_period = fields.String(load_default=None, validate=validate.OneOf(PERIODS))
    budget_period_seconds = StrictInteger(load_default=None, validate=validate.Range(min=1, max=366 * 86400))
    features = fields.List(Text(validate=validate.Length(min=1, max=64)), load_default=None,
                           validate=validate.Length(max=100))
    expires_at = IsoDateTime(load_default=None)
    team = StrictInteger(load_default=None, validate=validate.Range(min=1, max=2**31 - 1))


class KeyChangeSchema(Schema):
    name = Text(validate=validate.Length(min=1, max=100))
    budget = Amounts()
    features = fields.List(Text(validate=validate.Length(min=1, max=64)), allow_none=True,
                           validate=validate.Length(max=100))


class KeySchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    key = fields.String(dump_only=True, metadata={"description": "the key itself: shown once, at creation"})
    prefix = fields.String(dump_only=True)
    budget = fields.Dict(dump_only=True, metadata={"description": "per credit type; a type left out has no limit"})
    budget_period = fields.String(dump_only=True, allow_none=True)
    spent = fields.Dict(dump_only=True, metadata={"description": "this period: held + charged - refunded"})
    period_resets_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    features = fields.List(fields.String(), dump_only=True, allow_none=True)
    team = fields.Integer(dump_only=True, allow_none=True)
    created_at = fields.AwareDateTime(dump_only=True)
    last_used_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    expires_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    revoked_at = fields.AwareDateTime(dump_only=True, allow_none=True)


class KeyListSchema(Schema):
    items = fields.List(fields.Nested(KeySchema), dump_only=True)


class TeamCreateSchema(Schema):
    name = Text(required=True, validate=validate.Length(min=1, max=100))


class MemberSchema(Schema):
    user_id = fields.Integer(dump_only=True)
    username = fields.String(dump_only=True)
    role = fields.String(dump_only=True)
    cap = fields.Dict(dump_only=True)
    spent = fields.Dict(dump_only=True)
    period_resets_at = fields.AwareDateTime(dump_only=True, allow_none=True)


class TeamSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    role = fields.String(dump_only=True)
    created_at = fields.AwareDateTime(dump_only=True)
    members = fields.List(fields.Nested(MemberSchema), dump_only=True)


class TeamListSchema(Schema):
    items = fields.List(fields.Nested(TeamSchema), dump_only=True)


class MemberAddSchema(_Period, Schema):
    PERIOD, SECONDS = "cap_period", "cap_period_seconds"
    username = Text(required=True, validate=validate.Length(min=1, max=64))
    role = fields.String(load_default="member", validate=validate.OneOf([r for r in ROLES if r != "owner"]))
    cap = Amounts(load_default=dict)
    cap_period = fields.String(load_default=None, validate=validate.OneOf(PERIODS))
    cap_period_seconds = StrictInteger(load_default=None, validate=validate.Range(min=1, max=366 * 86400))


class MemberChangeSchema(Schema):
    role = fields.String(validate=validate.OneOf([r for r in ROLES if r != "owner"]))
    cap = Amounts()
