"""Balance changes inside one transaction of the caller's (`credit_service.writing()`), for state
that must commit together with them: a purchase's move and the lot it grants or takes back.

The caller locks its own rows first; each method then locks the wallet's row (refilling what is
due) and the account it changes. So a purchase's lock comes before its wallet's, everywhere.
"""
from datetime import datetime, timedelta

from sqlalchemy import select

from . import lots
from .clock import utcnow
from .core import DEFAULT_PRIORITY, checked_amount, checked_priority, credit_type_of
from .errors import ExpiryNotInTheFuture, LotAlreadyVoided, LotFrozen, UnknownLot
from .statements import LEDGER
from .types import CreditType, Grant, TakeBack


class Writes:
    def __init__(self, ledger, session):
        self._ledger = ledger
        self.session = session

    def grant(self, wallet_id: int, amount: int, credit_type, *, reason: str | None = None,
              reference: str | None = None, priority: int = DEFAULT_PRIORITY, expires_at: datetime | None = None,
              source: str = "admin") -> Grant:
        """Add credits as a new lot; what the wallet owes of that credit type is paid from it first.
        A grant with a `reference` already granted to this wallet adds nothing and answers the
        original grant (so a re-sent payment webhook cannot pay twice)."""
        amount, credit_type = checked_amount(amount), credit_type_of(credit_type)
        if expires_at is not None and expires_at <= utcnow():
            raise ExpiryNotInTheFuture(f"expires_at must be in the future, got {expires_at.isoformat()}")
        lot = {"priority": checked_priority(priority), "expires_at": expires_at, "source": source}
        self._open(wallet_id, credit_type)
        return self._ledger._grant(self.session, wallet_id, amount, credit_type, reason, reference, lot)

    def take_back(self, wallet_id: int, amount: int, credit_type, *, reason: str, first_lot: int | None = None,
                  reference: str | None = None) -> TakeBack:
        """Take `amount` credits back (a payment refunded or lost): first what no hold has of
        `first_lot` (the lot the payment bought), then of the wallet's other lots in spending
        order; what is not there (spent already) becomes debt of that credit type, which later
        grants pay first. With a `reference` taken back before, nothing more is taken."""
        amount, credit_type = checked_amount(amount), credit_type_of(credit_type)
        ledger, session = self._ledger, self.session
        self._open(wallet_id, credit_type)
        now = utcnow()
        if reference is not None and session.execute(select(LEDGER.c.id).where(
                LEDGER.c.wallet_id == wallet_id, LEDGER.c.reference == reference)).first():
            return TakeBack(wallet_id, credit_type, amount, 0, 0, [], ledger._spendable(session, wallet_id, now))
        ledger._expire_lots(session, wallet_id, credit_type, now)
        parts = lots.take_free(session, wallet_id, credit_type.value, amount, now, first=first_lot)
        taken = sum(part.amount for part in parts)
        owed = amount - taken
        row = ledger._add_debt(session, wallet_id, credit_type, -taken, owed)
        available, held = row.available + taken, row.held
        for index, part in enumerate(parts):
            available -= part.amount
            ledger._ledger(session, wallet_id, credit_type, "take_back", -part.amount, 0, (available, held),
                           lot_id=part.lot_id, reason=reason, reference=reference if index == 0 else None)
        if owed:
            ledger._ledger(session, wallet_id, credit_type, "debt", 0, 0, (available, held), debt_change=owed,
                           reason=reason, reference=None if parts else reference)
        return TakeBack(wallet_id, credit_type, amount, taken, owed,
                        [{"lot_id": part.lot_id, "amount": part.amount} for part in parts],
                        ledger._spendable(session, wallet_id, now))

    def freeze_lot(self, lot_id: int, *, reason: str) -> dict:
        """Freeze what is left of a lot (its payment is disputed): not spendable, not in the
        balance. Credits of it that holds have set aside stay with them; what they give back
        stays frozen in the lot. Raises UnknownLot, LotAlreadyVoided or LotFrozen."""
        return self._refreeze(lot_id, reason, freeze=True)

    def unfreeze_lot(self, lot_id: int, *, reason: str) -> dict:
        """Make a frozen lot spendable again (a dispute won); what has expired meanwhile lapses."""
        return self._refreeze(lot_id, reason, freeze=False)

    def _refreeze(self, lot_id: int, reason: str, *, freeze: bool) -> dict:
        ledger, session = self._ledger, self.session
        found = lots.one(session, lot_id)
        if found is None:
            raise UnknownLot(f"no lot with id {lot_id}")
        wallet_id, credit_type = found.wallet_id, CreditType(found.credit_type)
        self._open(wallet_id, credit_type)
        now = utcnow()
        ledger._expire_lots(session, wallet_id, credit_type, now)
        lot = session.execute(lots.LOCK_LOT, {"p_lot": lot_id}).one()
        if lot.voided_at is not None:
            raise LotAlreadyVoided(f"lot {lot_id} was voided at {lot.voided_at.isoformat()}")
        if (lot.frozen_at is not None) == freeze:
            raise LotFrozen(f"lot {lot_id} is {'frozen already' if freeze else 'not frozen'}")
        free = lot.remaining - lot.held
        session.execute(lots.FREEZE if freeze else lots.UNFREEZE, {"p_lot": lot_id, "p_now": now})
        if free:
            change = -free if freeze else free
            row = ledger._move(session, wallet_id, credit_type, change, 0)
            ledger._rows(session, wallet_id, credit_type, [("freeze" if freeze else "unfreeze", lot_id, change, 0)],
                         row, reason=reason)
        if not freeze:
            ledger._expire_lots(session, wallet_id, credit_type, now)
        return {"lot": lots.describe(lots.one(session, lot_id), now), "moved": free, "wallet_id": wallet_id,
                "balance": ledger._spendable(session, wallet_id, now)}

    def notice_expiring(self, within: timedelta, limit: int = 200) -> list[dict]:
        """Up to `limit` lots whose credits left expire within `within` from now and that were
        never noticed, marked noticed in this transaction (the caller writes their notices in
        it): {lot_id, wallet_id, credit_type, amount, expires_at, source, noticed_at}, soonest first."""
        now = utcnow()
        return [{"lot_id": row.id, "wallet_id": row.wallet_id, "credit_type": row.credit_type, "amount": row.amount,
                 "expires_at": row.expires_at, "source": row.source, "noticed_at": now}
                for row in lots.to_notice(self.session, now, now + within, limit)]

    # A plan's terms and periods (recurring.py), with the caller's row locked first.
    def set_recurring(self, wallet_id: int, reference: str, terms: dict[str, tuple[int, int]], **options) -> None:
        self._ledger._set_recurring(self.session, wallet_id, reference, terms, **options)

    def clear_templates(self) -> None:
        self._ledger.clear_templates(self.session)

    def end_recurring(self, wallet_id: int, reference: str, at: datetime, extend_from: datetime | None = None) -> None:
        self._ledger._end_recurring(self.session, wallet_id, reference, at, extend_from)

    def grant_period(self, wallet_id: int, reference: str, start: datetime, end: datetime) -> bool:
        return self._ledger._grant_explicit(self.session, wallet_id, reference, start, end)

    def top_up_period(self, wallet_id: int, reference: str, allowance: dict[str, int], key: str) -> dict[str, int]:
        return self._ledger._top_up(self.session, wallet_id, reference, allowance, key)

    def current_period(self, wallet_id: int):
        self._ledger._enter(self.session, wallet_id)
        return self._ledger.current_period(self.session, wallet_id)

    def _open(self, wallet_id: int, credit_type: CreditType) -> None:
        self._ledger._enter(self.session, wallet_id)
        self._ledger._lock_account(self.session, wallet_id, credit_type)
