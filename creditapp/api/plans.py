"""Plans and the account's subscription: `GET /api/plans`, `GET/POST/DELETE /api/subscription`.
The money is the plans package's (creditapp/plans) and the ledger's; this is the HTTP side."""
from flask import Flask, current_app

from ..auth import caller_must_exist, current_user_id, require_csrf, require_login, require_login_token
from ..database import migrations_pending
from ..plans.catalogue import check_plans
from ..plans.service import Plans
from .bodies import Blueprint
from .openapi import INVALID, UNAUTHORIZED, document
from .plan_schemas import PlanListSchema, SubscriptionChoiceSchema, SubscriptionSchema
from .schemas import ErrorSchema

blp = Blueprint("plans", __name__, url_prefix="/api", description="Plans: a monthly allowance, with rollover.")
blp.before_request(require_login(public_endpoints={"plans.list_plans"}))


def init_app(app: Flask) -> None:
    """The catalogue, checked at start; after purchases (paid plans use its provider and inbox)."""
    config = app.config
    plans = check_plans(config["PLANS"], config["DEFAULT_PLAN"])
    payments = app.extensions.get("creditapp.payments")
    if payments is not None and payments.provider.name == "stripe":
        for plan in plans.values():
            if not plan.free and plan.interval_seconds is not None:
                raise RuntimeError(f"PLANS[{plan.id!r}]: Stripe bills by day, week, month or year, "
                                   "not interval_seconds (a test-provider plan)")
    service = Plans(plans, config["DEFAULT_PLAN"], payments, logger=app.logger)
    if payments is not None and hasattr(payments.provider, "advance"):
        payments.provider.deliver = payments.inbox.receive  # the test provider's own webhooks
    app.extensions["creditapp.plans"] = service

    @app.before_request
    def _default_plan_in_the_ledger():
        # Once per process, on its first request (not at start: the database may not be migrated yet).
        if not service._templates_synced:
            try:
                service.sync_default()
            except Exception as exc:  # a database not migrated yet: the next request tries again
                if not migrations_pending(exc):  # that one was said once, at start
                    app.logger.exception("DEFAULT_PLAN not in the ledger yet")


def plans() -> Plans:
    return current_app.extensions["creditapp.plans"]


def _caller() -> int:
    require_login_token()  # a plan is the account's choice, not a key's
    return current_user_id()


@blp.get("/plans")
@blp.response(200, PlanListSchema)
def list_plans():
    """The plans on offer (no token needed)."""
    return {"plans": [plan.public() for plan in plans().plans.values()]}


@blp.get("/subscription")
@blp.response(200, SubscriptionSchema)
@document(responses=[UNAUTHORIZED])
def get_subscription():
    """The account's plan, its period, and what is left of this period's allowance."""
    with caller_must_exist():
        return plans().describe(_caller())


@blp.post("/subscription")
@blp.arguments(SubscriptionChoiceSchema)
@blp.response(200, SubscriptionSchema, description="A free plan, in effect now (or a paid plan changed at the provider)")
@blp.alt_response(201, schema=SubscriptionSchema, description="A paid plan: send the buyer to `checkout_url`; "
                  "it takes effect when its first invoice is paid")
@blp.alt_response(402, schema=ErrorSchema, description="payment_declined: the upgrade's difference could not be charged")
@blp.alt_response(409, schema=ErrorSchema, description="subscription_at_provider: a paid plan runs and the plan "
                  "chosen is another free one than the default (the default: the paid one is canceled at its period's end)")
@blp.alt_response(422, schema=ErrorSchema, description="unknown_plan, or the body is not valid")
@blp.alt_response(503, schema=ErrorSchema, description="payments_unavailable")
@document(responses=[UNAUTHORIZED, INVALID])
def choose_plan(body):
    """Choose a plan. An upgrade grants the difference of this period's allowance at once (a paid
    one when its proration is paid); a downgrade takes effect at the next period."""
    user_id = _caller()
    require_csrf()
    with caller_must_exist():
        answer, status = plans().choose(user_id, body["plan"])
    return answer, status


@blp.delete("/subscription")
@blp.response(200, SubscriptionSchema, description="Canceled at the period's end (`cancel_at_period_end: true`)")
@blp.alt_response(409, schema=ErrorSchema, description="no_subscription: on the default plan already")
@blp.alt_response(503, schema=ErrorSchema, description="payments_unavailable")
@document(responses=[UNAUTHORIZED])
def cancel_plan():
    """Cancel at the period's end: the allowance stays until then, then the default plan."""
    user_id = _caller()
    require_csrf()
    with caller_must_exist():
        return plans().cancel(user_id)
