"""Lots: where an account's credits come from, and the order they are spent in.

Every grant is a lot. Spending draws from lots in one order, everywhere: the lowest `priority`
first, then the earliest `expires_at` (lots that never expire last), then the oldest. A hold
allocates its amount from lots in that order when it is taken and keeps the allocation as its
receipt (credit_hold_lots); when it ends, its charge is consumed from the receipt in the same
order and the rest goes back to the lots it came from. A part that goes back to a lot that has
expired (or was voided) lapses at once; one that goes back to a frozen lot (its payment is
disputed) stays in it, frozen.

From its `expires_at` on a lot's credits are never spendable: the write that needs them first
expires what is due (`expire_due`, under the account's lock), and reads subtract what is due
but not yet written. Sweeps tidy up; they do not decide.

These functions run inside the caller's transaction, after it has locked the account.
"""
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, insert, or_, select, update

from .tables import CreditHoldLot, CreditLot

LOTS = CreditLot.__table__
RECEIPTS = CreditHoldLot.__table__

SPENDING_ORDER = (LOTS.c.priority, LOTS.c.expires_at.is_(None), LOTS.c.expires_at, LOTS.c.created_at, LOTS.c.id)

_ACCOUNT = and_(LOTS.c.wallet_id == bindparam("p_wallet"), LOTS.c.credit_type == bindparam("p_type"))
_SPENDABLE = and_(
    LOTS.c.remaining > LOTS.c.held, LOTS.c.voided_at.is_(None), LOTS.c.frozen_at.is_(None),
    or_(LOTS.c.expires_at.is_(None), LOTS.c.expires_at > bindparam("p_now")),
)
_DUE = and_(LOTS.c.remaining > LOTS.c.held, LOTS.c.expires_at <= bindparam("p_now"), LOTS.c.frozen_at.is_(None))

SPENDABLE_LOTS = (
    select(LOTS.c.id, (LOTS.c.remaining - LOTS.c.held).label("free"))
    .where(_ACCOUNT, _SPENDABLE).order_by(*SPENDING_ORDER).with_for_update()
)
DUE_LOTS = (
    select(LOTS.c.id, (LOTS.c.remaining - LOTS.c.held).label("free"))
    .where(_ACCOUNT, _DUE).order_by(LOTS.c.id).with_for_update()
)
DUE_TOTAL = select(LOTS.c.credit_type, (LOTS.c.remaining - LOTS.c.held).label("free")).where(
    LOTS.c.wallet_id == bindparam("p_wallet"), _DUE)
HOLD_MORE = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(held=LOTS.c.held + bindparam("p_n"))
SPEND_FREE = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(remaining=LOTS.c.remaining - bindparam("p_n"))
LAPSE_FREE = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(remaining=LOTS.c.held)
END_HELD = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(
    held=LOTS.c.held - bindparam("p_held"), remaining=LOTS.c.remaining - bindparam("p_gone"))
RECEIPT = (
    select(RECEIPTS.c.lot_id, RECEIPTS.c.amount, LOTS.c.expires_at, LOTS.c.voided_at, LOTS.c.frozen_at)
    .join(LOTS, LOTS.c.id == RECEIPTS.c.lot_id)
    .where(RECEIPTS.c.hold_id == bindparam("p_hold"))
    .order_by(*SPENDING_ORDER)
)
SET_SETTLED = update(RECEIPTS).where(
    RECEIPTS.c.hold_id == bindparam("p_hold"), RECEIPTS.c.lot_id == bindparam("p_lot")
).values(settled=bindparam("p_n"))
GROW_RECEIPT = update(RECEIPTS).where(
    RECEIPTS.c.hold_id == bindparam("p_hold"), RECEIPTS.c.lot_id == bindparam("p_lot")
).values(amount=RECEIPTS.c.amount + bindparam("p_n"))


@dataclass(frozen=True)
class Part:
    """Credits of one lot moved by one step."""

    lot_id: int
    amount: int


