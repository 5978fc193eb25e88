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


@dataclass(frozen=True)
class Facts:
    move: str  # pay, process, fail, expire, refund, dispute, dispute_won, dispute_lost, ignore
    purchase_id: int | None = None
    checkout_id: str | None = None
    payment_intent: str | None = None
    amount: int | None = None  # what was paid (checkout total, invoice paid)
    currency: str | None = None
    amount_refunded: int | None = None  # cumulative
    status: str | None = None

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _reference_id(reference: str | None, kind: str) -> int | None:
    """The id in one of our references ("purchase:12"), None for anything else."""
    digits = reference[len(kind) + 1:] if reference and reference.startswith(f"{kind}:") else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 18:  # within a 64-bit id
        return int(digits)
    return None


def of_checkout(state: CheckoutState, event_type: str | None = None) -> Facts:
    """The move a checkout asks for: from an event of its, or from what the provider says of it now."""
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
    return Facts("ignore")
