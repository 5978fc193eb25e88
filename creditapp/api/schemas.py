"""Request and response schemas, made once; they also describe the API in /api/openapi.json."""
import re
from datetime import timezone

from flask import has_request_context
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..jobs.tables import STATUSES as JOB_STATUSES
from ..ledger.clock import clock
from ..ledger.tables import CREDIT_TYPES, MAX_AMOUNT
from ..ledger.types import CreditType


class StrictInteger(fields.Integer):
    """An integer that refuses 1.0, "1" and true, which a lenient parser would take for 1."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _validated(self, value):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """JSON true or false only: not 1, "true" or "yes"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class _UnicodeOnly:
    """JSON may carry lone UTF-16 surrogates ("\\ud800") that no database or hash can take, and
    NUL characters that PostgreSQL text refuses: both are a 422 on every database."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("Not valid Unicode text.") from None
        if "\x00" in text:
            raise ValidationError("Must not contain NUL characters.")
        return text


class Text(_UnicodeOnly, fields.String):
    pass


class IsoDateTime(fields.AwareDateTime):
    """An ISO 8601 date and time with its time zone, in ASCII digits only, as UTC, before the
    year 9000 (a later time in a negative offset is past what a UTC date can hold)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not value.isascii():
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE)
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            parsed = parsed.astimezone(timezone.utc)
        except OverflowError:
            raise ValidationError("Must be before the year 9000.") from None
        if parsed.year >= 9000:
            raise ValidationError("Must be before the year 9000.")
        return parsed


class HttpUrl(_UnicodeOnly, fields.Url):
    pass


class QueryInteger(fields.Integer):
    """An integer from a query string in canonical ASCII decimal ("１", "٢" or "007" are not)."""

    def _validated(self, value):
        if isinstance(value, str) and not re.fullmatch(r"-?(0|[1-9][0-9]{0,17})", value):
            raise self.make_error("invalid")
        return super()._validated(value)


def _text(max_length: int, **kwargs):
    return Text(required=True, validate=validate.Length(min=1, max=max_length), **kwargs)


class CredentialsSchema(Schema):
    username = Text(
        required=True,
        validate=[
            validate.Length(min=3, max=64),
            # \Z, not $: "$" also matches before a final newline ("bob\n" would pass).
            validate.Regexp(r"[A-Za-z0-9_.-]+\Z", error="Use letters, digits, '_', '.' or '-'."),
        ],
    )
    password = Text(required=True, load_only=True, validate=validate.Length(min=8, max=128))


class UserSchema(Schema):
    id = fields.Integer(dump_only=True)
    username = fields.String(dump_only=True)


class TokenSchema(Schema):
    access_token = fields.String(dump_only=True)
    token_type = fields.String(dump_only=True)
    expires_in = fields.Integer(dump_only=True)
    refresh_token = fields.String(dump_only=True, metadata={"description": "on login only"})
    refresh_expires_in = fields.Integer(dump_only=True)


class LoggedOutSchema(Schema):
    status = fields.String(dump_only=True)


# One spendable amount per credit type.
BalanceSchema = Schema.from_dict(
    {credit_type.value: fields.Integer(dump_only=True) for credit_type in CreditType}, name="BalanceSchema")


class ExpiringSchema(Schema):
    credit_type = fields.String(dump_only=True)
    amount = fields.Integer(dump_only=True, metadata={"description": "spendable credits of the lot"})
    expires_at = fields.DateTime(dump_only=True)


class BalanceReadSchema(BalanceSchema):
    expiring = fields.List(fields.Nested(ExpiringSchema), dump_only=True, metadata={
        "description": "the next lots to expire, soonest first (at most 5)"})
    debt = fields.Nested(BalanceSchema, dump_only=True, metadata={
        "description": "credits owed per type (refunds that took back credits already spent); later grants pay "
                       "it first"})


class LotSchema(Schema):
    id = fields.Integer(dump_only=True)
    credit_type = fields.String(dump_only=True)
    granted = fields.Integer(dump_only=True)
    remaining = fields.Integer(dump_only=True, metadata={"description": "not yet spent, expired or voided; held credits included"})
    held = fields.Integer(dump_only=True, metadata={"description": "the part of remaining that open holds set aside"})
    priority = fields.Integer(dump_only=True, metadata={"description": "0-100, lower is spent first"})
    expires_at = fields.DateTime(dump_only=True, allow_none=True)
    source = fields.String(dump_only=True, metadata={
        "description": "signup, admin, migration, purchase, plan (a period's allowance) or rollover"})
    reason = fields.String(dump_only=True, allow_none=True)
    reference = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    status = fields.String(dump_only=True, metadata={
        "description": "active, spent, expired, voided or frozen (its payment is disputed: not spendable)"})


