"""Recurring grants: credits that come back every period (a plan's allowance), granted by no
cron. Each period's credits are a lot expiring at the period's end, granted once per period (its
lot's reference names the grant, the credit type and the period's start, and a wallet's
references are unique) by the first write or read that needs them: every write to a wallet first
locks its row and refills what is due (`_enter`), and the PostgreSQL hold and balance read answer
`refill` when `wallets.refill_due_at` has passed.

Rollover: when a period ends, what is left of its plan lots (allowance, rollover, an upgrade's
difference), not held, carries into the next period as a `rollover` lot, up to the new period's
`rollover_max` in total; the rest lapses with its lot. What is left is the lots' `remaining -
held` plus what an expiry wrote off of them: both stop changing once a lot has expired, so a
refill that runs late computes what one at the boundary would have.

Lazy equals eager: a wallet nobody touched for several periods gets, for the period it is in now,
exactly what refills at the start of every period would have left it (the rollover of each
missed period follows from the one before: R' = min(rollover_max, allowance + R), which stops
changing after a few periods); the missed periods' own lots would all have lapsed, and are not
made.
"""
from datetime import datetime, timedelta

from sqlalchemy import func, insert, or_, select, update

from . import lots, periods
from .clock import utcnow
from .core import unknown
from .statements import LEDGER
from .tables import CreditRecurringGrant, Wallet
from .transactions import atomic, retry_conflicts
from .types import CreditType

GRANTS = CreditRecurringGrant.__table__
WALLETS = Wallet.__table__
LOTS = lots.LOTS
PLAN_SOURCES = ("plan", "rollover")
# How far the database's clock may run ahead of this host's when it says a refill is due. Beyond
# it, the due time is not the boundary the database saw: another write refilled meanwhile and set
# the next one (refilling as of that would grant a period early).
CLOCK_SKEW = timedelta(seconds=30)


def templates_exist(session) -> bool:
    return session.execute(select(GRANTS.c.id).where(GRANTS.c.wallet_id.is_(None)).limit(1)).first() is not None


def _covers(row, now: datetime) -> bool:
    return (row.starts_at is None or row.starts_at <= now) and (row.ends_at is None or row.ends_at > now)


def _own(row):
    """The plan lots of `row`'s periods: a free plan's go on from the default plan's (those count),
    a paid plan's are its own (another's lot that ends at the same moment is not)."""
    own = LOTS.c.reference.startswith(f"{row.reference}:", autoescape=True)
    return own if row.explicit else or_(own, LOTS.c.reference.startswith("plan:"))


def lot_reference(reference: str, credit_type: str, start: datetime, kind: str = "allowance") -> str:
    return f"{reference}:{credit_type}:{kind}:{start.isoformat()}"


