"""Buying credits: the packs, purchases, the providers' webhooks. The money is the payments
package's (creditapp/payments); this is its HTTP side."""
import hashlib
import hmac

from flask import Flask, current_app, has_request_context, request
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import NotFound, RequestEntityTooLarge

from ..access import teams
from ..access.errors import NotAllowed
from ..auth import caller_must_exist, current_user_id, require_csrf, require_login
from ..extensions import limiter
from ..ledger import team_wallet
from ..metrics import metrics
from ..payments.catalogue import check_packs
from ..payments.errors import InvalidBody, PaymentsUnavailable
from ..payments.providers.stripe import StripeProvider
from ..payments.providers.test import TestProvider
from ..payments.service import CheckoutPages, Payments
from .bodies import Blueprint
from .idempotency import idempotent_request
from .openapi import IDEMPOTENCY_KEY, INVALID, KEY_IN_USE, UNAUTHORIZED, document
from .purchase_schemas import (
    PackListSchema, PurchaseCreateSchema, PurchasePageSchema, PurchaseQuerySchema, PurchaseSchema,
    WebhookAnswerSchema,
)
from .schemas import ErrorSchema

blp = Blueprint("purchases", __name__, url_prefix="/api/purchases", description="Buying credit packs.")
blp.before_request(require_login(public_endpoints={"purchases.list_packs"}))
hooks = Blueprint("webhooks", __name__, url_prefix="/api/webhooks",
                  description="Payment providers' events (signed; no token, no CORS).")
purchase_schema = PurchaseSchema()
MAX_WEBHOOK_BYTES = 1 << 20  # Stripe's events are far smaller; the app's own limit is 64 KiB
IN_FLIGHT_SECONDS = 120  # a create's key, should its process die before it answers


def init_app(app: Flask) -> None:
    """The catalogue, checked at start, and the provider PAYMENTS_PROVIDER names."""
    config = app.config
    packs = check_packs(config["CREDIT_PACKS"])
    app.extensions["creditapp.packs"] = packs
    name = config["PAYMENTS_PROVIDER"]
    if not name:
        app.extensions["creditapp.payments"] = None
        return
    def public_url() -> str:
        if config["PUBLIC_URL"]:
            return config["PUBLIC_URL"]
        return request.host_url.rstrip("/") if has_request_context() else "http://127.0.0.1:5000"

    if name == "stripe":
        secrets = config["STRIPE_WEBHOOK_SECRET"]
        if isinstance(secrets, str):  # set as one string rather than read from the environment
            secrets = [secret.strip() for secret in secrets.split(",") if secret.strip()]
        provider = StripeProvider(config["STRIPE_SECRET_KEY"], secrets,
                                  api_base=config["STRIPE_API_BASE"])
    else:
        provider = TestProvider(test_webhook_secret(config), page_url=lambda cid: f"{public_url()}/checkout/test/{cid}")
    pages = CheckoutPages(
        success_url=config["CHECKOUT_SUCCESS_URL"] or "{PUBLIC_URL}/checkout/return?purchase={PURCHASE_ID}",
        cancel_url=config["CHECKOUT_CANCEL_URL"] or "{PUBLIC_URL}/checkout/return?purchase={PURCHASE_ID}&cancelled=1",
        expires_minutes=config["CHECKOUT_EXPIRES_MINUTES"], public_url=public_url,
    )
    service = Payments(provider, packs, pages, logger=app.logger)
    service.inbox.observer = app.extensions["creditapp.metrics"]
    app.extensions["creditapp.payments"] = service


def test_webhook_secret(config) -> str:
    """The test provider's signing secret: set, or derived from the JWT secret (never a constant
    that anyone could sign with)."""
    configured = config["TEST_PAYMENTS_WEBHOOK_SECRET"]
    if configured:
        return configured
    return "whsec_" + hmac.new(config["JWT_SECRET_KEY"].encode(), b"creditapp test payments", hashlib.sha256).hexdigest()


def payments() -> Payments:
    service = current_app.extensions.get("creditapp.payments")
    if service is None:
        raise PaymentsUnavailable("no payment provider is configured (PAYMENTS_PROVIDER)")
    return service


