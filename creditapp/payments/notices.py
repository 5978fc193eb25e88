"""What a purchase's moves tell operators: an event in the webhooks outbox, written in the move's
own transaction (so none is sent for a move that rolled back). The one place payments reach the
outbox (tests/test_layout.py keeps it so)."""
from datetime import datetime

from ..webhooks.outbox import emit

# move -> event type; a dispute's end is told as a dispute too, with its `dispute` word.
EVENTS = {"pay": "purchase.paid", "refund": "purchase.refunded", "dispute": "purchase.disputed",
          "dispute_won": "purchase.disputed", "dispute_lost": "purchase.disputed"}
DISPUTES = {"dispute": "opened", "dispute_won": "won", "dispute_lost": "lost"}


def moved(session, move: str, purchase, changes: dict, now: datetime) -> None:
    """The locked `purchase` (as it was) has just taken `changes` by `move`."""
    event_type = EVENTS.get(move)
    if event_type is None:
        return
    after = {**purchase._mapping, **changes}
    data = {
        "purchase_id": purchase.id, "user_id": purchase.user_id, "wallet_id": purchase.wallet_id,
        "pack": purchase.pack, "status": after["status"], "credit_type": purchase.credit_type,
        "credits": purchase.credits, "amount": purchase.price, "currency": purchase.currency,
        "refunded": after["refunded"], "credits_taken_back": after["credits_taken_back"], "lot_id": after["lot_id"],
        "payment_intent": after["payment_intent"],
    }
    if move == "pay":
        data["paid_at"] = after["paid_at"]
    elif move == "refund":
        data["refunded_now"] = after["refunded"] - purchase.refunded
    else:
        data["dispute"] = DISPUTES[move]
    emit(session, event_type, data, at=now)
