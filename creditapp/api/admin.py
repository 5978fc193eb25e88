"""Administration: grants, refunds and voids (administrators only)."""
from datetime import timedelta

from .. import admin_actions, users
from ..auth import caller_must_exist, current_user_id, require_login, require_login_token
from ..access import teams
from ..access.errors import UnknownTeam
from ..ledger import Grant, Refund, UnknownUser, credit_service, team_wallet
from ..ledger.clock import utcnow
from ..ledger.tables import MAX_USER_ID, TEAM_WALLETS
from . import plans, purchases
from .plan_schemas import SubscriptionChoiceSchema, SubscriptionSchema
from .bodies import Blueprint
from .idempotency import idempotent_request
from .purchase_schemas import AdminPurchaseQuerySchema, PurchasePageSchema
from .openapi import IDEMPOTENCY_KEY, INVALID, KEY_IN_USE, UNAUTHORIZED, document
from .schemas import (
    ErrorSchema, GrantResultSchema, GrantSchema, RefundResultSchema, RefundSchema, VoidResultSchema, VoidSchema,
)

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Administration.")
blp.before_request(require_login())
grant_result_schema = GrantResultSchema()
refund_result_schema = RefundResultSchema()


@blp.post("/users/<id:user_id>/credits")
@blp.arguments(GrantSchema)
@blp.response(201, GrantResultSchema, description="Granted")
@blp.alt_response(200, schema=GrantResultSchema, description="A grant with this reference existed; nothing added")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown user")
@blp.alt_response(409, schema=ErrorSchema, description="reference_conflict: the reference was used differently")
@document(responses=[UNAUTHORIZED, KEY_IN_USE, INVALID], parameters=[IDEMPOTENCY_KEY])
def grant_credits(grant, user_id):
    """Grant credits to a user as a new lot, with its priority and expiry (administrators only)."""
    admin_id = _administrator()
    if user_id > MAX_USER_ID:
        raise UnknownUser(f"no user with id {user_id}")  # no such id can exist; spare the database
    return _grant(admin_id, user_id, grant, action="grant", target_user_id=user_id)


@blp.post("/teams/<id:team_id>/credits")
@blp.arguments(GrantSchema)
@blp.response(201, GrantResultSchema, description="Granted (`user_id` is the team's wallet)")
@blp.alt_response(200, schema=GrantResultSchema, description="A grant with this reference existed; nothing added")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_team")
@document(responses=[UNAUTHORIZED, KEY_IN_USE, INVALID], parameters=[IDEMPOTENCY_KEY])
def grant_team_credits(grant, team_id):
    """Grant credits to a team's wallet, as to a user's (administrators only)."""
    admin_id = _administrator()
    if team_id > MAX_USER_ID or not teams.exists(team_id):
        raise UnknownTeam(f"no team {team_id}")
    return _grant(admin_id, team_wallet(team_id), grant, action="team.grant", team_id=team_id)


@blp.post("/users/<id:user_id>/subscription")
@blp.arguments(SubscriptionChoiceSchema)
@blp.response(200, SubscriptionSchema, description="The user's plan now")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown user")
@blp.alt_response(409, schema=ErrorSchema, description="subscription_at_provider: the user pays for a plan; "
                  "it is changed or canceled there")
@blp.alt_response(422, schema=ErrorSchema, description="unknown_plan")
@document(responses=[UNAUTHORIZED, INVALID])
def assign_plan(body, user_id):
    """Put a user on a plan without payment (staff, partners): an upgrade's difference now, the
    plan's terms from the next period (administrators only)."""
    admin_id = _administrator()
    if user_id > MAX_USER_ID:
        raise UnknownUser(f"no user with id {user_id}")
    users.require_user(user_id)

    def record(session):
        admin_actions.record(session, actor_user_id=admin_id, action="plan.assign", target_user_id=user_id,
                             details={"plan": body["plan"]})

    return plans.plans().assign(user_id, body["plan"], also=record)