class LotPageSchema(Schema):
    items = fields.List(fields.Nested(LotSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next page; null on the last page"})


class LotQuerySchema(Schema):
    credit_type = fields.String(load_default=None, validate=validate.OneOf(CREDIT_TYPES))
    include_spent = fields.Boolean(load_default=False, truthy={"true", "1"}, falsy={"false", "0"})
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Regexp(r"[1-9][0-9]{0,8}\Z"))


class TransactionSchema(Schema):
    id = fields.Integer(dump_only=True)
    credit_type = fields.String(dump_only=True)
    kind = fields.String(dump_only=True, metadata={
        "description": "grant, hold, settle, release, expire, charge, refund or void"})
    amount = fields.Integer(dump_only=True, metadata={"description": "change of the spendable balance"})
    held_change = fields.Integer(dump_only=True, metadata={"description": "change of the reserved credits"})
    balance_after = fields.Integer(dump_only=True)
    held_after = fields.Integer(dump_only=True)
    hold_id = fields.Integer(dump_only=True, allow_none=True)
    lot_id = fields.Integer(dump_only=True, allow_none=True, metadata={"description": "the lot whose credits moved"})
    reason = fields.String(dump_only=True, allow_none=True)
    reference = fields.String(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)


class TransactionPageSchema(Schema):
    items = fields.List(fields.Nested(TransactionSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next (older) page; null on the last page"})


class TransactionQuerySchema(Schema):
    # Query strings are text, so a lenient integer: "20" is 20, "2.5" and "x" are refused.
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    # At most 18 digits: always inside a 64-bit id. \Z, not $: "12\n" is not a cursor.
    cursor = fields.String(load_default=None, validate=validate.Regexp(r"[1-9][0-9]{0,17}\Z"))
    credit_type = fields.String(load_default=None, validate=validate.OneOf(CREDIT_TYPES))


class CostSchema(Schema):
    feature = fields.String(dump_only=True)
    credit_type = fields.String(dump_only=True)
    cost = fields.Integer(dump_only=True)
    unit = fields.String(dump_only=True, metadata={"description": "request, or token used"})
    endpoint = fields.String(dump_only=True)


class CostListSchema(Schema):
    costs = fields.List(fields.Nested(CostSchema), dump_only=True)


class GrantSchema(Schema):
    amount = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_AMOUNT))
    credit_type = fields.String(
        load_default=CreditType.GENERATION_CREDITS.value, validate=validate.OneOf(CREDIT_TYPES)
    )
    reason = Text(load_default=None, validate=validate.Length(min=1, max=255))
    reference = Text(load_default=None, validate=validate.Length(min=1, max=255), metadata={
        "description": "an outside id (e.g. a payment event): a second grant with it adds nothing"})
    priority = StrictInteger(load_default=50, validate=validate.Range(min=0, max=100), metadata={
        "description": "lower is spent first"})
    expires_at = IsoDateTime(load_default=None, metadata={
        "description": "ISO 8601 with a time zone, in the future; or expires_in_days"})
    expires_in_days = StrictInteger(load_default=None, validate=validate.Range(min=1, max=36600))

    @validates_schema
    def one_expiry(self, data, **_kwargs):
        if data["expires_at"] is not None and data["expires_in_days"] is not None:
            raise ValidationError("Give expires_at or expires_in_days, not both.", "expires_at")
        if data["expires_at"] is not None and data["expires_at"] <= clock.now():
            raise ValidationError("Must be in the future.", "expires_at")


class GrantRecordSchema(Schema):
    id = fields.Integer(dump_only=True)
    amount = fields.Integer(dump_only=True)
    credit_type = fields.String(dump_only=True)
    reason = fields.String(dump_only=True, allow_none=True)
    reference = fields.String(dump_only=True, allow_none=True)


class GrantResultSchema(BalanceSchema):
    user_id = fields.Integer(dump_only=True)
    grant = fields.Nested(GrantRecordSchema, dump_only=True)
    lot = fields.Nested(LotSchema, dump_only=True)


class RefundSchema(Schema):
    amount = StrictInteger(load_default=None, validate=validate.Range(min=1, max=MAX_AMOUNT), metadata={
        "description": "what to give back; all that is left to refund when absent"})
    reason = _text(255)


class RefundedPartSchema(Schema):
    lot_id = fields.Integer(dump_only=True)
    amount = fields.Integer(dump_only=True)
    lapsed = fields.Boolean(dump_only=True, metadata={
        "description": "the lot had expired or was voided: the credits went again at once"})


class RefundRecordSchema(Schema):
    hold_id = fields.Integer(dump_only=True)
    credit_type = fields.String(dump_only=True)
    amount = fields.Integer(dump_only=True)
    charged = fields.Integer(dump_only=True)
    refunded_total = fields.Integer(dump_only=True)
    refundable = fields.Integer(dump_only=True)
    lots = fields.List(fields.Nested(RefundedPartSchema), dump_only=True)


class RefundResultSchema(BalanceSchema):
    user_id = fields.Integer(dump_only=True)
    refund = fields.Nested(RefundRecordSchema, dump_only=True)


class VoidSchema(Schema):
    reason = _text(255)


class VoidResultSchema(BalanceSchema):
    user_id = fields.Integer(dump_only=True)
    voided = fields.Integer(dump_only=True, metadata={"description": "credits removed now"})
    lot = fields.Nested(LotSchema, dump_only=True)


class ImageSchema(Schema):
    image_url = HttpUrl(required=True, schemes={"http", "https"}, validate=validate.Length(max=2048))


class GenerateSchema(Schema):
    prompt = _text(2000)


class HairstyleSchema(ImageSchema):
    hairstyle = _text(100)


class UpscaleSchema(ImageSchema):
    scale = StrictInteger(required=True, validate=validate.OneOf([2, 4]))


class CompleteSchema(Schema):
    prompt = _text(8000)
    max_tokens = StrictInteger(required=True, validate=validate.Range(min=1, max=4096))
    stream = StrictBoolean(load_default=False, metadata={
        "description": "Answer `text/event-stream`: `delta` events as text arrives, then `done` (or `error`); "
                       "charged the provider's usage, or, ended early, the prompt and the text delivered. "
                       "Not with `Prefer: respond-async` (a job has no stream to read)"})

    @validates_schema
    def _not_a_job(self, data, **kwargs):
        from .guard import prefers_async  # the guard imports these schemas

        if data.get("stream") and has_request_context() and prefers_async():
            raise ValidationError({"stream": ["A stream cannot be a job: leave out Prefer: respond-async, "
                                              "or ask without stream and poll the job."]})


class ChargedSchema(Schema):
    credit_type = fields.String(dump_only=True)
    amount = fields.Integer(dump_only=True)


class ImageResultSchema(Schema):
    feature = fields.String(dump_only=True)
    image_url = fields.String(dump_only=True)


class GenerationResponseSchema(Schema):
    result = fields.Nested(ImageResultSchema, dump_only=True)
    charged = fields.Nested(ChargedSchema, dump_only=True)
    balance = fields.Nested(BalanceSchema, dump_only=True)


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(dump_only=True)
    completion_tokens = fields.Integer(dump_only=True)
    total_tokens = fields.Integer(dump_only=True)


class CompletionResultSchema(Schema):
    text = fields.String(dump_only=True)


class StreamEndSchema(Schema):
    outcome = fields.String(dump_only=True, metadata={
        "description": "completed, client_gone, provider_failed, timed_out or usage_exceeded_hold"})
    delivered_tokens = fields.Integer(dump_only=True)


class CompletionResponseSchema(GenerationResponseSchema):
    result = fields.Nested(CompletionResultSchema, dump_only=True)
    usage = fields.Nested(UsageSchema, dump_only=True)
    stream = fields.Nested(StreamEndSchema, dump_only=True, metadata={
        "description": "A stream's final answer, replayed for its Idempotency-Key: how it ended"})


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "stable machine-readable code"})
    message = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "field errors, on 422"})


