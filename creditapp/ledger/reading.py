"""Reading a wallet: what it can spend, what lapses next, its lots and its ledger."""
from dataclasses import dataclass

from sqlalchemy import select

from . import lots, procedures
from .clock import utcnow
from .core import credit_type_of
from .holds import REFILL_ATTEMPTS
from .procedures import refuse
from .recurring import WALLETS
from .statements import ACCOUNTS, HOLDS, LEDGER
from .transactions import atomic
from .types import Balance, CreditType


@dataclass(frozen=True)
class LedgerPage:
    items: list
    next_cursor: int | None


@dataclass(frozen=True)
class Overview:
    """A wallet's balance with what lapses next and its debt per credit type."""

    balance: Balance
    expiring: list[dict]
    debt: dict[str, int]


class Reading:
    def get_credit_balance(self, wallet_id: int) -> Balance:
        """What can be spent at this instant: lots past their expiry count for nothing, whether
        or not their expiry has been written yet; a new period's allowance counts from its start."""
        return self.overview(wallet_id, expiring=0).balance

    @property
    def checks_sessions(self) -> bool:
        """Whether the balance read takes the caller's login session and refuses a revoked one
        in the same call (PostgreSQL), so the web layer need not look it up first."""
        return procedures.available()

    def overview(self, wallet_id: int, expiring: int = 5, session_id: str | None = None) -> Overview:
        """What can be spent now, the next credits to lapse, soonest first ([{credit_type,
        amount, expires_at}], at most `expiring`) and the debt, read together. With `session_id`
        (only where `checks_sessions`), SessionRevoked if it was revoked."""
        if procedures.available():
            for _attempt in range(REFILL_ATTEMPTS):
                row, lapsing = procedures.balance(wallet_id=wallet_id, session_id=session_id, expiring=expiring)
                if row.outcome != "refill":
                    break
                self.refill(wallet_id, due=True)
            if row.outcome != "ok":
                refuse(row, wallet_id)
            balance = Balance(**{t.value: getattr(row, t.value) for t in CreditType})
            return Overview(balance, lapsing, {t.value: (row.debt or {}).get(t.value, 0) for t in CreditType})
        if session_id is not None:
            raise ValueError("the session check is part of the ledger call on PostgreSQL only (see checks_sessions)")
        self.refill_if_due(wallet_id)
        with atomic(write=False) as session:
            now = utcnow()
            return Overview(self._spendable(session, wallet_id, now), lots.expiring(session, wallet_id, now, expiring),
                            self._debt(session, wallet_id))

    def balance_overview(self, wallet_id: int, expiring: int = 5,
                         session_id: str | None = None) -> tuple[Balance, list[dict]]:
        found = self.overview(wallet_id, expiring, session_id)
        return found.balance, found.expiring

    def refill_if_due(self, wallet_id: int) -> None:
        with atomic(write=False) as session:
            due = session.execute(select(WALLETS.c.refill_due_at).where(WALLETS.c.id == wallet_id)).scalar()
        if due is not None and due <= utcnow():
            self.refill(wallet_id)

    def list_lots(self, wallet_id: int, *, credit_type=None, include_spent: bool = False,
                  offset: int = 0, limit: int = 20) -> LedgerPage:
        """The wallet's lots in spending order (per credit type), `limit` at a time from `offset`;
        without `include_spent`, only lots with credits still to spend."""
        ctype = credit_type_of(credit_type).value if credit_type is not None else None
        self.refill_if_due(wallet_id)
        with atomic(write=False) as session:
            self._balance(session, wallet_id)  # raises UnknownUser
            now = utcnow()
            rows = lots.listing(session, wallet_id, credit_type=ctype, include_spent=include_spent, now=now,
                                offset=offset, limit=limit + 1)
        items = [lots.describe(row, now) for row in rows[:limit]]
        return LedgerPage(items=items, next_cursor=offset + limit if len(rows) > limit else None)

    def list_transactions(self, wallet_id: int, *, limit: int = 20, before_id: int | None = None,
                          credit_type=None) -> LedgerPage:
        """A page of the wallet's ledger, newest first; `before_id` is the previous page's cursor."""
        query = select(LEDGER).where(LEDGER.c.wallet_id == wallet_id)
        if credit_type is not None:
            query = query.where(LEDGER.c.credit_type == credit_type_of(credit_type).value)
        if before_id is not None:
            query = query.where(LEDGER.c.id < before_id)
        query = query.order_by(LEDGER.c.id.desc()).limit(limit + 1)
        with atomic(write=False) as session:
            self._balance(session, wallet_id)  # raises UnknownUser
            rows = session.execute(query).mappings().all()
        items = [dict(row) for row in rows[:limit]]
        next_cursor = items[-1]["id"] if len(rows) > limit else None
        return LedgerPage(items=items, next_cursor=next_cursor)

    def list_holds(self, wallet_id: int, *, charges: bool = False, open_only: bool = False, limit: int = 20,
                   before_id: int | None = None) -> LedgerPage:
        """A page of the wallet's holds, newest first: only its charges (settled holds that took
        something: their id is what a refund names), or only its open holds."""
        query = select(HOLDS).where(HOLDS.c.wallet_id == wallet_id)
        if charges:
            query = query.where(HOLDS.c.status == "settled", HOLDS.c.settled_amount > 0)
        if open_only:
            query = query.where(HOLDS.c.status == "open")
        if before_id is not None:
            query = query.where(HOLDS.c.id < before_id)
        with atomic(write=False) as session:
            self._balance(session, wallet_id)  # raises UnknownUser
            rows = session.execute(query.order_by(HOLDS.c.id.desc()).limit(limit + 1)).all()
        items = [_hold(row) for row in rows[:limit]]
        return LedgerPage(items=items, next_cursor=items[-1]["id"] if len(rows) > limit else None)

    def held_and_debt(self, wallet_id: int) -> dict[str, dict[str, int]]:
        """Per credit type, what open holds set aside and what the wallet owes."""
        with atomic(write=False) as session:
            rows = session.execute(select(ACCOUNTS.c.credit_type, ACCOUNTS.c.held, ACCOUNTS.c.debt)
                                   .where(ACCOUNTS.c.wallet_id == wallet_id)).all()
        return {row.credit_type: {"held": row.held, "debt": row.debt} for row in rows}


def _hold(row) -> dict:
    return {"id": row.id, "status": row.status, "credit_type": row.credit_type, "held": row.amount,
            "charged": row.settled_amount, "refunded": row.refunded_amount,
            "refundable": row.settled_amount - row.refunded_amount, "feature": row.feature,
            "user_id": row.user_id, "key_id": row.key_id, "created_at": row.created_at,
            "expires_at": row.expires_at, "closed_at": row.closed_at}
