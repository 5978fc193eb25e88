"""A purchase's state machine: the allowed moves in one table, each applied in one transaction
under the purchase's lock (taken before its wallet's), with what it does to money.

    open ──pay──▶ paid ──refund──▶ partially_refunded ──refund──▶ refunded
    open ──process──▶ processing ──pay──▶ paid          paid ──dispute──▶ disputed
    processing ──fail──▶ failed                          disputed ──won──▶ paid / partially_refunded
    open ──expire──▶ expired                             disputed ──lost──▶ dispute_lost

The only money a purchase moves: `pay` grants its lot (once: the lot's reference is the
purchase); refunds take back ⌊credits × refunded ÷ price⌋ in all; a dispute freezes what is left
of the lot; a lost dispute takes back everything not taken yet. An event that comes before the
state it needs (a refund of a purchase not paid yet) is `deferred` and applied by the move that
makes it possible; one that comes after (a second completion) changes nothing.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from ..ledger import LotAlreadyVoided, LotFrozen, UnknownLot
from ..ledger.clock import utcnow
from . import notices
from .facts import Facts
from .tables import Purchase

PURCHASES = Purchase.__table__
PAID_STATES = ("paid", "partially_refunded", "refunded")

# move -> {status it may start from: status it ends in}; "=" is decided by the move itself.
MOVES = {
    "process": {"open": "processing"},
    "pay": {"open": "paid", "processing": "paid", "expired": "paid"},
    "fail": {"open": "failed", "processing": "failed"},
    "expire": {"open": "expired"},
    "refund": {"paid": "=", "partially_refunded": "=", "dispute_lost": "="},
    "dispute": {"paid": "disputed", "partially_refunded": "disputed"},
    "dispute_won": {"disputed": "="},
    # A loss whose opening never came (not enabled, or lost) still takes everything back.
    "dispute_lost": {"disputed": "dispute_lost", "paid": "dispute_lost", "partially_refunded": "dispute_lost"},
}
# Where a move cannot apply yet, it waits for the purchase to get there.
WAITS_FOR = {
    "refund": {"open", "processing", "disputed"},
    "dispute": {"open", "processing"},
    "dispute_won": {"open", "processing", "paid", "partially_refunded"},
    "dispute_lost": {"open", "processing"},
}


@dataclass(frozen=True)
class Outcome:
    """What applying a move did: `applied`, `deferred`, `ignored` (nothing to do, or not allowed
    from where the purchase is), with a word on why."""

    status: str
    detail: str
    purchase: dict | None = None


def lock(session, purchase_id: int):
    return session.execute(select(PURCHASES).where(PURCHASES.c.id == purchase_id).with_for_update()).one_or_none()


def apply(writes, purchase, facts: Facts, *, now: datetime | None = None) -> Outcome:
    """Apply `facts` to the locked `purchase` inside `writes`' transaction."""
    now = now or utcnow()
    move, status = facts.move, purchase.status
    if move not in MOVES:
        return Outcome("ignored", f"not a purchase move: {move}")
    if status not in MOVES[move]:
        if status in WAITS_FOR.get(move, ()):
            return Outcome("deferred", f"{move} waits: the purchase is {status}")
        return Outcome("ignored", f"{move} from {status}")
    session = writes.session
    changes: dict = {"updated_at": now}
    if move == "pay":
        # What was paid must be the frozen price: a checkout that says nothing of its amount is
        # no proof of payment either.
        if (facts.amount, (facts.currency or "").lower()) != (purchase.price, purchase.currency):
            changes.update(status="failed", failure_reason="amount_mismatch")
            _update(session, purchase.id, changes)
            return Outcome("applied", f"amount_mismatch: paid {facts.amount} {facts.currency}, "
                                      f"price {purchase.price} {purchase.currency}")
        expires_at = now + timedelta(days=purchase.expires_in_days) if purchase.expires_in_days else None
        grant = writes.grant(purchase.wallet_id, purchase.credits, purchase.credit_type,
                             reason=f"purchase {purchase.id}: {purchase.name}", reference=f"purchase:{purchase.id}",
                             priority=purchase.priority, expires_at=expires_at, source="purchase")
        changes.update(status="paid", lot_id=grant.lot_id, paid_at=now,
                       payment_intent=facts.payment_intent or purchase.payment_intent)
    elif move in ("process", "fail", "expire"):
        changes["status"] = MOVES[move][status]
        if move == "fail":
            changes["failure_reason"] = "payment_failed"
        if facts.payment_intent and not purchase.payment_intent:
            changes["payment_intent"] = facts.payment_intent
    elif move == "refund":
        refunded = min(max(facts.amount_refunded or 0, purchase.refunded), purchase.price)
        if refunded == purchase.refunded:
            return Outcome("ignored", f"refunded {refunded} already counted")
        changes["refunded"] = refunded
        if status != "dispute_lost":  # a lost dispute took every credit back already
            _take_back(writes, purchase, purchase.credits * refunded // purchase.price, "refund")
            changes.update(credits_taken_back=purchase.credits * refunded // purchase.price,
                           status="refunded" if refunded == purchase.price else "partially_refunded")
    elif move == "dispute":
        _refreeze(writes, purchase, freeze=True)
        changes["status"] = "disputed"
    elif move == "dispute_won":
        _refreeze(writes, purchase, freeze=False)
        changes["status"] = "partially_refunded" if purchase.refunded else "paid"
    elif move == "dispute_lost":
        _refreeze(writes, purchase, freeze=False)
        _take_back(writes, purchase, purchase.credits, "dispute lost")
        changes.update(status="dispute_lost", credits_taken_back=purchase.credits)
    _update(session, purchase.id, changes)
    notices.moved(session, move, purchase, changes, now)
    return Outcome("applied", f"{status} -> {changes.get('status', status)}")


def _take_back(writes, purchase, target: int, why: str) -> None:
    """Take back what brings the purchase's credits taken back to `target`."""
    more = target - purchase.credits_taken_back
    if more > 0:
        writes.take_back(purchase.wallet_id, more, purchase.credit_type, first_lot=purchase.lot_id,
                         reason=f"purchase {purchase.id}: {why}", reference=f"purchase:{purchase.id}:taken:{target}")


def _refreeze(writes, purchase, *, freeze: bool) -> None:
    if purchase.lot_id is None:
        return
    try:
        (writes.freeze_lot if freeze else writes.unfreeze_lot)(
            purchase.lot_id, reason=f"purchase {purchase.id}: {'disputed' if freeze else 'dispute closed'}")
    except (LotFrozen, LotAlreadyVoided, UnknownLot):
        pass  # an administrator froze or voided it already: what it should be, it is


def _update(session, purchase_id: int, changes: dict) -> None:
    session.execute(update(PURCHASES).where(PURCHASES.c.id == purchase_id).values(**changes))
