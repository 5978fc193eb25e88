"""Stripe, through the official `stripe` package: Checkout Sessions in `payment` and
`subscription` mode, the few subscription changes creditapp asks for (cancel at the period's
end, change the plan), and the webhooks Stripe signs."""
from collections.abc import Mapping
from datetime import datetime, timezone

import stripe

from . import stripe_objects
from .base import (
    Checkout, CheckoutOrder, CheckoutState, LivemodeMismatch, PaymentDeclined, ProviderEvent, ProviderUnavailable,
    Recurring,
)


class StripeProvider:
    name = "stripe"

    def __init__(self, secret_key: str, webhook_secrets: list[str], *, api_base: str | None = None,
                 timeout_seconds: float = 20):
        if not secret_key.startswith(("sk_live_", "sk_test_", "rk_live_", "rk_test_")):
            raise RuntimeError("STRIPE_SECRET_KEY must be a secret (sk_...) or restricted (rk_...) key")
        if not webhook_secrets:
            raise RuntimeError("STRIPE_WEBHOOK_SECRET is required with PAYMENTS_PROVIDER=stripe")
        self.livemode = secret_key[3:8] == "live_"
        self._secrets = webhook_secrets
        # Retries are the SDK's (with the idempotency key each create carries, a retried create
        # answers the same session); a short timeout, because a buyer waits for the answer.
        self._client = stripe.StripeClient(
            secret_key, base_addresses={"api": api_base} if api_base else None, max_network_retries=2,
            http_client=stripe.RequestsClient(timeout=timeout_seconds),
        )

    def create_checkout(self, order: CheckoutOrder) -> Checkout:
        metadata = {**order.metadata}
        params = {
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": order.currency, "unit_amount": order.amount, "product_data": {"name": order.name}}}],
            "client_reference_id": order.reference,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": order.success_url,
            "cancel_url": order.cancel_url,
            "expires_at": int(order.expires_at.timestamp()),
        }
        if order.recurring is not None:
            # The subscription and its invoices carry our metadata (`subscription_data`), so
            # an invoice that comes before the checkout's completion still finds its subscription.
            recurring = order.recurring
            del params["payment_intent_data"]
            params.update(mode="subscription", subscription_data={"metadata": metadata})
            params["line_items"] = [{"quantity": 1, "price": recurring.stripe_price} if recurring.stripe_price else
                                    {"quantity": 1, "price_data": {**params["line_items"][0]["price_data"],
                                                                   "recurring": {"interval": recurring.interval}}}]
        try:
            session = self._client.v1.checkout.sessions.create(
                params=params, options={"idempotency_key": order.idempotency_key})
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe refused or did not answer the checkout: {exc}") from exc
        return Checkout(id=session.id, url=session.url,
                        expires_at=datetime.fromtimestamp(session.expires_at, timezone.utc))

    def retrieve_checkout(self, checkout_id: str) -> CheckoutState:
        try:
            # The payment intent expanded: a bank transfer that failed shows there when its webhook
            # never came (the same call, one more field).
            session = self._client.v1.checkout.sessions.retrieve(checkout_id, params={"expand": ["payment_intent"]})
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe did not answer for checkout {checkout_id}: {exc}") from exc
        return stripe_objects.checkout_state(session.to_dict())

    def parse_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        payload = stripe_objects.verify(body, headers.get("Stripe-Signature"), self._secrets)
        if bool(payload.get("livemode")) != self.livemode:
            raise LivemodeMismatch(f"a {'live' if payload.get('livemode') else 'test'}-mode event for a "
                                   f"{'live' if self.livemode else 'test'}-mode key")
        return stripe_objects.event(payload, body)

    def expire_checkout(self, checkout_id: str) -> None:
        try:
            self._client.v1.checkout.sessions.expire(checkout_id)
        except stripe.InvalidRequestError:
            pass  # not open any more (paid, or lapsed): nothing to close
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe did not expire checkout {checkout_id}: {exc}") from exc

    def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        try:
            self._client.v1.subscriptions.update(subscription_id, params={"cancel_at_period_end": at_period_end})
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe did not change subscription {subscription_id}: {exc}") from exc

    def change_plan(self, subscription_id: str, recurring: Recurring, amount: int, currency: str) -> None:
        """The subscription's one item to the plan's Price, the difference invoiced now; with
        `error_if_incomplete` Stripe refuses the change when that invoice cannot be paid, so no
        plan is changed without its money."""
        if not recurring.stripe_price:
            raise ProviderUnavailable(f"plan {recurring.plan!r} has no stripe_price: Stripe changes a "
                                      "subscription only to a Price made in Stripe")
        try:
            current = self._client.v1.subscriptions.retrieve(subscription_id)
            item = current["items"]["data"][0]["id"]
            self._client.v1.subscriptions.update(subscription_id, params={
                "items": [{"id": item, "price": recurring.stripe_price}],
                "proration_behavior": "always_invoice", "payment_behavior": "error_if_incomplete",
                "metadata": {"creditapp_plan": recurring.plan},
            })
        except stripe.CardError as exc:
            raise PaymentDeclined(f"Stripe could not charge the upgrade: {exc}") from exc
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe did not change subscription {subscription_id}: {exc}") from exc
