"""Low balance alerts: `GET/PUT /api/credits/alerts`, the thresholds below which the wallet's
spendable balance sends `balance.low` (decided by the ledger in each write; see ledger/alerts.py).

The wallet is the one `/api/credits/balance` shows (an API key's, else the caller's own), or a
team's with `X-Team: <id>`, as paid routes spend. Any member (or key) of a wallet reads its
thresholds; changing them takes a login token (a leaked key cannot silence a wallet's alerts),
and for a team its owner or an admin, the ones who manage its keys and members."""
from marshmallow import ValidationError

from ..access import teams
from ..access.errors import NotAllowed
from ..auth import caller_must_exist, current_key, current_user_id, require_csrf, require_login, require_login_token
from ..ledger import credit_service, team_wallet
from .alert_schemas import AlertsSchema, AlertThresholdsSchema
from .bodies import Blueprint
from .openapi import INVALID, UNAUTHORIZED, document
from .schemas import ErrorSchema
from .spending import current_wallet_id, team_header

blp = Blueprint("alerts", __name__, url_prefix="/api/credits", description="Low balance alerts.")
blp.before_request(require_login())
TEAM = {"in": "header", "name": "X-Team", "required": False, "schema": {"type": "integer", "minimum": 1},
        "description": "a team's wallet instead of your own (members read; owners and admins change)"}
NOT_IN = (404, ErrorSchema, "unknown_team: no such team, or not yours")


def _wallet(changes: bool) -> int:
    team_id = team_header()
    if changes:
        require_login_token()
        require_csrf()
    if team_id is None:
        return current_wallet_id()
    if current_key() is not None:
        raise ValidationError({"X-Team": ["An API key reads its own wallet: send X-Team with a login token."]})
    member = teams.must_be_in(team_id, current_user_id())
    if changes and member.role == "member":
        raise NotAllowed("a team's owner and admins set its alerts")
    return team_wallet(team_id)


@blp.get("/alerts")
@blp.response(200, AlertsSchema)
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED, INVALID], parameters=[TEAM])
def get_alerts():
    """The thresholds in force per credit type, which are the defaults, and which have alerted."""
    with caller_must_exist():
        return credit_service.alert_thresholds(_wallet(changes=False))


@blp.put("/alerts")
@blp.arguments(AlertThresholdsSchema)
@blp.response(200, AlertsSchema)
@blp.alt_response(403, schema=ErrorSchema, description="login_token_required, or forbidden: a team's members")
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED, INVALID], parameters=[TEAM])
def put_alerts(body):
    """Set thresholds, `{"<credit_type>": n}` (n ≥ 0; null: back to the default). The wallet hears
    `balance.low` once when its spendable balance goes below one, and again only after it has been
    back at or above it; a balance already below a new threshold is told at its next change."""
    with caller_must_exist():
        return credit_service.set_alert_thresholds(_wallet(changes=True), body)