@dataclass
class Ending:
    """How a hold's receipt comes out when the hold ends with `charge` settled."""

    settled: list[Part]
    released: list[Part]  # back to a lot that can still be spent
    lapsed: list[Part]  # back to a lot that has expired: gone at once
    voided: list[Part]  # back to a lot that was voided: gone at once
    frozen: list[Part]  # back to a frozen lot: kept in it, not spendable


def dead(row, now: datetime) -> str | None:
    """Why credits given back to this lot cannot be spent again: "void", "expire" (both gone at
    once), "freeze" (kept in the lot, frozen), or None."""
    if row.voided_at is not None:
        return "void"
    if row.expires_at is not None and row.expires_at <= now:
        return "expire"
    if row.frozen_at is not None:
        return "freeze"
    return None


def create(session, *, wallet_id: int, credit_type: str, amount: int, priority: int,
           expires_at: datetime | None, source: str, reason: str | None, reference: str | None,
           now: datetime) -> int:
    return session.execute(insert(LOTS).values(
        wallet_id=wallet_id, credit_type=credit_type, amount=amount, remaining=amount, held=0,
        priority=priority, expires_at=expires_at, source=source, reason=reason, reference=reference,
        created_at=now,
    ).returning(LOTS.c.id)).scalar_one()


def expire_due(session, wallet_id: int, credit_type: str, now: datetime) -> list[Part]:
    """Expire the free part of every lot past its `expires_at`; held parts stay with their holds
    (frozen lots wait: their credits are not in the balance)."""
    params = {"p_wallet": wallet_id, "p_type": credit_type, "p_now": now}
    due = [Part(row.id, row.free) for row in session.execute(DUE_LOTS, params)]
    for part in due:
        session.execute(LAPSE_FREE, {"p_lot": part.lot_id})
    return due


def due_by_account(session, wallet_id: int, now: datetime) -> dict[str, int]:
    """Credits of this wallet's lots that are past their expiry but not yet written off."""
    due: dict[str, int] = {}
    for row in session.execute(DUE_TOTAL, {"p_wallet": wallet_id, "p_now": now}):
        due[row.credit_type] = due.get(row.credit_type, 0) + row.free
    return due


def allocate(session, wallet_id: int, credit_type: str, amount: int, now: datetime, *, hold: bool) -> list[Part]:
    """Take `amount` from the account's lots in spending order: set it aside (`hold`) or spend it
    at once. The account's own conditional write has already made sure it is there."""
    parts, left = [], amount
    for row in session.execute(SPENDABLE_LOTS, {"p_wallet": wallet_id, "p_type": credit_type, "p_now": now}):
        take = min(left, row.free)
        session.execute(HOLD_MORE if hold else SPEND_FREE, {"p_lot": row.id, "p_n": take})
        parts.append(Part(row.id, take))
        left -= take
        if not left:
            return parts
    # The account said the credits were there and the lots disagree: never spend on that.
    raise RuntimeError(f"lots of wallet {wallet_id} {credit_type} hold {left} fewer credits than the account")


def record_receipt(session, hold_id: int, parts: list[Part], *, grow: bool = False) -> None:
    for part in parts:
        if grow and session.execute(GROW_RECEIPT, {"p_hold": hold_id, "p_lot": part.lot_id, "p_n": part.amount}).rowcount:
            continue
        session.execute(insert(RECEIPTS).values(hold_id=hold_id, lot_id=part.lot_id, amount=part.amount, settled=0))


def end_hold(session, hold_id: int, charge: int, now: datetime) -> Ending:
    """Consume `charge` from the hold's receipt in spending order and give back the rest."""
    ending, left = Ending([], [], [], [], []), charge
    for row in session.execute(RECEIPT, {"p_hold": hold_id}).all():
        take = min(left, row.amount)
        left -= take
        back = row.amount - take
        gone = dead(row, now)
        session.execute(END_HELD, {"p_lot": row.lot_id, "p_held": row.amount,
                                   "p_gone": take + (back if gone in ("void", "expire") else 0)})
        if take:
            session.execute(SET_SETTLED, {"p_hold": hold_id, "p_lot": row.lot_id, "p_n": take})
            ending.settled.append(Part(row.lot_id, take))
        if back:
            {"void": ending.voided, "expire": ending.lapsed, "freeze": ending.frozen,
             None: ending.released}[gone].append(Part(row.lot_id, back))
    if left:
        raise RuntimeError(f"hold {hold_id} cannot settle {charge}: its receipt holds {charge - left} less")
    return ending


