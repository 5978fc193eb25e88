"""The usage reports' query strings and answers."""
import re
from datetime import timezone

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..ledger.reports import BUCKETS, GROUPS
from ..ledger.tables import CREDIT_TYPES, MAX_USER_ID
from .schemas import ErrorSchema, QueryInteger, Text

OWN_GROUPS = ("feature", "credit_type")


class ZonedDateTime(fields.AwareDateTime):
    """An ISO 8601 date and time with its offset, which is kept (a report's buckets follow the
    offset of `from`), from 1970 to before 9000. An offset's "+" that a query string turned into
    a space ("…T00:00:00 05:30") is read as the "+" it was."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE)
        value = re.sub(r" (\d\d(:?\d\d)?)$", r"+\1", value)
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            year = parsed.astimezone(timezone.utc).year
        except OverflowError:
            year = None
        if year is None or not 1970 <= year < 9000:
            raise ValidationError("Must be from 1970 to before 9000.")
        return parsed


class GroupList(fields.List):
    """`group_by=feature&group_by=user` or `group_by=feature,user`, or both."""

    def _deserialize(self, value, attr, data, **kwargs):
        items = value if isinstance(value, list) else [value]
        parts = [part.strip() for item in items for part in (item.split(",") if isinstance(item, str) else [item])]
        return list(dict.fromkeys(super()._deserialize([p for p in parts if p != ""], attr, data, **kwargs)))


def _groups(choices) -> GroupList:
    return GroupList(fields.String(validate=validate.OneOf(choices)), load_default=list,
                     metadata={"description": f"Any of {', '.join(choices)}: repeated or comma-separated; "
                                              "the credit type is always a group."})


class OwnUsageQuerySchema(Schema):
    from_ = ZonedDateTime(data_key="from", load_default=None,
                          metadata={"description": "ISO 8601 with an offset; by default 30 days before `to`"})
    to = ZonedDateTime(load_default=None, metadata={"description": "ISO 8601 with an offset; by default now"})
    bucket = fields.String(load_default="day", validate=validate.OneOf(tuple(BUCKETS)))
    group_by = _groups(OWN_GROUPS)
    feature = Text(load_default=None, validate=validate.Length(min=1, max=64))
    credit_type = fields.String(load_default=None, validate=validate.OneOf(CREDIT_TYPES))
    # Filters of the administrators' report, refused here rather than ignored: a caller who asks
    # for one user's figures must not read the whole wallet's as if they were.
    ADMIN_ONLY = ("user_id",)

    @validates_schema(pass_original=True)
    def _no_admin_filters(self, _data, original, **_kwargs):
        given = [name for name in self.ADMIN_ONLY if name in (original or {})]
        if given:
            raise ValidationError({name: ["Only GET /api/admin/usage takes this filter."] for name in given})


class UsageQuerySchema(OwnUsageQuerySchema):
    ADMIN_ONLY = ()
    group_by = _groups(tuple(GROUPS))
    user_id = QueryInteger(load_default=None, validate=validate.Range(min=1, max=MAX_USER_ID),
                           metadata={"description": "Only what this user spent (from any wallet)"})


class UsagePointSchema(Schema):
    start = fields.DateTime(metadata={"description": "In the offset of `from`; the point ends where the next "
                                                     "starts (the last at `to`)"})
    requests = fields.Integer(metadata={"description": "Paid requests that ended (charged or not)"})
    charged = fields.Integer(metadata={"description": "Credits their charges took"})
    refunded = fields.Integer(metadata={"description": "Credits refunds gave back (of charges of any time)"})
    failed = fields.Integer(metadata={"description": "Requests that ended charging nothing"})


class UsageGroupSchema(Schema):
    credit_type = fields.String()
    feature = fields.String(allow_none=True)
    user_id = fields.Integer(allow_none=True, metadata={"description": "None: a team key used by nobody"})
    team_id = fields.Integer(allow_none=True, metadata={"description": "None: a user's own wallet"})
    key_id = fields.Integer(allow_none=True, metadata={"description": "None: not with an API key"})


class UsageSeriesSchema(Schema):
    group = fields.Nested(UsageGroupSchema)
    points = fields.List(fields.Nested(UsagePointSchema))


class UsageTotalsSchema(Schema):
    requests = fields.Integer()
    failed = fields.Integer()
    charged = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "Per credit type"})
    refunded = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "Per credit type"})


class UsageReportSchema(Schema):
    from_ = fields.DateTime(data_key="from", attribute="from")
    to = fields.DateTime()
    bucket = fields.String()
    series = fields.List(fields.Nested(UsageSeriesSchema),
                         metadata={"description": "One per group with any usage in the range, the most charged first"})
    totals = fields.Nested(UsageTotalsSchema)


class RangeErrorSchema(ErrorSchema):
    buckets = fields.Integer(metadata={"description": "too_many_buckets: the points the range would have"})
    max_buckets = fields.Integer(metadata={"description": "too_many_buckets: the most allowed"})
