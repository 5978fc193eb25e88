"""What creditapp needs of a payment provider, and what it reads from one: a small interface with
a fake beside it (the built-in test provider; `creditapp.testing` has a fake Stripe server).

No Flask here: the webhook route, the reconcile command and a script use it alike.
"""
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class ProviderError(Exception):
    """Base class of what a provider raises."""


class ProviderUnavailable(ProviderError):
    """The provider did not answer, or answered with an error of its own; nothing was decided."""


class PaymentDeclined(ProviderError):
    """The provider tried to take the money and could not (a card declined); nothing was decided."""


class InvalidSignature(ProviderError):
    """A webhook whose signature is missing, forged, made with another secret, or too old."""


class LivemodeMismatch(ProviderError):
    """A webhook from live mode reached a test-mode server, or the other way round."""


@dataclass(frozen=True)
class Recurring:
    """What makes a checkout open a subscription (Stripe's `subscription` mode): the plan, and
    its period."""

    plan: str
    interval: str | None  # day, week, month, year
    interval_seconds: int | None  # the test provider only: Stripe knows no such period
    stripe_price: str | None = None


@dataclass(frozen=True)
class CheckoutOrder:
    """One checkout to open: in Stripe's `payment` mode one line of `amount` in `currency`; with
    `recurring`, in `subscription` mode, `amount` every period."""

    reference: str  # ours: "purchase:12" (client_reference_id)
    name: str
    amount: int  # minor units
    currency: str
    success_url: str
    cancel_url: str
    expires_at: datetime
    idempotency_key: str
    metadata: dict[str, str] = field(default_factory=dict)
    recurring: Recurring | None = None


@dataclass(frozen=True)
class Checkout:
    id: str
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class CheckoutState:
    """A checkout as the provider sees it (retrieved, or in a checkout.session.* event)."""

    id: str
    status: str  # "open" | "complete" | "expired"
    payment_status: str  # "paid" | "unpaid" | "no_payment_required"
    amount_total: int | None
    currency: str | None
    payment_intent: str | None
    client_reference_id: str | None
    metadata: dict
    livemode: bool
    payment_intent_status: str | None = None  # when the provider said (a retrieved checkout)
    mode: str = "payment"  # or "subscription"
    subscription: str | None = None  # the provider's subscription (mode subscription)


@dataclass(frozen=True)
class ChargeState:
    id: str
    payment_intent: str | None
    amount: int
    amount_refunded: int  # cumulative
    currency: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DisputeState:
    id: str
    charge: str | None
    payment_intent: str | None
    status: str  # "needs_response", ..., "won", "lost", "warning_closed"
    amount: int
    currency: str


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription as the provider sees it (customer.subscription.* events)."""

    id: str
    status: str  # Stripe's: active, past_due, unpaid, canceled, incomplete, incomplete_expired, trialing
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    price: str | None  # the first item's Price id
    metadata: dict = field(default_factory=dict)  # ours: subscription_id, plan


@dataclass(frozen=True)
class InvoiceState:
    """An invoice of a subscription (invoice.paid, invoice.payment_failed)."""

    id: str
    subscription: str | None
    billing_reason: str | None
    status: str | None
    amount_paid: int
    currency: str | None
    period_start: datetime | None  # the subscription line's period
    period_end: datetime | None
    price: str | None
    metadata: dict = field(default_factory=dict)  # the subscription's, as the invoice carries it


@dataclass(frozen=True)
class ProviderEvent:
    """A verified webhook event: the provider's own type (the test provider uses Stripe's names),
    its raw body for the inbox, and the normalized view its type carries."""

    id: str
    type: str
    livemode: bool
    created: datetime
    object: dict
    body: bytes
    checkout: CheckoutState | None = None
    charge: ChargeState | None = None
    dispute: DisputeState | None = None
    subscription: SubscriptionState | None = None
    invoice: InvoiceState | None = None


class PaymentProvider(Protocol):
    name: str  # "stripe" | "test"
    livemode: bool  # the mode of its key; the test provider is never live

    def create_checkout(self, order: CheckoutOrder) -> Checkout:
        """Open a checkout; raises ProviderUnavailable."""

    def retrieve_checkout(self, checkout_id: str) -> CheckoutState:
        """The checkout as it is now; raises ProviderUnavailable."""

    def parse_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        """Verify a webhook and read it; raises InvalidSignature or LivemodeMismatch."""

    def expire_checkout(self, checkout_id: str) -> None:
        """Close an open checkout so that it can no longer be paid; raises ProviderUnavailable."""

    def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        """Cancel at the period's end (or take that back); raises ProviderUnavailable."""

    def change_plan(self, subscription_id: str, recurring: Recurring, amount: int, currency: str) -> None:
        """Move the subscription to another paid plan now, invoicing the difference; raises
        ProviderUnavailable."""
