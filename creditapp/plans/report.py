"""What the plans have given, read from the database when /metrics is scraped (the ledger grants
allowances lazily, inside other writes, so counting them as they happen would need a hook in
every write; the lots already say it, in one query each)."""
from sqlalchemy import func, select

from ..ledger.statements import LEDGER
from ..ledger.tables import CreditLot
from ..ledger.transactions import atomic
from .tables import Subscription

LOTS = CreditLot.__table__
SUBSCRIPTIONS = Subscription.__table__


def figures() -> dict:
    """{"subscriptions": {(plan, status): n}, "granted", "rollover", "expired": {credit type: n}}."""
    with atomic(write=False) as session:
        subscriptions = {(plan, status): n for plan, status, n in session.execute(
            select(SUBSCRIPTIONS.c.plan, SUBSCRIPTIONS.c.status, func.count())
            .group_by(SUBSCRIPTIONS.c.plan, SUBSCRIPTIONS.c.status)).all()}
        granted = {(source, credit_type): n for source, credit_type, n in session.execute(
            select(LOTS.c.source, LOTS.c.credit_type, func.sum(LOTS.c.amount))
            .where(LOTS.c.source.in_(("plan", "rollover"))).group_by(LOTS.c.source, LOTS.c.credit_type)).all()}
        expired = dict(session.execute(
            select(LOTS.c.credit_type, -func.sum(LEDGER.c.amount))
            .join(LOTS, LOTS.c.id == LEDGER.c.lot_id)
            .where(LEDGER.c.kind == "expire", LOTS.c.source.in_(("plan", "rollover")))
            .group_by(LOTS.c.credit_type)).all())
    rollover = {t: int(n) for (s, t), n in granted.items() if s == "rollover"}
    # A period's lots lapse whole when it ends; what carried over is granted again as a rollover
    # lot in the same write, so what lapsed unspent is the rest.
    return {"subscriptions": subscriptions,
            "granted": {t: int(n) for (s, t), n in granted.items() if s == "plan"},
            "rollover": rollover,
            "expired": {t: int(n or 0) - rollover.get(t, 0) for t, n in expired.items()}}
