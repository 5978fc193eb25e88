"""Refunds: all or part of what a charge took, given back to the lots it came from."""
from collections.abc import Callable

from sqlalchemy.orm import Session

from . import caps, lots, usage
from . import statements as sql
from .clock import utcnow
from .core import checked_amount
from .errors import AlreadyRefunded, NotACharge, NotRefundable, RefundExceedsCharge, UnknownCharge
from .transactions import atomic, retry_conflicts
from .types import CreditType, Refund


class Refunds:
    @retry_conflicts
    def refund(self, hold_id: int, amount: int | None = None, *, reason: str,
               also: Callable[[Session, Refund], None] | None = None) -> Refund:
        """Give back all (`amount` None) or part of what a settled hold charged, to the lots it came
        from, in one transaction; `also(session, refund)` runs in it (to store an answer). The
        caps the hold counted against get it back too, in the period the hold was taken in.

        Raises UnknownCharge, NotACharge (it charged nothing), AlreadyRefunded (nothing is left to
        refund) or RefundExceedsCharge; a refund never gives back more than was charged, however
        many run at once: they queue on the account's lock."""
        if amount is not None:
            amount = checked_amount(amount)
        with atomic() as session:
            found = session.execute(sql.HOLD_ACCOUNT, {"p_hold": hold_id}).one_or_none()
            if found is None:
                raise UnknownCharge(f"no charge with id {hold_id}")
            wallet_id, credit_type = found.wallet_id, CreditType(found.credit_type)
            self._enter(session, wallet_id)
            self._lock_account(session, wallet_id, credit_type)
            hold = session.execute(sql.LOCK_HOLD_FOR_REFUND, {"p_hold": hold_id}).one()
            if hold.status != "settled" or hold.settled_amount == 0:
                raise NotACharge(f"hold {hold_id} charged nothing ({hold.status})")
            refundable = hold.settled_amount - hold.refunded_amount
            if refundable == 0:
                raise AlreadyRefunded(f"charge {hold_id} was refunded in full")
            amount = refundable if amount is None else amount
            if amount > refundable:
                raise RefundExceedsCharge(amount, refundable)
            if not lots.has_receipt(session, hold_id):
                raise NotRefundable(f"charge {hold_id} was made before credit lots existed; grant the credits instead")
            now = utcnow()
            parts = lots.refund(session, hold_id, amount, now)
            session.execute(sql.ADD_REFUNDED, {"p_hold": hold_id, "p_n": amount})
            changes = [("refund", part.lot_id, part.amount, 0) for part, _gone in parts]
            changes += [(gone, part.lot_id, -part.amount, 0) for part, gone in parts if gone]
            row = self._move(session, wallet_id, credit_type, sum(c[2] for c in changes), 0)
            self._rows(session, wallet_id, credit_type, changes, row, hold_id=hold_id, reason=reason, now=now)
            caps.give_back(session, hold_id, credit_type.value, amount)
            usage.count(session, now, wallet_id, hold.user_id, hold.key_id, hold.feature, credit_type.value,
                        refunded=amount)
            result = Refund(
                hold_id=hold_id, wallet_id=wallet_id, credit_type=credit_type, amount=amount,
                refunded_total=hold.refunded_amount + amount, charged=hold.settled_amount,
                lots=[{"lot_id": part.lot_id, "amount": part.amount, "lapsed": gone in ("expire", "void")}
                      for part, gone in parts],
                balance=self._spendable(session, wallet_id, now),
            )
            if also is not None:
                also(session, result)
        return result
