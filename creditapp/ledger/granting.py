"""Credits coming in and going out outside of holds: wallets opened, grants (which pay debt
first), take-backs (which record debt for what is gone), frozen lots and voids. The writes
themselves are in writes.py, usable inside a transaction of the caller's (`writing()`)."""
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import lots, recurring
from .clock import utcnow
from .core import DEFAULT_PRIORITY
from .errors import LotAlreadyVoided, ReferenceConflict, UnknownLot
from .statements import ACCOUNTS, LEDGER
from .tables import TEAM_WALLETS, Wallet
from .transactions import atomic, retry_conflicts
from .types import Balance, CreditType, Grant, TakeBack
from .writes import Writes

WALLETS = Wallet.__table__


class Granting:
    def add_credits(self, wallet_id: int, amount: int, credit_type, reason: str | None = None) -> Balance:
        return self.grant(wallet_id, amount, credit_type, reason=reason).balance

    @retry_conflicts
    def grant(
        self, wallet_id: int, amount: int, credit_type, *, reason: str | None = None,
        reference: str | None = None, priority: int = DEFAULT_PRIORITY,
        expires_at: datetime | None = None, source: str = "admin",
        also: Callable[[Session, Grant], None] | None = None,
    ) -> Grant:
        """Add credits as a new lot; what the wallet owes of that credit type is paid from it first.
        A grant with a `reference` already granted to this wallet adds nothing and answers the
        original grant (so a re-sent payment webhook cannot pay twice). `also(session, grant)`
        runs in the same transaction."""
        def run() -> Grant:
            with self.writing() as writes:
                result = writes.grant(wallet_id, amount, credit_type, reason=reason, reference=reference,
                                      priority=priority, expires_at=expires_at, source=source)
                if also is not None:
                    also(writes.session, result)
                return result

        try:
            return run()
        except IntegrityError:
            if reference is None:
                raise
            return run()  # another grant with this reference committed first; answer it

    @contextmanager
    def writing(self) -> Iterator["Writes"]:
        """One transaction for writes of the caller's that must commit with balance changes (a
        purchase's state and its lot): lock the caller's own rows first (`writes.session`), then
        change balances with `writes`. Callers wrap the whole of it in `retry_conflicts`."""
        with atomic() as session:
            yield Writes(self, session)

    def _grant(self, session, wallet_id, amount, credit_type, reason, reference, lot: dict) -> Grant:
        """A lot of `amount` (the caller holds the account's lock); the debt of its credit type is
        repaid from it at once, in the same transaction."""
        if reference is not None:
            original = session.execute(
                select(LEDGER).where(LEDGER.c.wallet_id == wallet_id, LEDGER.c.reference == reference)
            ).mappings().one_or_none()
            if original is not None:
                if (original["amount"], original["credit_type"]) != (amount, credit_type.value):
                    raise ReferenceConflict(
                        f"reference {reference!r} was used for a grant of {original['amount']} "
                        f"{original['credit_type']}"
                    )
                now = utcnow()
                original_lot = lots.one(session, original["lot_id"]) if original["lot_id"] else None
                return Grant(
                    id=original["id"], wallet_id=wallet_id, amount=amount, credit_type=credit_type,
                    reason=original["reason"], reference=reference,
                    balance=self._spendable(session, wallet_id, now), created=False,
                    lot_id=original["lot_id"], lot=lots.describe(original_lot, now) if original_lot else None,
                )
        now = utcnow()
        row = self._move(session, wallet_id, credit_type, amount, 0)
        lot_id = lots.create(session, wallet_id=wallet_id, credit_type=credit_type.value, amount=amount,
                             reason=reason, reference=reference, now=now, **lot)
        entry_id = self._ledger(session, wallet_id, credit_type, "grant", amount, 0, row,
                                reason=reason, reference=reference, lot_id=lot_id)
        repaid = self._repay(session, wallet_id, credit_type, lot_id, amount, row)
        return Grant(
            id=entry_id, wallet_id=wallet_id, amount=amount, credit_type=credit_type, reason=reason,
            reference=reference, balance=self._spendable(session, wallet_id, now), created=True, lot_id=lot_id,
            lot=lots.describe(lots.one(session, lot_id), now), repaid=repaid,
        )

    def _repay(self, session, wallet_id, credit_type, lot_id: int, amount: int, after) -> int:
        owed = session.execute(select(ACCOUNTS.c.debt).where(
            ACCOUNTS.c.wallet_id == wallet_id, ACCOUNTS.c.credit_type == credit_type.value)).scalar_one()
        repay = min(owed, amount)
        if repay:
            session.execute(lots.TAKE, {"p_lot": lot_id, "p_n": repay})
            row = self._add_debt(session, wallet_id, credit_type, -repay, -repay)
            self._ledger(session, wallet_id, credit_type, "repay", -repay, 0, row, lot_id=lot_id,
                         debt_change=-repay, reason="debt repaid")
        return repay

    @retry_conflicts
    def take_back(self, wallet_id: int, amount: int, credit_type, *, reason: str, first_lot: int | None = None,
                  reference: str | None = None) -> TakeBack:
        """See `Writes.take_back`; one transaction."""
        with self.writing() as writes:
            return writes.take_back(wallet_id, amount, credit_type, reason=reason, first_lot=first_lot,
                                    reference=reference)

    @retry_conflicts
    def freeze_lot(self, lot_id: int, *, reason: str) -> dict:
        """See `Writes.freeze_lot`; one transaction."""
        with self.writing() as writes:
            return writes.freeze_lot(lot_id, reason=reason)

    @retry_conflicts
    def unfreeze_lot(self, lot_id: int, *, reason: str) -> dict:
        """See `Writes.unfreeze_lot`; one transaction."""
        with self.writing() as writes:
            return writes.unfreeze_lot(lot_id, reason=reason)

    @retry_conflicts
    def void_lot(self, lot_id: int, *, reason: str, also: Callable[[Session, dict], None] | None = None) -> dict:
        """Remove what is left of a lot that nobody holds (a payment was reversed). Credits of it
        that holds have set aside stay with them: what they settle is spent, what they give back
        is voided then. Raises UnknownLot or LotAlreadyVoided. `also(session, result)` runs in
        the same transaction."""
        with atomic() as session:
            found = lots.one(session, lot_id)
            if found is None:
                raise UnknownLot(f"no lot with id {lot_id}")
            wallet_id, credit_type = found.wallet_id, CreditType(found.credit_type)
            self._enter(session, wallet_id)
            self._lock_account(session, wallet_id, credit_type)
            now = utcnow()
            self._expire_lots(session, wallet_id, credit_type, now)  # what expired is not voided
            lot = session.execute(lots.LOCK_LOT, {"p_lot": lot_id}).one()
            if lot.voided_at is not None:
                raise LotAlreadyVoided(f"lot {lot_id} was voided at {lot.voided_at.isoformat()}")
            free = lot.remaining - lot.held
            changes = [("void", lot_id, -free, 0)] if free else []
            if free and lot.frozen_at is not None:
                # Frozen credits are not in the balance: they come back to it and go at once.
                changes.insert(0, ("unfreeze", lot_id, free, 0))
            session.execute(lots.VOID, {"p_lot": lot_id, "p_now": now})
            if changes:
                row = self._move(session, wallet_id, credit_type, sum(c[2] for c in changes), 0)
                self._rows(session, wallet_id, credit_type, changes, row, reason=reason)
            result = {"lot": lots.describe(lots.one(session, lot_id), now), "voided": free,
                      "wallet_id": wallet_id, "balance": self._spendable(session, wallet_id, now)}
            if also is not None:
                also(session, result)
            return result

    def open_wallet(self, session, wallet_id: int, grant: Balance = Balance(), reason: str = "signup grant",
                    expires_at: datetime | None = None) -> None:
        """Open a new wallet (a user's or a team's, by its id) with both balances, inside the caller's
        transaction, granting `grant` as signup lots (that expire at `expires_at`, or never). A user's
        wallet follows the default plan from its first request, if there is one."""
        now = utcnow()
        user = wallet_id < TEAM_WALLETS
        session.execute(insert(WALLETS).values(
            id=wallet_id, kind="user" if user else "team", user_id=wallet_id if user else None,
            team_id=None if user else wallet_id - TEAM_WALLETS, created_at=now,
            refill_due_at=now if user and recurring.templates_exist(session) else None,
        ))
        for credit_type in CreditType:
            amount = getattr(grant, credit_type.value)
            session.execute(
                insert(ACCOUNTS).values(wallet_id=wallet_id, credit_type=credit_type.value, available=amount, held=0,
                                        debt=0, alert_below=False)
            )
            if amount:
                lot_id = lots.create(session, wallet_id=wallet_id, credit_type=credit_type.value, amount=amount,
                                     priority=DEFAULT_PRIORITY, expires_at=expires_at, source="signup",
                                     reason=reason, reference=None, now=now)
                self._ledger(session, wallet_id, credit_type, "grant", amount, 0, (amount, 0),
                               reason=reason, lot_id=lot_id)


def user_wallet(user_id: int) -> int:
    """A user's wallet has the user's id."""
    return user_id


def team_wallet(team_id: int) -> int:
    return TEAM_WALLETS + team_id
