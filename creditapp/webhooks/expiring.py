"""`lot.expiring`: a lot's credits left will lapse in LOT_EXPIRING_DAYS days.

Unlike the other events this one has no change to ride on (time passing is not a write), so it
is a scheduled notice: each pass of the webhooks' sweep calls `emit_expiring`, which marks the
lots it tells about (the ledger's `expiring_notice_at`) and writes their events in the same
transaction, so each lot is told about once, however many sweeps run at once. A pass that has not
run only makes the notice late: whether credits have expired is still decided by the ledger's
clock at each write and read.
"""
from datetime import timedelta

from ..ledger import credit_service
from ..ledger.tables import TEAM_WALLETS
from .outbox import emit

EVENT = "lot.expiring"
BATCH = 200


def emit_expiring(days: int, *, batch: int = BATCH) -> int:
    """Write a lot.expiring event for every lot with credits left that expires within `days`
    days and has had none; one transaction per `batch` lots. Returns how many were written
    (0 days: none)."""
    written = 0
    while days > 0:
        with credit_service.writing() as writes:
            lots = writes.notice_expiring(timedelta(days=days), limit=batch)
            for lot in lots:
                emit(writes.session, EVENT, data(lot), at=lot["noticed_at"])
        written += len(lots)
        if len(lots) < batch:
            break
    return written


def data(lot: dict) -> dict:
    """The event's data: the lot, whose wallet (a user's or a team's), and what will lapse when."""
    wallet_id = lot["wallet_id"]
    user = wallet_id < TEAM_WALLETS
    return {"lot_id": lot["lot_id"], "wallet_id": wallet_id, "user_id": wallet_id if user else None,
            "team_id": None if user else wallet_id - TEAM_WALLETS, "credit_type": lot["credit_type"],
            "amount": lot["amount"], "expires_at": lot["expires_at"], "source": lot["source"]}
