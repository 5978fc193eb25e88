"""The audit: `verify` proves the wallets, their lots, holds, caps and the ledger agree."""
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, case, func, or_, select

from . import caps, lots
from .statements import ACCOUNTS, HOLDS, LEDGER
from .tables import TEAM_WALLETS
from .transactions import atomic


@dataclass(frozen=True)
class Discrepancy:
    wallet_id: int
    credit_type: str
    field: str
    recorded: int
    expected: int

    def __str__(self) -> str:
        owner = (f"user {self.wallet_id}" if self.wallet_id < TEAM_WALLETS
                 else f"team {self.wallet_id - TEAM_WALLETS}")
        return f"{owner} {self.credit_type}: {self.field} is {self.recorded}, ledger says {self.expected}"


class Audit:

    def verify(self) -> list[Discrepancy]:
        """Every balance against its ledger and its open holds; an empty list means all agree."""
        ledger = (
            select(
                LEDGER.c.wallet_id, LEDGER.c.credit_type,
                func.sum(LEDGER.c.amount).label("available"),
                func.sum(LEDGER.c.held_change).label("held"),
                func.sum(LEDGER.c.debt_change).label("debt"),
                func.max(LEDGER.c.id).label("last_id"),
            )
            .group_by(LEDGER.c.wallet_id, LEDGER.c.credit_type)
            .subquery()
        )
        holds = (
            select(HOLDS.c.wallet_id, HOLDS.c.credit_type, func.sum(HOLDS.c.amount).label("held"))
            .where(HOLDS.c.status == "open")
            .group_by(HOLDS.c.wallet_id, HOLDS.c.credit_type)
            .subquery()
        )
        latest = LEDGER.alias("latest")
        query = (
            select(
                ACCOUNTS.c.wallet_id, ACCOUNTS.c.credit_type, ACCOUNTS.c.available, ACCOUNTS.c.held,
                ACCOUNTS.c.debt, func.coalesce(ledger.c.debt, 0).label("ledger_debt"),
                func.coalesce(ledger.c.available, 0).label("ledger_available"),
                func.coalesce(ledger.c.held, 0).label("ledger_held"),
                func.coalesce(holds.c.held, 0).label("open_holds"),
                func.coalesce(latest.c.balance_after, 0).label("last_balance_after"),
                func.coalesce(latest.c.held_after, 0).label("last_held_after"),
            )
            .outerjoin(ledger, and_(
                ledger.c.wallet_id == ACCOUNTS.c.wallet_id, ledger.c.credit_type == ACCOUNTS.c.credit_type
            ))
            .outerjoin(latest, latest.c.id == ledger.c.last_id)
            .outerjoin(holds, and_(
                holds.c.wallet_id == ACCOUNTS.c.wallet_id, holds.c.credit_type == ACCOUNTS.c.credit_type
            ))
            .order_by(ACCOUNTS.c.wallet_id, ACCOUNTS.c.credit_type)
        )
        orphans = select(ledger.c.wallet_id, ledger.c.credit_type, ledger.c.available).where(
            ~select(ACCOUNTS.c.wallet_id).where(
                ACCOUNTS.c.wallet_id == ledger.c.wallet_id, ACCOUNTS.c.credit_type == ledger.c.credit_type
            ).exists()
        )
        problems: list[Discrepancy] = []
        with atomic(write=False) as session:
            for r in session.execute(query):
                checks = (
                    ("available", r.available, r.ledger_available),
                    ("held", r.held, r.ledger_held),
                    ("debt", r.debt, r.ledger_debt),
                    ("held (open holds)", r.held, r.open_holds),
                    ("available (last ledger row)", r.available, r.last_balance_after),
                    ("held (last ledger row)", r.held, r.last_held_after),
                    ("available (must not be negative)", r.available, max(r.available, 0)),
                )
                problems += [
                    Discrepancy(r.wallet_id, r.credit_type, field, recorded, expected)
                    for field, recorded, expected in checks if recorded != expected
                ]
            for r in session.execute(orphans):
                problems.append(Discrepancy(r.wallet_id, r.credit_type, "account (missing)", 0, r.available))
            problems += self._double_charges(session)
            problems += self._lot_problems(session)
            problems += self._cap_problems(session)
            problems += self._duplicate_lots(session)
            problems += self._allowance_lots(session)
        return problems

    def _lot_problems(self, session) -> list[Discrepancy]:
        """Lots against their accounts, their ledger rows and the receipts of open holds."""
        L, R = lots.LOTS, lots.RECEIPTS
        per_account = (
            select(L.c.wallet_id, L.c.credit_type,
                   func.sum(case((L.c.frozen_at.is_(None), L.c.remaining - L.c.held), else_=0)).label("free"),
                   func.sum(L.c.held).label("held"))
            .group_by(L.c.wallet_id, L.c.credit_type).subquery()
        )
        accounts = session.execute(
            select(ACCOUNTS.c.wallet_id, ACCOUNTS.c.credit_type, ACCOUNTS.c.available, ACCOUNTS.c.held,
                   func.coalesce(per_account.c.free, 0).label("free"),
                   func.coalesce(per_account.c.held, 0).label("lots_held"))
            .outerjoin(per_account, and_(per_account.c.wallet_id == ACCOUNTS.c.wallet_id,
                                         per_account.c.credit_type == ACCOUNTS.c.credit_type))
            .order_by(ACCOUNTS.c.wallet_id, ACCOUNTS.c.credit_type)
        ).all()
        problems = []
        for r in accounts:
            if r.available != r.free:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, "available (sum of lots)", r.available, r.free))
            if r.held != r.lots_held:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, "held (sum of lots)", r.held, r.lots_held))
        moved = (
            select(LEDGER.c.lot_id, func.sum(LEDGER.c.amount + LEDGER.c.held_change).label("change"))
            # Freezing moves credits out of the balance, not out of the lot.
            .where(LEDGER.c.lot_id.is_not(None), LEDGER.c.kind.not_in(("grant", "freeze", "unfreeze")))
            .group_by(LEDGER.c.lot_id).subquery()
        )
        open_receipts = (
            select(R.c.lot_id, func.sum(R.c.amount).label("held"))
            .join(HOLDS, HOLDS.c.id == R.c.hold_id).where(HOLDS.c.status == "open")
            .group_by(R.c.lot_id).subquery()
        )
        for r in session.execute(
            select(L.c.id, L.c.wallet_id, L.c.credit_type, L.c.amount, L.c.remaining, L.c.held,
                   func.coalesce(moved.c.change, 0).label("change"),
                   func.coalesce(open_receipts.c.held, 0).label("receipts"))
            .outerjoin(moved, moved.c.lot_id == L.c.id)
            .outerjoin(open_receipts, open_receipts.c.lot_id == L.c.id)
            .order_by(L.c.id)
        ):
            if r.remaining != r.amount + r.change:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, f"lot {r.id} remaining", r.remaining,
                                            r.amount + r.change))
            if r.held != r.receipts:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, f"lot {r.id} held (open holds' receipts)",
                                            r.held, r.receipts))
        receipts = select(R.c.hold_id, func.sum(R.c.amount).label("amount"), func.sum(R.c.settled).label("settled"),
                          func.sum(R.c.refunded).label("refunded")).group_by(R.c.hold_id).subquery()
        for r in session.execute(
            select(HOLDS.c.id, HOLDS.c.wallet_id, HOLDS.c.credit_type, HOLDS.c.status, HOLDS.c.amount,
                   HOLDS.c.settled_amount, HOLDS.c.refunded_amount,
                   func.coalesce(receipts.c.amount, 0).label("drawn"),
                   func.coalesce(receipts.c.settled, 0).label("settled"),
                   func.coalesce(receipts.c.refunded, 0).label("refunded"))
            .outerjoin(receipts, receipts.c.hold_id == HOLDS.c.id)
            .where(or_(HOLDS.c.status == "open", receipts.c.hold_id.is_not(None)))
            .order_by(HOLDS.c.id)
        ):
            if r.amount != r.drawn:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, f"hold {r.id} receipt", r.drawn, r.amount))
            if r.settled != r.settled_amount:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, f"hold {r.id} settled from lots", r.settled,
                                            r.settled_amount))
            if r.refunded != r.refunded_amount:
                problems.append(Discrepancy(r.wallet_id, r.credit_type, f"hold {r.id} refunded to lots", r.refunded,
                                            r.refunded_amount))
        return problems

    def _double_charges(self, session) -> list[Discrepancy]:
        """Two settled holds for one user and Idempotency-Key, the second taken while the first's
        answer was still kept: one request charged twice."""
        first, second = HOLDS.alias("first"), HOLDS.alias("second")
        pairs = session.execute(
            select(first.c.wallet_id, first.c.credit_type, first.c.idempotency_key, first.c.id,
                   first.c.closed_at, second.c.id.label("second_id"), second.c.created_at)
            .join(second, and_(second.c.wallet_id == first.c.wallet_id,
                               second.c.user_id.is_not_distinct_from(first.c.user_id),
                               second.c.idempotency_key == first.c.idempotency_key,
                               second.c.id > first.c.id))
            .where(first.c.idempotency_key.is_not(None), first.c.status == "settled",
                   second.c.status == "settled")
            .order_by(first.c.id, second.c.id)
        ).all()
        kept = timedelta(seconds=self.idempotency_ttl_seconds)
        return [
            Discrepancy(p.wallet_id, p.credit_type,
                        f"charges for Idempotency-Key {p.idempotency_key!r} (holds {p.id} and {p.second_id})",
                        2, 1)
            for p in pairs if p.closed_at is None or p.created_at < p.closed_at + kept
        ]

    def _cap_problems(self, session) -> list[Discrepancy]:
        """Each cap's spend in a period against the holds counted in it: what open holds hold,
        plus what settled ones charged and did not refund."""
        H, HC, S, C = HOLDS, caps.HOLD_CAPS, caps.SPEND, caps.CAPS
        counted = case(
            (H.c.status == "open", H.c.amount),
            (H.c.status == "settled", H.c.settled_amount - H.c.refunded_amount),
            else_=0,
        )
        expected = (
            select(HC.c.cap_id, H.c.credit_type, HC.c.period_start, func.sum(counted).label("spent"))
            .join(H, H.c.id == HC.c.hold_id)
            .group_by(HC.c.cap_id, H.c.credit_type, HC.c.period_start).subquery()
        )
        problems = []
        for r in session.execute(
            select(S.c.cap_id, S.c.credit_type, S.c.period_start, S.c.spent, C.c.wallet_id,
                   func.coalesce(expected.c.spent, 0).label("expected"))
            .join(C, C.c.id == S.c.cap_id)
            .outerjoin(expected, and_(expected.c.cap_id == S.c.cap_id, expected.c.credit_type == S.c.credit_type,
                                      expected.c.period_start == S.c.period_start))
            .order_by(S.c.cap_id, S.c.credit_type, S.c.period_start)
        ):
            if r.spent != r.expected:
                problems.append(Discrepancy(r.wallet_id, r.credit_type,
                                            f"cap {r.cap_id} spent from {r.period_start.isoformat()}",
                                            r.spent, r.expected))
        return problems

    def _duplicate_lots(self, session) -> list[Discrepancy]:
        """Two lots of one wallet with one reference: a purchase or a period granted twice."""
        L = lots.LOTS
        return [
            Discrepancy(r.wallet_id, r.credit_type, f"lots with reference {r.reference!r}", r.n, 1)
            for r in session.execute(
                select(L.c.wallet_id, L.c.credit_type, L.c.reference, func.count().label("n"))
                .where(L.c.reference.is_not(None))
                .group_by(L.c.wallet_id, L.c.credit_type, L.c.reference).having(func.count() > 1)
            )
        ]

    def _allowance_lots(self, session) -> list[Discrepancy]:
        """Two allowance lots of one plan (subscription or default plan), credit type and period:
        a period granted twice under two names (a period re-anchored, say)."""
        L = lots.LOTS
        seen: dict[tuple, int] = {}
        for r in session.execute(select(L.c.wallet_id, L.c.credit_type, L.c.reference, L.c.expires_at).where(
                L.c.source == "plan", L.c.reference.contains(":allowance:"))):
            plan = r.reference.split(f":{r.credit_type}:allowance:")[0]
            key = (r.wallet_id, r.credit_type, plan, r.expires_at)
            seen[key] = seen.get(key, 0) + 1
        return [Discrepancy(wallet_id, credit_type, f"allowance lots of {plan} ending {end.isoformat()}", n, 1)
                for (wallet_id, credit_type, plan, end), n in seen.items() if n > 1]