class InsufficientCreditsSchema(ErrorSchema):
    required = fields.Integer()
    available = fields.Integer()
    credit_type = fields.String()


class HealthSchema(Schema):
    status = fields.String(dump_only=True)


class ReadySchema(HealthSchema):
    migration = fields.String(dump_only=True)


class JobErrorSchema(Schema):
    error = fields.String(dump_only=True)
    message = fields.String(dump_only=True)


class JobAcceptedSchema(Schema):
    job_id = fields.String(dump_only=True)
    status = fields.String(dump_only=True)
    feature = fields.String(dump_only=True)
    held = fields.Nested(ChargedSchema, dump_only=True, metadata={"description": "held at submit"})


class JobSchema(JobAcceptedSchema):
    """A job (`Prefer: respond-async`). Once `succeeded` it carries what the synchronous answer
    would have: `result`, `charged`, `balance` (and `usage` for completions); once failed,
    cancelled or expired, `error`."""

    status = fields.String(dump_only=True, metadata={
        "enum": list(JOB_STATUSES)})
    attempts = fields.Integer(dump_only=True)
    created_at = fields.AwareDateTime(dump_only=True)
    started_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    finished_at = fields.AwareDateTime(dump_only=True, allow_none=True)
    result = fields.Dict(dump_only=True)
    charged = fields.Nested(ChargedSchema, dump_only=True)
    balance = fields.Nested(BalanceSchema, dump_only=True)
    usage = fields.Nested(UsageSchema, dump_only=True)
    error = fields.Nested(JobErrorSchema, dump_only=True)


class JobPageSchema(Schema):
    items = fields.List(fields.Nested(JobSchema), dump_only=True)
    next_cursor = fields.String(dump_only=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next (older) page; null on the last page"})


class JobQuerySchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(
        list(JOB_STATUSES)))
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Regexp(r"[0-9]{1,20}\.[0-9a-f]{32}\Z"))
