"""Caps: limits on what one spender (an API key, a team member) takes from a wallet per period.

A hold counts its amount against every cap that applies, in its own transaction and under its
account's lock (as every writer of a cap's spend does), or is refused with nothing written; its
end gives back what it did not charge and a refund gives back what it returns, in the period the
hold was taken in. So no interleaving of requests can take a cap past its limit: the spend is
held + charged − refunded, exactly, at every commit. `creditapp_hold` does the same on
PostgreSQL.
"""
import json
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, select, update

from . import periods
from .clock import utcnow
from .errors import CapClosed, CapExceeded, CapExpired, FeatureNotAllowed
from .tables import CreditCap, CreditCapLimit, CreditCapSpend, CreditHoldCap
from .transactions import atomic
from .upsert import add_to

CAPS = CreditCap.__table__
LIMITS = CreditCapLimit.__table__
SPEND = CreditCapSpend.__table__
HOLD_CAPS = CreditHoldCap.__table__
# A key's last use is written at most this often, not on every request.
_MINUTE = timedelta(minutes=1)


def period_start(cap, now: datetime) -> datetime:
    return periods.period_at(cap.anchor, cap.period, cap.period_seconds, now)[0]


def check(session, cap_ids, wallet_id: int, credit_type: str, amount: int, feature: str | None,
          now: datetime) -> list[datetime]:
    """The period each cap counts this hold in; raises the refusal of the first cap that refuses."""
    starts = []
    for cap_id in cap_ids:
        cap = session.execute(select(CAPS).where(CAPS.c.id == cap_id)).one_or_none()
        if cap is None or cap.wallet_id != wallet_id or cap.closed_at is not None:
            raise CapClosed(cap_id, f"cap {cap_id} is closed")
        if cap.expires_at is not None and cap.expires_at <= now:
            raise CapExpired(cap_id, f"cap {cap_id} expired at {cap.expires_at.isoformat()}")
        if cap.features is not None and (feature or "") not in json.loads(cap.features):
            raise FeatureNotAllowed(cap_id, f"cap {cap_id} does not allow {feature!r}")
        start = period_start(cap, now)
        _within(session, cap_id, credit_type, start, amount)
        starts.append(start)
    return starts


def _within(session, cap_id: int, credit_type: str, start: datetime, amount: int) -> None:
    limit = session.execute(select(LIMITS.c.amount).where(
        LIMITS.c.cap_id == cap_id, LIMITS.c.credit_type == credit_type)).scalar()
    if limit is None:
        return
    spent = session.execute(select(SPEND.c.spent).where(
        SPEND.c.cap_id == cap_id, SPEND.c.credit_type == credit_type, SPEND.c.period_start == start)).scalar() or 0
    if spent + amount > limit:
        raise CapExceeded(cap_id, limit, spent, amount, credit_type)


def count(session, hold_id: int, cap_ids, starts, credit_type: str, amount: int, now: datetime) -> None:
    """Count a new hold against its caps (checked first with `check`)."""
    for cap_id, start in zip(cap_ids, starts):
        session.execute(insert(HOLD_CAPS).values(hold_id=hold_id, cap_id=cap_id, period_start=start))
        add_to(session, SPEND, {"cap_id": cap_id, "credit_type": credit_type, "period_start": start},
               {"spent": amount})
        session.execute(update(CAPS).where(
            CAPS.c.id == cap_id,
            (CAPS.c.last_used_at.is_(None)) | (CAPS.c.last_used_at <= now - _MINUTE)).values(last_used_at=now))


def grow(session, hold_id: int, credit_type: str, extra: int) -> None:
    """Count `extra` more of an open hold against its caps, in the periods it counts in, or raise
    CapExceeded with nothing written."""
    counted = session.execute(select(HOLD_CAPS).where(HOLD_CAPS.c.hold_id == hold_id)).all()
    for row in counted:
        if session.execute(select(CAPS.c.closed_at).where(CAPS.c.id == row.cap_id)).scalar() is not None:
            # Revoked (or removed) since the hold was taken: what it holds it keeps, nothing more.
            raise CapExceeded(row.cap_id, 0, 0, extra, credit_type)
        _within(session, row.cap_id, credit_type, row.period_start, extra)
    for row in counted:
        add_to(session, SPEND, {"cap_id": row.cap_id, "credit_type": credit_type, "period_start": row.period_start},
               {"spent": extra})


def give_back(session, hold_id: int, credit_type: str, amount: int) -> None:
    """What a hold did not charge, or a refund returned, no longer counts against its caps."""
    counted = select(HOLD_CAPS.c.cap_id, HOLD_CAPS.c.period_start).where(HOLD_CAPS.c.hold_id == hold_id)
    for row in session.execute(counted).all():
        session.execute(update(SPEND).where(
            SPEND.c.cap_id == row.cap_id, SPEND.c.credit_type == credit_type,
            SPEND.c.period_start == row.period_start).values(spent=SPEND.c.spent - amount))


# --- managing caps (the access package's keys and members) -------------------------------

def create(session, *, wallet_id: int, limits: dict[str, int], period: str | None, period_seconds: int | None,
           anchor: datetime, expires_at: datetime | None, features: list[str] | None, now: datetime) -> int:
    if period is None and period_seconds is not None:
        period = "seconds"
    periods.check(period, period_seconds)
    cap_id = session.execute(insert(CAPS).values(
        wallet_id=wallet_id, period=period, period_seconds=period_seconds, anchor=anchor, expires_at=expires_at,
        features=None if features is None else json.dumps(sorted(set(features))), created_at=now,
    ).returning(CAPS.c.id)).scalar_one()
    set_limits(session, cap_id, limits)
    return cap_id