@blp.get("/packs")
@blp.response(200, PackListSchema)
def list_packs():
    """The credit packs on sale (no token needed)."""
    return {"packs": [pack.as_dict() for pack in current_app.extensions["creditapp.packs"].values()]}


@blp.post("")
@blp.arguments(PurchaseCreateSchema)
@blp.response(201, PurchaseSchema, description="The purchase, open: send the buyer to its checkout_url")
@blp.alt_response(422, schema=ErrorSchema, description="unknown_pack, or the body is not valid")
@blp.alt_response(503, schema=ErrorSchema, description="payments_unavailable: the provider failed; nothing was kept")
@document(responses=[UNAUTHORIZED, KEY_IN_USE, INVALID], parameters=[IDEMPOTENCY_KEY])
def create_purchase(body):
    """Buy a pack: opens a checkout at the payment provider. With an Idempotency-Key a retry answers
    the same purchase."""
    require_csrf()
    user_id = current_user_id()
    service = payments()
    wallet_id = None
    if body["team"] is not None:
        if teams.must_be_in(body["team"], user_id).role != "owner":
            raise NotAllowed("only the team's owner buys for its wallet")
        wallet_id = team_wallet(body["team"])
    idempotent = idempotent_request()
    if (stored := idempotent.stored(user_id)) is not None:
        return stored
    with idempotent.replay_if_it_won(user_id):
        key_id = idempotent.claim(user_id, IN_FLIGHT_SECONDS)
    if idempotent.replayed is not None:
        return idempotent.replayed
    try:
        with caller_must_exist():
            purchase = service.create(user_id, body["pack"], wallet_id)
    except Exception:
        idempotent.release(key_id)
        raise
    metrics().purchases.labels(purchase.pack, "open").inc()
    idempotent.complete(key_id, 201, purchase_schema.dump(purchase))
    return purchase, 201


@blp.get("")
@blp.arguments(PurchaseQuerySchema, location="query")
@blp.response(200, PurchasePageSchema)
@document(responses=[UNAUTHORIZED, INVALID])
def list_purchases(query):
    """The caller's purchases, newest first."""
    return page(payments(), query, user_id=current_user_id())


@blp.get("/<id:purchase_id>")
@blp.response(200, PurchaseSchema)
@blp.alt_response(404, schema=ErrorSchema, description="unknown_purchase (or another user's)")
@document(responses=[UNAUTHORIZED])
def get_purchase(purchase_id):
    """One purchase. While it is open or processing the provider is asked about its checkout
    first, so the page a buyer returns to shows the credits even when the webhook is late."""
    return payments().refresh(purchase_id, current_user_id())


def page(service: Payments, query: dict, user_id: int | None) -> dict:
    before = int(query["cursor"]) if query["cursor"] else None
    rows = service.list(user_id=user_id, status=query["status"], limit=query["limit"], before=before)
    return {"items": rows, "next_cursor": str(rows[-1].id) if len(rows) == query["limit"] else None}


def _webhook_limit() -> str:
    return current_app.config["WEBHOOK_RATE_LIMIT"]


@hooks.post("/<any(stripe, test):provider>")
@limiter.limit(_webhook_limit, key_func=get_remote_address)
@hooks.response(200, WebhookAnswerSchema, description="Stored (and applied, when it could be)")
@hooks.alt_response(400, schema=ErrorSchema, description="invalid_signature, livemode_mismatch, or invalid_body "
                    "(over 1 MiB); nothing stored")
@hooks.alt_response(404, schema=ErrorSchema, description="not the configured provider")
def receive_event(provider):
    """A provider's event, verified by its signature (`Stripe-Signature`, Stripe's scheme for the
    test provider too). 2xx only once it is durably stored; a duplicate changes nothing."""
    service = current_app.extensions.get("creditapp.payments")
    if service is None or service.provider.name != provider:
        raise NotFound(f"no {provider} provider here")
    request.max_content_length = MAX_WEBHOOK_BYTES
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise InvalidBody("a body over 1 MiB is no provider's event") from None
    outcome = payments().inbox.receive(body, request.headers)
    return {"received": True, "outcome": outcome}