def status(row, now: datetime) -> str:
    """voided; else expired once past its expiry; else frozen; else spent when nothing remains;
    else active."""
    if row.voided_at is not None:
        return "voided"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    if row.frozen_at is not None:
        return "frozen"
    return "spent" if row.remaining == 0 else "active"


def describe(row, now: datetime) -> dict:
    return {
        "id": row.id, "credit_type": row.credit_type, "granted": row.amount, "remaining": row.remaining,
        "held": row.held, "priority": row.priority, "expires_at": row.expires_at, "source": row.source,
        "reason": row.reason, "reference": row.reference, "created_at": row.created_at,
        "status": status(row, now), "frozen_at": row.frozen_at,
    }


def listing(session, wallet_id: int, *, credit_type: str | None, include_spent: bool, now: datetime,
            offset: int, limit: int) -> list:
    query = select(LOTS).where(LOTS.c.wallet_id == wallet_id)
    if credit_type is not None:
        query = query.where(LOTS.c.credit_type == credit_type)
    if not include_spent:
        query = query.where(
            LOTS.c.remaining > 0, LOTS.c.voided_at.is_(None),
            or_(LOTS.c.expires_at.is_(None), LOTS.c.expires_at > now),
        )
    return session.execute(query.order_by(LOTS.c.credit_type, *SPENDING_ORDER).offset(offset).limit(limit)).all()


def expiring(session, wallet_id: int, now: datetime, limit: int) -> list[dict]:
    """The next credits to lapse: spendable parts of lots that expire, soonest first."""
    rows = session.execute(
        select(LOTS.c.credit_type, (LOTS.c.remaining - LOTS.c.held).label("amount"), LOTS.c.expires_at)
        .where(LOTS.c.wallet_id == wallet_id, LOTS.c.remaining > LOTS.c.held, LOTS.c.voided_at.is_(None),
               LOTS.c.frozen_at.is_(None), LOTS.c.expires_at > now)
        .order_by(LOTS.c.expires_at, LOTS.c.id).limit(limit)
    ).all()
    return [{"credit_type": r.credit_type, "amount": r.amount, "expires_at": r.expires_at} for r in rows]


def one(session, lot_id: int):
    return session.execute(select(LOTS).where(LOTS.c.id == lot_id)).one_or_none()


REFUNDABLE = (
    select(RECEIPTS.c.lot_id, (RECEIPTS.c.settled - RECEIPTS.c.refunded).label("refundable"),
           LOTS.c.expires_at, LOTS.c.voided_at, LOTS.c.frozen_at)
    .join(LOTS, LOTS.c.id == RECEIPTS.c.lot_id)
    .where(RECEIPTS.c.hold_id == bindparam("p_hold"), RECEIPTS.c.settled > RECEIPTS.c.refunded)
    .order_by(*(column.desc() for column in SPENDING_ORDER))
)
ADD_REFUNDED = update(RECEIPTS).where(
    RECEIPTS.c.hold_id == bindparam("p_hold"), RECEIPTS.c.lot_id == bindparam("p_lot")
).values(refunded=RECEIPTS.c.refunded + bindparam("p_n"))
GIVE_BACK = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(remaining=LOTS.c.remaining + bindparam("p_n"))


