"""Usage reports: `GET /api/admin/usage` for administrators (any wallet, any group) and
`GET /api/credits/usage` for the caller's own wallet (the ledger builds them: reports.py)."""
from flask import Response, current_app, request
from marshmallow import ValidationError

from ..access import teams
from ..auth import current_key, current_user_id, require_login
from ..ledger import credit_service, team_wallet
from .admin import _administrator as administrator
from .bodies import Blueprint
from .openapi import UNAUTHORIZED, document
from .schemas import ErrorSchema
from .spending import team_header
from .usage_schemas import OwnUsageQuerySchema, RangeErrorSchema, UsageQuerySchema, UsageReportSchema

blp = Blueprint("usage", __name__, url_prefix="/api", description="Usage reports.")
blp.before_request(require_login())
RANGE = (422, RangeErrorSchema, "validation_error (a field), invalid_range (from not before to, an offset not in "
                           "whole minutes), too_many_buckets (more than `max_buckets` points)")


@blp.get("/admin/usage")
@blp.arguments(UsageQuerySchema, location="query")
@blp.response(200, UsageReportSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@document(responses=[UNAUTHORIZED, RANGE])
def admin_usage(query):
    """Paid requests, charges, refunds and failures per hour or day, by feature, user, credit
    type, team or key, over every wallet (administrators only)."""
    administrator()
    return _answer(credit_service.usage_report(**_report(query), user_id=query["user_id"]))


@blp.get("/credits/usage")
@blp.arguments(OwnUsageQuerySchema, location="query")
@blp.response(200, UsageReportSchema)
@blp.alt_response(404, schema=ErrorSchema, description="unknown_team: X-Team names a team the caller is not in")
@document(responses=[UNAUTHORIZED, RANGE])
def own_usage(query):
    """The same report for the caller's wallet (an API key's; a team's with `X-Team`), by
    feature or credit type."""
    return _answer(credit_service.usage_report(**_report(query), wallet_id=_wallet()))


def _report(query: dict) -> dict:
    return {"start": query["from_"], "end": query["to"], "bucket": query["bucket"], "group_by": query["group_by"],
            "feature": query["feature"], "credit_type": query["credit_type"]}


def _answer(report: dict) -> Response:
    """The report as UsageReportSchema documents it, written directly (compact, keys sorted, as
    jsonify writes every answer): a year by user is tens of thousands of points, which marshmallow
    takes seconds to dump. Every series has the same starts."""
    if report["series"]:
        starts = [point["start"].isoformat() for point in report["series"][0]["points"]]
        for series in report["series"]:
            for point, start in zip(series["points"], starts):
                point["start"] = start
    body = {**report, "from": report["from"].isoformat(), "to": report["to"].isoformat()}
    return Response(current_app.json.dumps(body, separators=(",", ":")), mimetype="application/json")


def _wallet() -> int:
    """An API key's wallet, a team's with X-Team (members), or the caller's own."""
    key = current_key()
    if key is not None:
        if "X-Team" in request.headers:
            raise ValidationError({"X-Team": ["An API key reads its own wallet: send X-Team with a login token."]})
        return key.wallet_id
    user_id, team_id = current_user_id(), team_header()
    if team_id is None:
        return user_id
    teams.must_be_in(team_id, user_id)
    return team_wallet(team_id)
