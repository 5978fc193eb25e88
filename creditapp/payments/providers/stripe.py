"""Stripe, through the official `stripe` package: Checkout Sessions in `payment` mode, and the
webhooks Stripe signs. Two calls only: create a session, retrieve one."""
from collections.abc import Mapping
from datetime import datetime, timezone

import stripe

from . import stripe_objects
from .base import Checkout, CheckoutOrder, CheckoutState, LivemodeMismatch, ProviderEvent, ProviderUnavailable


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
