"""What creditapp reads from a provider's event or checkout: the move it asks of a purchase and
the figures the move needs. Kept with the event in the inbox, so that applying
it later (deferred, or after a crash) needs neither the provider nor its signature again."""
from dataclasses import asdict, dataclass

from .providers import CheckoutState, ProviderEvent

# A PaymentIntent in these states took no money, and will not without the buyer starting again.
FAILED_INTENTS = {"requires_payment_method", "canceled"}
# Stripe's names; the test provider sends the same.
CHECKOUT_EVENTS = {
    "checkout.session.completed", "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed", "checkout.session.expired",
}


# What the plans package applies (to a subscription, not a purchase).
SUBSCRIPTION_MOVES = {"subscribe", "subscription_expire", "invoice_paid", "invoice_failed", "subscription_update",
                      "subscription_delete"}


@dataclass(frozen=True)
class Facts:
    move: str  # pay, process, fail, expire, refund, dispute, dispute_won, dispute_lost, ignore; SUBSCRIPTION_MOVES
    purchase_id: int | None = None
    checkout_id: str | None = None
    payment_intent: str | None = None
    amount: int | None = None  # what was paid (checkout total, invoice paid)
    currency: str | None = None
    amount_refunded: int | None = None  # cumulative
    status: str | None = None
    # A subscription's and its invoices' (times are Unix seconds: the facts are kept as JSON).
    subscription_id: int | None = None  # ours
    provider_subscription: str | None = None
    invoice_id: str | None = None
    billing_reason: str | None = None
    period_start: int | None = None
    period_end: int | None = None
    price: str | None = None
    plan: str | None = None
    cancel_at_period_end: bool | None = None
    created: int | None = None  # the event's, to tell an older subscription update from a newer

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _reference_id(reference: str | None, kind: str) -> int | None:
    """The id in one of our references ("purchase:12"), None for anything else."""
    digits = reference[len(kind) + 1:] if reference and reference.startswith(f"{kind}:") else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 18:  # within a 64-bit id
        return int(digits)
    return None


def _unix(moment) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _ours(metadata: dict, reference: str | None = None) -> int | None:
    return _reference_id(reference, "subscription") or _reference_id(
        f"subscription:{metadata.get('creditapp_subscription', '')}", "subscription")


def of_checkout(state: CheckoutState, event_type: str | None = None) -> Facts:
    """The move a checkout asks for: from an event of its, or from what the provider says of it now."""
    if state.mode == "subscription":
        move = {"complete": "subscribe", "expired": "subscription_expire"}.get(
            "expired" if event_type == "checkout.session.expired" else state.status, "ignore")
        return Facts(move, checkout_id=state.id, subscription_id=_ours(state.metadata, state.client_reference_id),
                     provider_subscription=state.subscription)
    purchase_id = _reference_id(state.client_reference_id, "purchase") or _reference_id(
        f"purchase:{state.metadata.get('purchase_id', '')}", "purchase")
    paid = state.payment_status in ("paid", "no_payment_required")
    if event_type == "checkout.session.async_payment_succeeded":
        move = "pay"
    elif event_type == "checkout.session.async_payment_failed":
        move = "fail"
    elif event_type == "checkout.session.expired" or state.status == "expired":
        move = "expire"
    elif state.status == "complete" and not paid and state.payment_intent_status in FAILED_INTENTS:
        move = "fail"  # a transfer that bounced, told by the payment intent when no webhook came
    elif state.status == "complete":
        move = "pay" if paid else "process"
    else:
        move = "ignore"  # still open
    return Facts(move, purchase_id=purchase_id, checkout_id=state.id, payment_intent=state.payment_intent,
                 amount=state.amount_total, currency=state.currency)


def of_event(event: ProviderEvent) -> Facts:
    if event.type in CHECKOUT_EVENTS and event.checkout is not None:
        return of_checkout(event.checkout, event.type)
    if event.type == "charge.refunded" and event.charge is not None:
        charge = event.charge
        return Facts("refund", purchase_id=_reference_id(f"purchase:{charge.metadata.get('purchase_id', '')}",
                                                         "purchase"),
                     payment_intent=charge.payment_intent, amount_refunded=charge.amount_refunded,
                     currency=charge.currency)
    if event.type in ("charge.dispute.created", "charge.dispute.closed") and event.dispute is not None:
        dispute = event.dispute
        if event.type == "charge.dispute.created":
            move = "dispute"
        else:
            move = "dispute_lost" if dispute.status == "lost" else "dispute_won"
        return Facts(move, payment_intent=dispute.payment_intent, status=dispute.status, amount=dispute.amount)
    if event.type.startswith("customer.subscription.") and event.subscription is not None:
        sub = event.subscription
        move = {"customer.subscription.deleted": "subscription_delete"}.get(event.type, "subscription_update")
        return Facts(move, subscription_id=_ours(sub.metadata), provider_subscription=sub.id, status=sub.status,
                     cancel_at_period_end=sub.cancel_at_period_end, period_start=_unix(sub.current_period_start),
                     period_end=_unix(sub.current_period_end), price=sub.price, plan=sub.metadata.get("creditapp_plan"),
                     created=_unix(event.created))
    if event.type in ("invoice.paid", "invoice.payment_failed") and event.invoice is not None:
        invoice = event.invoice
        if invoice.subscription is None:
            return Facts("ignore")  # not a subscription's (a one-off invoice)
        return Facts("invoice_paid" if event.type == "invoice.paid" else "invoice_failed",
                     subscription_id=_ours(invoice.metadata), provider_subscription=invoice.subscription,
                     invoice_id=invoice.id, billing_reason=invoice.billing_reason, status=invoice.status,
                     amount=invoice.amount_paid, currency=invoice.currency, period_start=_unix(invoice.period_start),
                     period_end=_unix(invoice.period_end), price=invoice.price, plan=invoice.metadata.get("creditapp_plan"),
                     created=_unix(event.created))
    return Facts("ignore")
