"""What every ledger operation is built from: locking an account, moving its balance, writing
ledger rows, ending a hold. These run inside the caller's transaction.

Balances change only through relative, conditional UPDATEs (`available = available - n ... WHERE
available >= n`) and each change appends a ledger row in the same transaction, so the database
itself refuses an overdraft and the ledger always sums to the balance.

Lock order is always account row first, then hold rows, so settle, release and the expiry sweep
cannot deadlock with each other. Every write to an account's lots, holds and cap spend happens
under its account row's lock, which the PostgreSQL functions rely on to read them without
locking them one by one. Where two accounts of one wallet are locked, they are locked in the
order of CreditType.
"""
from datetime import datetime, timedelta

from . import alerts, caps, lots, usage
from . import statements as sql
from .clock import utcnow
from .errors import UnknownUser, UnknownWallet
from .tables import MAX_AMOUNT, TEAM_WALLETS
from .types import Balance, CreditType

DEFAULT_PRIORITY = 50  # lots are spent lowest priority first; 0 to 100


def credit_type_of(value) -> CreditType:
    try:
        return CreditType(value)
    except ValueError:
        raise ValueError(f"unknown credit type {value!r}") from None


def checked_priority(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"priority must be an integer from 0 to 100, got {value!r}")
    return value


def checked_amount(value) -> int:
    # bool is an int subclass: True must not pass for 1 credit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"amount must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"amount must be positive, got {value}")
    if value > MAX_AMOUNT:
        raise ValueError(f"amount must be at most {MAX_AMOUNT}, got {value}")
    return value


def unknown(wallet_id: int) -> UnknownWallet:
    """The error for a wallet that does not exist: a user's is an unknown user."""
    if wallet_id < TEAM_WALLETS:
        return UnknownUser(f"no user with id {wallet_id}")
    return UnknownWallet(f"no team wallet {wallet_id}")