def set_limits(session, cap_id: int, limits: dict[str, int]) -> None:
    """Replace the cap's limits: a type left out has no limit. A lower limit applies at once: a
    spend already past it refuses every further hold of the period. Under the cap's row lock:
    two changes at once apply one after the other, never merged (nor colliding)."""
    session.execute(select(CAPS.c.id).where(CAPS.c.id == cap_id).with_for_update())
    session.execute(delete(LIMITS).where(LIMITS.c.cap_id == cap_id))
    for credit_type, amount in limits.items():
        session.execute(insert(LIMITS).values(cap_id=cap_id, credit_type=credit_type, amount=amount))


def set_features(session, cap_id: int, features: list[str] | None) -> None:
    session.execute(update(CAPS).where(CAPS.c.id == cap_id).values(
        features=None if features is None else json.dumps(sorted(set(features)))))


def close(session, cap_id: int, now: datetime) -> None:
    """Refuse every hold from now on (a revoked key, a removed member); open holds run out."""
    session.execute(update(CAPS).where(CAPS.c.id == cap_id, CAPS.c.closed_at.is_(None)).values(closed_at=now))


def reopen(session, cap_id: int) -> None:
    session.execute(update(CAPS).where(CAPS.c.id == cap_id).values(closed_at=None))


def closed_cap_spent_by(session, wallet_id: int, user_id: int) -> int | None:
    """The latest closed cap on `wallet_id` that `user_id`'s own holds (not a key's) counted in:
    a member's cap from before they were removed."""
    from .tables import CreditHold

    holds = CreditHold.__table__
    return session.execute(
        select(CAPS.c.id).join(HOLD_CAPS, HOLD_CAPS.c.cap_id == CAPS.c.id).join(holds, holds.c.id == HOLD_CAPS.c.hold_id)
        .where(holds.c.wallet_id == wallet_id, holds.c.user_id == user_id, holds.c.key_id.is_(None),
               CAPS.c.closed_at.is_not(None))
        .order_by(CAPS.c.id.desc()).limit(1)).scalar()


def describe(session, cap_id: int, now: datetime) -> dict:
    """The cap now: its limits, its spend this period per credit type and when the period ends."""
    cap = session.execute(select(CAPS).where(CAPS.c.id == cap_id)).one()
    start, end = periods.period_at(cap.anchor, cap.period, cap.period_seconds, now)
    limits = dict(session.execute(select(LIMITS.c.credit_type, LIMITS.c.amount).where(LIMITS.c.cap_id == cap_id)).all())
    spent = dict(session.execute(select(SPEND.c.credit_type, SPEND.c.spent).where(
        and_(SPEND.c.cap_id == cap_id, SPEND.c.period_start == start))).all())
    return {"limits": limits, "spent": spent, "period_start": start, "period_end": end,
            "last_used_at": cap.last_used_at, "closed_at": cap.closed_at}


def prune_spend(session, before: datetime) -> int:
    """Spend rows of periods that ended before `before` and that no open hold counts in (tidying)."""
    return session.execute(delete(SPEND).where(SPEND.c.period_start < before, SPEND.c.spent == 0)).rowcount


class Caps:
    """The service's calls for caps, each one transaction (the access package's keys and members)."""

    def create_cap(self, wallet_id: int, limits: dict[str, int], *, period: str | None = None,
                   period_seconds: int | None = None, expires_at: datetime | None = None,
                   features: list[str] | None = None, session=None) -> int:
        """A new cap on `wallet_id`, its periods from now; in `session` when given (the caller's
        transaction: a key and its cap are made together)."""
        def make(session) -> int:
            now = utcnow()
            return create(session, wallet_id=wallet_id, limits=limits, period=period, period_seconds=period_seconds,
                          anchor=now, expires_at=expires_at, features=features, now=now)

        if session is not None:
            return make(session)
        with atomic() as session:
            return make(session)

    def change_cap(self, cap_id: int, *, limits: dict[str, int] | None = None,
                   features: list[str] | None = ..., session=None) -> None:
        def change(session) -> None:
            if limits is not None:
                set_limits(session, cap_id, limits)
            if features is not ...:
                set_features(session, cap_id, features)

        if session is not None:
            return change(session)
        with atomic() as session:
            change(session)

    def close_cap(self, cap_id: int, session=None) -> None:
        if session is not None:
            return close(session, cap_id, utcnow())
        with atomic() as session:
            close(session, cap_id, utcnow())

    def reopen_spent_cap(self, session, wallet_id: int, user_id: int) -> int | None:
        """Reopen the cap `user_id` last spent from `wallet_id` under (a member removed and added
        again keeps their period's spend: a remove and re-add resets nothing); None if none."""
        cap_id = closed_cap_spent_by(session, wallet_id, user_id)
        if cap_id is not None:
            session.execute(select(CAPS.c.id).where(CAPS.c.id == cap_id).with_for_update())
            reopen(session, cap_id)
        return cap_id

    def describe_cap(self, cap_id: int, session=None) -> dict:
        if session is not None:
            return describe(session, cap_id, utcnow())
        with atomic(write=False) as session:
            return describe(session, cap_id, utcnow())