class Recurring:
    def _enter(self, session, wallet_id: int, *, due: bool = False):
        """Lock the wallet's row (the first lock of every write to a wallet) and grant what its
        recurring grants have due. Returns the wallet's row. `due`: the database's clock says
        it is due (it may run ahead of this host's): refill as of its due time at the latest."""
        # NO KEY UPDATE: the rows that point at the wallet (a hold's, a ledger row's) take KEY SHARE
        # on it, which a plain FOR UPDATE would wait for while they wait for the account we lock next.
        wallet = session.execute(
            select(WALLETS).where(WALLETS.c.id == wallet_id).with_for_update(key_share=True)).one_or_none()
        if wallet is None:
            raise unknown(wallet_id)
        now = utcnow()
        if wallet.refill_due_at is not None and (
                wallet.refill_due_at <= now or (due and wallet.refill_due_at <= now + CLOCK_SKEW)):
            self._refill(session, wallet, max(now, wallet.refill_due_at))
        return wallet

    @retry_conflicts
    def refill(self, wallet_id: int, *, due: bool = False) -> None:
        """Grant what the wallet's recurring grants have due now (what a hold or a balance read
        does first when `refill_due_at` has passed); `flask plans refill` runs it for tidiness."""
        with atomic() as session:
            self._enter(session, wallet_id, due=due)

    def _refill(self, session, wallet, now: datetime) -> None:
        wallet_id = wallet.id
        own = session.execute(select(GRANTS).where(GRANTS.c.wallet_id == wallet_id).order_by(GRANTS.c.id)).all()
        if wallet.kind == "user" and not any(_covers(row, now) for row in own):
            self._adopt_templates(session, wallet, own, now)
            own = session.execute(select(GRANTS).where(GRANTS.c.wallet_id == wallet_id).order_by(GRANTS.c.id)).all()
        due = [row for row in own if _covers(row, now) and not row.explicit]
        for credit_type in CreditType:  # the accounts' lock order
            rows = [row for row in due if row.credit_type == credit_type.value]
            if not rows:
                continue
            self._lock_account(session, wallet_id, credit_type)
            for row in rows:
                anchor = row.anchor or row.starts_at
                start, end = periods.period_at(anchor, row.period, row.period_seconds, now)
                if row.period_start != start:
                    self._grant_period(session, wallet_id, row, start, end, now)
        session.execute(update(WALLETS).where(WALLETS.c.id == wallet_id).values(
            refill_due_at=self._next_due(session, wallet, now)))

    def _adopt_templates(self, session, wallet, own, now: datetime) -> None:
        """A user wallet with no grant of its own follows the templates (the default plan), from
        the end of its last own grant or, if it never had one, its creation."""
        ended = [row.ends_at for row in own if row.ends_at is not None and row.ends_at <= now]
        anchor = max(ended) if ended else wallet.created_at
        for template in session.execute(select(GRANTS).where(GRANTS.c.wallet_id.is_(None))).all():
            session.execute(insert(GRANTS).values(
                wallet_id=wallet.id, credit_type=template.credit_type, amount=template.amount,
                rollover_max=template.rollover_max, priority=template.priority, period=template.period,
                period_seconds=template.period_seconds, anchor=anchor, starts_at=anchor, ends_at=None,
                explicit=False, reference=template.reference, created_at=now,
            ))

    def _next_due(self, session, wallet, now: datetime) -> datetime | None:
        """When the wallet's grants next need a write: a period's end, a grant's end or start."""
        own = session.execute(select(GRANTS).where(GRANTS.c.wallet_id == wallet.id)).all()
        moments = []
        for row in own:
            if _covers(row, now):
                if row.ends_at is not None:
                    moments.append(row.ends_at)
                if not row.explicit and row.period_end is not None:
                    moments.append(row.period_end)
            elif row.starts_at is not None and row.starts_at > now:
                moments.append(row.starts_at)
        if wallet.kind == "user" and not any(_covers(row, now) for row in own) and templates_exist(session):
            moments.append(now)  # cannot happen after _refill adopted them; kept for a template added since
        return min(moments) if moments else None

    def _grant_period(self, session, wallet_id: int, row, start: datetime, end: datetime | None,
                      now: datetime) -> None:
        """Grant the period [start, end) of `row` (the caller holds the account's lock): its
        allowance and the rollover from the period before, each a lot ending with it."""
        credit_type = CreditType(row.credit_type)
        rollover = self._rollover(session, wallet_id, row, start)
        session.execute(update(GRANTS).where(GRANTS.c.id == row.id).values(period_start=start, period_end=end))
        if end is not None and end <= now:
            return  # a period already over (a late invoice): its lots would lapse at once
        self._expire_lots(session, wallet_id, credit_type, now)
        lot = {"priority": row.priority, "expires_at": end}
        if row.amount:
            self._grant(session, wallet_id, row.amount, credit_type, f"allowance {row.reference}",
                        lot_reference(row.reference, row.credit_type, start), {**lot, "source": "plan"})
        if rollover:
            self._grant(session, wallet_id, rollover, credit_type, f"rollover {row.reference}",
                        lot_reference(row.reference, row.credit_type, start, "rollover"), {**lot, "source": "rollover"})

    def _rollover(self, session, wallet_id: int, row, start: datetime) -> int:
        # A grant's first period carries nothing: a new subscription (a new anchor) starts afresh,
        # while a plan changed mid-period goes on from the period it changed in.
        if not row.rollover_max or row.period_start is None:
            return 0
        previous_end = session.execute(select(func.max(LOTS.c.expires_at)).where(
            LOTS.c.wallet_id == wallet_id, LOTS.c.credit_type == row.credit_type,
            LOTS.c.source.in_(PLAN_SOURCES), LOTS.c.expires_at <= start, _own(row))).scalar()
        if previous_end is None or (row.explicit and previous_end != start):
            return 0  # explicit (paid) periods not paid for granted nothing that could roll on
        written_off = (
            select(func.coalesce(-func.sum(LEDGER.c.amount), 0))
            .where(LEDGER.c.lot_id == LOTS.c.id, LEDGER.c.kind == "expire", LEDGER.c.amount < 0)
            .scalar_subquery()
        )
        left = session.execute(select(func.coalesce(func.sum(LOTS.c.remaining - LOTS.c.held + written_off), 0)).where(
            LOTS.c.wallet_id == wallet_id, LOTS.c.credit_type == row.credit_type,
            LOTS.c.source.in_(PLAN_SOURCES), LOTS.c.expires_at == previous_end, _own(row))).scalar()
        carried = min(row.rollover_max, left)
        anchor = row.anchor or row.starts_at
        missed = (periods.index_at(anchor, row.period, row.period_seconds, start)
                  - periods.index_at(anchor, row.period, row.period_seconds, previous_end))
        for _ in range(max(0, missed)):
            following = min(row.rollover_max, row.amount + carried)
            if following == carried:
                break
            carried = following
        return carried

    # --- what the plans package sets up ---------------------------------------------------

    @retry_conflicts
    def set_recurring(self, wallet_id: int | None, reference: str, terms: dict[str, tuple[int, int]], *,
                      period: str, period_seconds: int | None = None, priority: int = 10,
                      anchor: datetime | None = None, starts_at: datetime | None = None,
                      explicit: bool = False) -> None:
        """From `starts_at` (now by default) on, the wallet's grants are `terms` ({credit type:
        (amount, rollover_max)}) every period from `anchor`; what it had before ends then. With no
        wallet, the templates every user wallet without grants of its own follows are replaced.
        A period that started before `starts_at` is not granted again under the new terms."""
        with atomic() as session:
            self._set_recurring(session, wallet_id, reference, terms, period=period, period_seconds=period_seconds,
                                priority=priority, anchor=anchor, starts_at=starts_at, explicit=explicit)

    def _set_recurring(self, session, wallet_id: int | None, reference: str, terms: dict[str, tuple[int, int]], *,
                       period: str, period_seconds: int | None = None, priority: int = 10,
                       anchor: datetime | None = None, starts_at: datetime | None = None,
                       explicit: bool = False) -> None:
        periods.check(period, period_seconds)
        now = utcnow()
        starts_at = starts_at or now
        if wallet_id is not None:
            self._enter(session, wallet_id)
        ending = GRANTS.c.wallet_id.is_(None) if wallet_id is None else GRANTS.c.wallet_id == wallet_id
        paid_period = None
        if explicit and wallet_id is not None:
            # A paid plan's period is the provider's (its invoice's), not our arithmetic: the new
            # terms go on in the period the old ones were granted, begun here or not (a first
            # invoice from a clock ahead of ours is granted a little early).
            paid_period = session.execute(select(GRANTS.c.period_start, GRANTS.c.period_end).where(
                ending, GRANTS.c.reference == reference, GRANTS.c.explicit.is_(True),
                GRANTS.c.period_end > starts_at).order_by(GRANTS.c.period_start).limit(1)).first()
        if wallet_id is None:
            session.execute(GRANTS.delete().where(ending))
            self._retire_copies(session, now)
        else:
            session.execute(update(GRANTS).where(
                ending, or_(GRANTS.c.ends_at.is_(None), GRANTS.c.ends_at > starts_at)).values(ends_at=starts_at))
        granted = tuple(paid_period) if paid_period is not None else (None, None)
        if wallet_id is not None and paid_period is None:
            current = periods.period_at(anchor or starts_at, period, period_seconds, starts_at)
            if current[0] < starts_at or (anchor is not None and not explicit
                                          and self._granted_until(session, wallet_id, current[1])):
                # Starting mid-period: the period under way keeps the lots it has (an upgrade
                # adds its difference with top_up_period); the new terms grant from the next one.
                granted = current
        for credit_type, (amount, rollover_max) in terms.items():
            session.execute(insert(GRANTS).values(
                wallet_id=wallet_id, credit_type=CreditType(credit_type).value, amount=amount,
                rollover_max=rollover_max, priority=priority, period=period, period_seconds=period_seconds,
                anchor=anchor, starts_at=None if wallet_id is None else starts_at, ends_at=None,
                explicit=explicit, reference=reference, created_at=now,
                period_start=granted[0], period_end=granted[1],
            ))
        if wallet_id is None:
            # Every user wallet without grants of its own adopts the new templates at its next write.
            session.execute(update(WALLETS).where(WALLETS.c.kind == "user", ~select(GRANTS.c.id).where(
                GRANTS.c.wallet_id == WALLETS.c.id, or_(GRANTS.c.ends_at.is_(None), GRANTS.c.ends_at > now),
                or_(GRANTS.c.starts_at.is_(None), GRANTS.c.starts_at <= now)).exists()).values(refill_due_at=now))
        else:
            wallet = session.execute(select(WALLETS).where(WALLETS.c.id == wallet_id)).one()
            session.execute(update(WALLETS).where(WALLETS.c.id == wallet_id).values(
                refill_due_at=self._due_after_change(session, wallet, now)))

    def clear_templates(self, session) -> None:
        """No default plan any more: the wallets that followed it stop at their period's end."""
        session.execute(GRANTS.delete().where(GRANTS.c.wallet_id.is_(None)))
        self._retire_copies(session, utcnow())

    @staticmethod
    def _retire_copies(session, now: datetime) -> None:
        """The wallets following the templates keep the period under way and adopt the new ones
        from its end, on the same grid: no period is granted twice, none is cut short."""
        copies = (GRANTS.c.wallet_id.is_not(None), GRANTS.c.reference.startswith("plan:"),
                  GRANTS.c.explicit.is_(False), GRANTS.c.ends_at.is_(None))
        wallets = select(GRANTS.c.wallet_id).where(*copies).scalar_subquery()
        session.execute(update(WALLETS).where(WALLETS.c.id.in_(wallets)).values(refill_due_at=now))
        session.execute(update(GRANTS).where(*copies).values(
            ends_at=func.coalesce(GRANTS.c.period_end, now)))

    @staticmethod
    def _granted_until(session, wallet_id: int, end: datetime) -> bool:
        """A plan lot ends at `end`: terms changed at the very start of a period the old terms
        granted already (on a clock that has not moved) keep it, as any change mid-period."""
        return session.execute(select(LOTS.c.id).where(
            LOTS.c.wallet_id == wallet_id, LOTS.c.source == "plan", LOTS.c.expires_at == end).limit(1)).first() is not None

    def _due_after_change(self, session, wallet, now: datetime) -> datetime | None:
        due = self._next_due(session, wallet, now)
        own = session.execute(select(GRANTS).where(GRANTS.c.wallet_id == wallet.id)).all()
        if any(_covers(row, now) and not row.explicit and row.period_start is None for row in own):
            return now  # a new grant starting now: its first period is due at once
        return due

    @retry_conflicts
    def end_recurring(self, wallet_id: int, reference: str, at: datetime) -> None:
        """The wallet's grants named `reference` end at `at` (a plan canceled at its period's
        end); from then on a user wallet follows the templates, anchored there."""
        with atomic() as session:
            self._end_recurring(session, wallet_id, reference, at)

    def _end_recurring(self, session, wallet_id: int, reference: str, at: datetime,
                       extend_from: datetime | None = None) -> None:
        self._enter(session, wallet_id)
        if extend_from is not None and extend_from < at:
            # A paid plan ended at a period's end its provider has since moved: end at the new one.
            # Explicit grants only (they grant nothing without an invoice), and only those ended then.
            session.execute(update(GRANTS).where(
                GRANTS.c.wallet_id == wallet_id, GRANTS.c.reference == reference, GRANTS.c.explicit.is_(True),
                GRANTS.c.ends_at == extend_from).values(ends_at=at))
        # Only the plan's own: the default plan's, adopted once the plan ended, are not ended again
        # (a later end would re-anchor them and grant their period twice).
        session.execute(update(GRANTS).where(
            GRANTS.c.wallet_id == wallet_id, GRANTS.c.reference == reference,
            or_(GRANTS.c.ends_at.is_(None), GRANTS.c.ends_at > at)).values(ends_at=at))
        wallet = session.execute(select(WALLETS).where(WALLETS.c.id == wallet_id)).one()
        session.execute(update(WALLETS).where(WALLETS.c.id == wallet_id).values(
            refill_due_at=self._next_due(session, wallet, utcnow())))

    @retry_conflicts
    def grant_period(self, wallet_id: int, reference: str, start: datetime, end: datetime) -> bool:
        """Grant the period [start, end) of the wallet's explicit grants named `reference` (a paid
        plan's invoice, paid): once, whatever repeats. False when it was granted already."""
        with atomic() as session:
            return self._grant_explicit(session, wallet_id, reference, start, end)

    def _grant_explicit(self, session, wallet_id: int, reference: str, start: datetime, end: datetime) -> bool:
        self._enter(session, wallet_id)
        now = utcnow()
        rows = session.execute(select(GRANTS).where(
            GRANTS.c.wallet_id == wallet_id, GRANTS.c.reference == reference, GRANTS.c.explicit.is_(True),
            or_(GRANTS.c.ends_at.is_(None), GRANTS.c.ends_at > start)).order_by(GRANTS.c.credit_type)).all()
        granted = False
        for credit_type in CreditType:
            for row in rows:
                if row.credit_type != credit_type.value or (row.period_start is not None and row.period_start >= start):
                    continue
                self._lock_account(session, wallet_id, credit_type)
                self._grant_period(session, wallet_id, row, start, end, now)
                granted = True
        return granted

    @retry_conflicts
    def top_up_period(self, wallet_id: int, reference: str, allowance: dict[str, int], key: str) -> dict[str, int]:
        """An upgrade mid-period: bring what this period's plan lots were granted up to
        `allowance` ({credit type: n}), in a lot per credit type ending with the period. Counted
        from what was granted, not what is left, so going down and up again gives nothing twice;
        `key` (an invoice, a plan) names it, so a repeat grants nothing. What it granted."""
        with atomic() as session:
            return self._top_up(session, wallet_id, reference, allowance, key)

    def _top_up(self, session, wallet_id: int, reference: str, allowance: dict[str, int], key: str) -> dict[str, int]:
        self._enter(session, wallet_id)
        now = utcnow()
        # The period under way, or one not begun here yet: a provider's (or the database's) clock
        # ahead of ours had it granted a little early.
        rows = session.execute(select(GRANTS).where(
            GRANTS.c.wallet_id == wallet_id, GRANTS.c.reference == reference, GRANTS.c.period_end > now,
            or_(GRANTS.c.ends_at.is_(None), GRANTS.c.ends_at > now)).order_by(GRANTS.c.period_start)).all()
        granted: dict[str, int] = {}
        for credit_type in CreditType:
            row = next((row for row in rows if row.credit_type == credit_type.value), None)
            wanted = allowance.get(credit_type.value, 0)
            if row is None or wanted <= 0:
                continue
            self._lock_account(session, wallet_id, credit_type)
            so_far = session.execute(select(func.coalesce(func.sum(LOTS.c.amount), 0)).where(
                LOTS.c.wallet_id == wallet_id, LOTS.c.credit_type == credit_type.value, LOTS.c.source == "plan",
                LOTS.c.expires_at == row.period_end, _own(row))).scalar()
            more = wanted - so_far
            if more <= 0:
                continue
            self._grant(session, wallet_id, more, credit_type, f"upgrade {reference}",
                        lot_reference(reference, credit_type.value, row.period_start, f"upgrade-{key}"),
                        {"priority": row.priority, "expires_at": row.period_end, "source": "plan"})
            granted[credit_type.value] = more
        return granted

    def current_period(self, session, wallet_id: int) -> tuple[datetime, datetime, datetime] | None:
        """(anchor, start, end) of the period the wallet's grants are in now, if any."""
        now = utcnow()
        for row in session.execute(select(GRANTS).where(GRANTS.c.wallet_id == wallet_id)
                                   .order_by(GRANTS.c.id.desc())).all():
            if _covers(row, now) and row.period is not None:
                anchor = row.anchor or row.starts_at
                start, end = periods.period_at(anchor, row.period, row.period_seconds, now)
                return anchor, start, end
        return None

    def recurring_of(self, wallet_id: int) -> list[dict]:
        """The wallet's grants in force now, each with its period and what is left of its lots."""
        with atomic(write=False) as session:
            now = utcnow()
            rows = session.execute(select(GRANTS).where(GRANTS.c.wallet_id == wallet_id)).all()
            result = []
            for row in rows:
                if not _covers(row, now):
                    continue
                left = session.execute(select(func.coalesce(func.sum(LOTS.c.remaining - LOTS.c.held), 0)).where(
                    LOTS.c.wallet_id == wallet_id, LOTS.c.credit_type == row.credit_type,
                    LOTS.c.source.in_(PLAN_SOURCES), LOTS.c.expires_at == row.period_end,
                    LOTS.c.expires_at > now, _own(row))).scalar() if row.period_end else 0
                result.append({"credit_type": row.credit_type, "amount": row.amount, "rollover_max": row.rollover_max,
                               "reference": row.reference, "period_start": row.period_start,
                               "period_end": row.period_end, "explicit": row.explicit, "remaining": left})
            return result
