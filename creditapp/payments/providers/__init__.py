"""Payment providers behind one interface (base.py): Stripe (stripe.py) and the built-in test
provider (test.py), which signs its events with Stripe's scheme and goes through the same inbox."""
from .base import (
    ChargeState, Checkout, CheckoutOrder, CheckoutState, DisputeState, InvalidSignature, InvoiceState,
    LivemodeMismatch, PaymentDeclined, PaymentProvider, ProviderError, ProviderEvent, ProviderUnavailable, Recurring,
    SubscriptionState,
)

__all__ = [
    "ChargeState", "Checkout", "CheckoutOrder", "CheckoutState", "DisputeState", "InvalidSignature",
    "InvoiceState", "LivemodeMismatch", "PaymentDeclined", "PaymentProvider", "ProviderError", "ProviderEvent", "ProviderUnavailable",
    "Recurring", "SubscriptionState",
]