def _grant(admin_id: int, wallet_id: int, grant: dict, *, action: str, target_user_id: int | None = None,
           team_id: int | None = None):
    idempotent = idempotent_request()
    if (stored := idempotent.stored(admin_id)) is not None:
        return stored

    def store_answer(session, result: Grant):
        idempotent.store(session, admin_id, _status(result), grant_result_schema.dump(_answer(result)))
        if result.created:  # a grant answered again by its reference added nothing
            admin_actions.record(session, actor_user_id=admin_id, action=action, target_user_id=target_user_id,
                                 details={"grant_id": result.id, "amount": result.amount, "team_id": team_id,
                                          "credit_type": result.credit_type.value, "reason": result.reason,
                                          "reference": result.reference})

    expires_at = grant["expires_at"]
    if grant["expires_in_days"] is not None:
        expires_at = utcnow() + timedelta(days=grant["expires_in_days"])
    with idempotent.replay_if_it_won(admin_id):
        result = credit_service.grant(
            wallet_id, grant["amount"], grant["credit_type"], reason=grant["reason"] or "admin grant",
            reference=grant["reference"], priority=grant["priority"], expires_at=expires_at, also=store_answer,
        )
    return idempotent.replayed or (_answer(result), _status(result))


@blp.post("/charges/<id:hold_id>/refund")
@blp.arguments(RefundSchema)
@blp.response(200, RefundResultSchema, description="Refunded")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_charge")
@blp.alt_response(409, schema=ErrorSchema, description="already_refunded, refund_exceeds_charge (with `refundable`), "
                  "not_a_charge, not_refundable")
@document(responses=[UNAUTHORIZED, KEY_IN_USE, INVALID], parameters=[IDEMPOTENCY_KEY])
def refund_charge(body, hold_id):
    """Give back all or part of what a charge took, to the lots it came from (administrators only)."""
    admin_id = _administrator()
    idempotent = idempotent_request()
    if (stored := idempotent.stored(admin_id)) is not None:
        return stored

    def store_answer(session, result: Refund):
        idempotent.store(session, admin_id, 200, refund_result_schema.dump(_refund_answer(result)))
        admin_actions.record(session, actor_user_id=admin_id, action="refund", target_user_id=_owner(result.wallet_id),
                             details={"charge_id": hold_id, "amount": result.amount, "reason": body["reason"],
                                      "credit_type": result.credit_type.value, "wallet_id": result.wallet_id})

    with idempotent.replay_if_it_won(admin_id):
        result = credit_service.refund(hold_id, body["amount"], reason=body["reason"], also=store_answer)
    return idempotent.replayed or _refund_answer(result)


@blp.post("/lots/<id:lot_id>/void")
@blp.arguments(VoidSchema)
@blp.response(200, VoidResultSchema, description="Voided")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_lot")
@blp.alt_response(409, schema=ErrorSchema, description="lot_voided: it was voided before")
@document(responses=[UNAUTHORIZED, INVALID])
def void_lot(body, lot_id):
    """Remove what nobody holds of a lot, e.g. when its payment was reversed (administrators only)."""
    admin_id = _administrator()

    def record(session, result: dict):
        admin_actions.record(session, actor_user_id=admin_id, action="void", target_user_id=_owner(result["wallet_id"]),
                             details={"lot_id": lot_id, "voided": result["voided"], "reason": body["reason"],
                                      "wallet_id": result["wallet_id"]})

    result = credit_service.void_lot(lot_id, reason=body["reason"], also=record)
    return {"user_id": result["wallet_id"], **result["balance"].as_dict(), "voided": result["voided"],
            "lot": result["lot"]}


@blp.get("/purchases")
@blp.arguments(AdminPurchaseQuerySchema, location="query")
@blp.response(200, PurchasePageSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@document(responses=[UNAUTHORIZED, INVALID])
def list_purchases(query):
    """Every user's purchases (or one user's), newest first (administrators only)."""
    _administrator()
    return purchases.page(purchases.payments(), query, user_id=query["user_id"])


def _administrator() -> int:
    require_login_token()  # a leaked (or deliberately narrow) key must never mint credits
    admin_id = current_user_id()
    with caller_must_exist():
        users.require_admin(admin_id)
    return admin_id


def _owner(wallet_id: int) -> int | None:
    """The user whose wallet it is; None for a team's."""
    return wallet_id if wallet_id < TEAM_WALLETS else None


def _refund_answer(result: Refund) -> dict:
    return {
        "user_id": result.wallet_id, **result.balance.as_dict(),
        "refund": {"hold_id": result.hold_id, "credit_type": result.credit_type.value, "amount": result.amount,
                   "charged": result.charged, "refunded_total": result.refunded_total,
                   "refundable": result.refundable, "lots": result.lots},
    }


def _answer(result: Grant) -> dict:
    return {
        "user_id": result.wallet_id, **result.balance.as_dict(),
        "grant": {"id": result.id, "amount": result.amount, "credit_type": result.credit_type.value,
                  "reason": result.reason, "reference": result.reference},
        "lot": result.lot,
    }


def _status(result: Grant) -> int:
    return 201 if result.created else 200