class LedgerCore:
    def __init__(self, hold_ttl_seconds: int = 600, idempotency_ttl_seconds: int = 24 * 3600):
        self.hold_ttl_seconds = hold_ttl_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds

    def configure(self, *, hold_ttl_seconds: int, idempotency_ttl_seconds: int) -> None:
        if hold_ttl_seconds <= 0:
            raise ValueError("hold TTL must be positive")
        if idempotency_ttl_seconds <= hold_ttl_seconds:
            # A key that could expire while its request still runs would let a retry charge again.
            raise ValueError(
                f"IDEMPOTENCY_TTL_SECONDS ({idempotency_ttl_seconds}) must be longer than "
                f"CREDIT_HOLD_TTL_SECONDS ({hold_ttl_seconds})"
            )
        self.hold_ttl_seconds = hold_ttl_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds

    def _key_expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.idempotency_ttl_seconds)

    def _balance(self, session, wallet_id: int) -> Balance:
        rows = session.execute(sql.BALANCES, {"p_wallet": wallet_id}).all()
        if not rows:
            raise unknown(wallet_id)
        return Balance(**{row.credit_type: row.available for row in rows})

    def _debt(self, session, wallet_id: int) -> dict[str, int]:
        return {row.credit_type: row.debt for row in session.execute(sql.BALANCES, {"p_wallet": wallet_id})}

    def _lock_account(self, session, wallet_id: int, credit_type: CreditType):
        row = session.execute(sql.LOCK_ACCOUNT, {"p_wallet": wallet_id, "p_type": credit_type.value}).one_or_none()
        if row is None:
            raise unknown(wallet_id)
        return row

    def _take_available(self, session, wallet_id, credit_type, amount: int, *, held_change: int):
        """The one conditional write: None when `amount` is more than is available."""
        row = session.execute(sql.TAKE_AVAILABLE, {
            "p_wallet": wallet_id, "p_type": credit_type.value, "p_amount": amount, "p_held": held_change,
        }).one_or_none()
        if row is not None:
            alerts.moved(session, wallet_id, credit_type)
        return row

    def _move(self, session, wallet_id, credit_type, available_change: int, held_change: int):
        """Every other change of an account's balance goes through here or `_add_debt`."""
        if available_change:
            alerts.moved(session, wallet_id, credit_type)
        return session.execute(sql.MOVE, {
            "p_wallet": wallet_id, "p_type": credit_type.value, "p_available": available_change,
            "p_held": held_change,
        }).one()

    def _add_debt(self, session, wallet_id, credit_type, available_change: int, debt_change: int):
        if available_change:
            alerts.moved(session, wallet_id, credit_type)
        return session.execute(sql.ADD_DEBT, {"p_wallet": wallet_id, "p_type": credit_type.value,
                                              "p_available": available_change, "p_debt": debt_change}).one()

    def _ledger(
        self, session, wallet_id, credit_type, kind, amount, held_change, after,
        *, hold_id=None, reason=None, reference=None, lot_id=None, debt_change=0, now=None,
    ) -> int:
        balance_after, held_after = after[0], after[1]
        return session.execute(sql.INSERT_LEDGER, {
            "wallet_id": wallet_id, "credit_type": credit_type.value, "kind": kind, "amount": amount,
            "held_change": held_change, "debt_change": debt_change, "balance_after": balance_after,
            "held_after": held_after, "hold_id": hold_id, "lot_id": lot_id, "reason": reason,
            "reference": reference, "created_at": now or utcnow(),
        }).scalar_one()

    def _rows(self, session, wallet_id, credit_type, changes, after, *, hold_id=None, reason=None, now=None) -> None:
        """One ledger row per (kind, lot, change of available, change of held), in order, ending at
        `after`, the account's state that the caller's single account update left. `now` is the
        time the caller decided at (the usage rollup counts that hour): the rows' time too."""
        available = after[0] - sum(c[2] for c in changes)
        held = after[1] - sum(c[3] for c in changes)
        for kind, lot_id, d_available, d_held in changes:
            available, held = available + d_available, held + d_held
            self._ledger(session, wallet_id, credit_type, kind, d_available, d_held, (available, held),
                         hold_id=hold_id, reason=reason, lot_id=lot_id, now=now)

    def _spendable(self, session, wallet_id: int, now: datetime) -> Balance:
        """The balance less what lots past their expiry still count (until a write expires them)."""
        balance = self._balance(session, wallet_id)
        due = lots.due_by_account(session, wallet_id, now)
        if not due:
            return balance
        return Balance(**{t.value: getattr(balance, t.value) - due.get(t.value, 0) for t in CreditType})

    def _expire_lots(self, session, wallet_id, credit_type, now: datetime) -> None:
        """Write off the free part of this account's lots that are past their expiry."""
        due = lots.expire_due(session, wallet_id, credit_type.value, now)
        if due:
            row = self._move(session, wallet_id, credit_type, -sum(p.amount for p in due), 0)
            self._rows(session, wallet_id, credit_type, [("expire", p.lot_id, -p.amount, 0) for p in due], row,
                       reason="lot expired")

    def _expire_holds(self, session, wallet_id, credit_type, now: datetime, excluding: int | None = None):
        """Give back this account's expired holds: how many, and the account's state after (None
        when there were none)."""
        expired = session.execute(sql.EXPIRED_HOLDS, {
            "p_wallet": wallet_id, "p_type": credit_type.value, "p_now": now, "p_exclude": excluding or 0,
        }).all()
        row = None
        for (hold_id,) in expired:
            row = self._end_hold(session, wallet_id, credit_type, hold_id, 0, "expired", now)
        return len(expired), row

    def _expire_hold(self, session, wallet_id, credit_type, hold_id: int, now: datetime) -> None:
        """End one open hold that is past its expiry: its credits go back, nothing is charged."""
        self._end_hold(session, wallet_id, credit_type, hold_id, 0, "expired", now)

    def _end_hold(self, session, wallet_id, credit_type, hold_id: int, charge: int, status: str, now: datetime,
                  reason: str | None = None):
        """Close a hold with `status`: its receipt is consumed for `charge` in spending order and
        the rest goes back to its lots (lapsing at once where the lot has expired or was voided,
        kept frozen in a frozen lot); its caps get back what it did not charge, and the hour's
        usage counts it. Returns the account's state after."""
        ending = lots.end_hold(session, hold_id, charge, now)
        hold = session.execute(sql.CLOSE_HOLD, {"p_hold": hold_id, "p_status": status, "p_settled": charge,
                                                "p_now": now}).one()
        back = "expire" if status == "expired" else "release"
        changes = (
            [("settle", p.lot_id, 0, -p.amount) for p in ending.settled]
            + [(back, p.lot_id, p.amount, -p.amount) for p in ending.released]
            + [("expire", p.lot_id, 0, -p.amount) for p in ending.lapsed]
            + [("void", p.lot_id, 0, -p.amount) for p in ending.voided]
            + [("freeze", p.lot_id, 0, -p.amount) for p in ending.frozen]
        )
        row = self._move(session, wallet_id, credit_type, sum(c[2] for c in changes), sum(c[3] for c in changes))
        self._rows(session, wallet_id, credit_type, changes, row, hold_id=hold_id, reason=reason, now=now)
        if hold.amount > charge:
            caps.give_back(session, hold_id, credit_type.value, hold.amount - charge)
        usage.count(session, now, wallet_id, hold.user_id, hold.key_id, hold.feature, credit_type.value,
                    requests=1, failed=int(charge == 0), charged=charge)
        return row