def refund(session, hold_id: int, amount: int, now: datetime) -> list[tuple[Part, str | None]]:
    """Give `amount` of a charge back to the lots it was taken from, undoing it from its end (the
    lot spent last gets its credits back first). A part whose lot has since expired or been voided
    comes back and goes at once, one whose lot is frozen comes back frozen: returns each part with
    "expire"/"void"/"freeze" for those, None otherwise."""
    parts, left = [], amount
    for row in session.execute(REFUNDABLE, {"p_hold": hold_id}).all():
        give = min(left, row.refundable)
        session.execute(ADD_REFUNDED, {"p_hold": hold_id, "p_lot": row.lot_id, "p_n": give})
        gone = dead(row, now)
        if gone in (None, "freeze"):
            session.execute(GIVE_BACK, {"p_lot": row.lot_id, "p_n": give})
        parts.append((Part(row.lot_id, give), gone))
        left -= give
        if not left:
            return parts
    raise RuntimeError(f"hold {hold_id} has {left} less to refund than it says")


def has_receipt(session, hold_id: int) -> bool:
    return session.execute(select(RECEIPTS.c.lot_id).where(RECEIPTS.c.hold_id == hold_id).limit(1)).first() is not None


VOID = update(LOTS).where(LOTS.c.id == bindparam("p_lot"), LOTS.c.voided_at.is_(None)).values(
    voided_at=bindparam("p_now"), remaining=LOTS.c.held)
LOCK_LOT = select(LOTS).where(LOTS.c.id == bindparam("p_lot")).with_for_update()

FREEZE = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(frozen_at=bindparam("p_now"))
UNFREEZE = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(frozen_at=None)
TAKE = update(LOTS).where(LOTS.c.id == bindparam("p_lot")).values(remaining=LOTS.c.remaining - bindparam("p_n"))


def take_free(session, wallet_id: int, credit_type: str, amount: int, now: datetime,
              first: int | None = None) -> list[Part]:
    """Take up to `amount` of what no hold has, from lot `first` and then from the account's lots
    in spending order; returns what was taken (possibly less than asked)."""
    parts, left = [], amount
    if first is not None:
        row = session.execute(LOCK_LOT, {"p_lot": first}).one_or_none()
        if row is not None and dead(row, now) is None and row.remaining > row.held:
            take = min(left, row.remaining - row.held)
            session.execute(TAKE, {"p_lot": first, "p_n": take})
            parts.append(Part(first, take))
            left -= take
    if left:
        for row in session.execute(SPENDABLE_LOTS, {"p_wallet": wallet_id, "p_type": credit_type, "p_now": now}).all():
            if row.id == first:
                continue
            take = min(left, row.free)
            session.execute(TAKE, {"p_lot": row.id, "p_n": take})
            parts.append(Part(row.id, take))
            left -= take
            if not left:
                break
    return parts


TO_NOTICE = (
    select(LOTS.c.id, LOTS.c.wallet_id, LOTS.c.credit_type, (LOTS.c.remaining - LOTS.c.held).label("amount"),
           LOTS.c.expires_at, LOTS.c.source)
    .where(LOTS.c.expires_at > bindparam("p_now"), LOTS.c.expires_at <= bindparam("p_until"),
           LOTS.c.expiring_notice_at.is_(None), LOTS.c.remaining > LOTS.c.held, LOTS.c.voided_at.is_(None),
           LOTS.c.frozen_at.is_(None))
    .order_by(LOTS.c.expires_at, LOTS.c.id).limit(bindparam("p_limit"))
    # A lot a write has locked is the next pass's: this never waits for a paid request.
    .with_for_update(skip_locked=True)
)
NOTICED = update(LOTS).where(LOTS.c.id.in_(bindparam("p_lots", expanding=True))).values(
    expiring_notice_at=bindparam("p_now"))


def to_notice(session, now: datetime, until: datetime, limit: int) -> list:
    """Lots with credits left to spend that expire after `now` and by `until` and have had no
    expiring notice, soonest first, marked as noticed now (once per lot). Only the notice column
    changes, which no reader of a lot's credits looks at: no account lock is needed."""
    rows = session.execute(TO_NOTICE, {"p_now": now, "p_until": until, "p_limit": limit}).all()
    if rows:
        session.execute(NOTICED, {"p_lots": [row.id for row in rows], "p_now": now})
    return rows
