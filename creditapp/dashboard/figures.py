"""What the dashboard shows, as plain reads (no Flask): each function is a handful of aggregate
queries whose cost grows with the number of hours, features, users or lots it sums, never with
the length of the ledger.

Charges, refunds and requests come from the hourly rollup `credit_usage` (kept in the transaction
that closes a hold or refunds a charge, so it agrees with the ledger); grants from the lots they
made; money from `purchases`. Windows are whole UTC days ending today: "7 days" is today and the
six days before, so a tile and the chart's day buckets add up to the same numbers.
"""
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, column, func, literal, select, table

from ..admin_actions import recent as recent_admin_actions
from ..jobs.tables import JOBS
from ..ledger import UnknownUser, credit_service
from ..ledger.clock import utcnow
from ..ledger.lots import LOTS
from ..ledger.statements import ACCOUNTS, HOLDS
from ..ledger.tables import CREDIT_TYPES, TEAM_WALLETS
from ..ledger.transactions import atomic
from ..ledger.usage import USAGE
from ..payments.tables import Purchase
from . import verify_runs

PURCHASES = Purchase.__table__
# users.py's table comes with Flask-SQLAlchemy's model; the two columns read here, as a table
# clause, keep this module free of Flask.
USERS = table("users", column("id"), column("username"))
WINDOWS = (("today", 1), ("7 days", 7), ("30 days", 30))
CHART_DAYS = 30
EXPIRING_DAYS = 7


def midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def window_start(now: datetime, days: int) -> datetime:
    """The first instant of a window of `days` whole UTC days that ends with today."""
    return midnight(now) - timedelta(days=days - 1)


@dataclass(frozen=True)
class Tile:
    """One window's figures; per-credit-type dicts list every credit type (zeros included)."""

    label: str
    start: datetime
    granted: dict[str, int]
    charged: dict[str, int]
    refunded: dict[str, int]
    requests: int
    failed: int
    purchases: int
    revenue: dict[str, int]  # minor units per currency: what the purchases paid in the window cost
    refunds: dict[str, int]  # minor units per currency: what of those was refunded since
    # minor units per currency: what of those a lost dispute took back (what was not refunded)
    disputes_lost: dict[str, int] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.requests if self.requests else None


def tiles(now: datetime | None = None) -> list[Tile]:
    """Today, 7 and 30 days: three queries (usage, lots, purchases), each one pass over 30 days."""
    now = now or utcnow()
    starts = [window_start(now, days) for _label, days in WINDOWS]
    with atomic(write=False) as session:
        usage = _windowed(session, USAGE.c.hour, USAGE.c.credit_type,
                          (USAGE.c.requests, USAGE.c.failed, USAGE.c.charged, USAGE.c.refunded), starts, now)
        # A rollover lot carries last period's credits into the next: nothing new was granted.
        granted = _windowed(session, LOTS.c.created_at, LOTS.c.credit_type, (LOTS.c.amount,), starts, now,
                            LOTS.c.source != "rollover")
        lost = case((PURCHASES.c.status == "dispute_lost", PURCHASES.c.price - PURCHASES.c.refunded), else_=0)
        paid = _windowed(session, PURCHASES.c.paid_at, PURCHASES.c.currency,
                         (literal(1), PURCHASES.c.price, PURCHASES.c.refunded, lost), starts, now)
    return [
        Tile(label=label, start=start, granted=_per_type(granted[w]),
             charged=_per_type((r[0], r[3]) for r in usage[w]), refunded=_per_type((r[0], r[4]) for r in usage[w]),
             requests=sum(r[1] for r in usage[w]), failed=sum(r[2] for r in usage[w]),
             purchases=sum(r[1] for r in paid[w]),
             revenue={r[0]: r[2] for r in paid[w] if r[1]}, refunds={r[0]: r[3] for r in paid[w] if r[1]},
             disputes_lost={r[0]: r[4] for r in paid[w] if r[1]})
        for w, ((label, _days), start) in enumerate(zip(WINDOWS, starts))
    ]


def _windowed(session, moment, key, values, starts: list[datetime], now: datetime, *where) -> list[list[tuple]]:
    """Per window start, [(key, sum of each of `values`)] over rows with `moment` from that start
    to `now`: conditional sums, so the longest window is read once for all."""
    sums = [func.sum(case((moment >= start, value), else_=0)) for start in starts for value in values]
    rows = session.execute(
        select(key, *sums).where(moment >= min(starts), moment <= now, *where).group_by(key)).all()
    n = len(values)
    return [[(r[0], *(int(v or 0) for v in r[1 + w * n:1 + (w + 1) * n])) for r in rows] for w in range(len(starts))]


def _per_type(rows) -> dict[str, int]:
    found = dict.fromkeys(CREDIT_TYPES, 0)
    found.update({credit_type: int(total or 0) for credit_type, total in rows})
    return found


@dataclass(frozen=True)
class Series:
    feature: str
    credit_type: str
    points: list[int]  # net credits charged (charged − refunded) per day, oldest first

    @property
    def total(self) -> int:
        return sum(self.points)


@dataclass(frozen=True)
class ChargesByFeature:
    days: list[datetime]
    series: list[Series]  # biggest total first


def charges_by_feature(now: datetime | None = None, days: int = CHART_DAYS) -> ChargesByFeature:
    """Net credits charged per feature and day over the last `days` days (empty days are zeros).

    The rollup is summed per hour in SQL (the hour is its key, so this is portable) and the
    at most days × 24 rows per feature are folded into days here."""
    now = now or utcnow()
    start = window_start(now, days)
    with atomic(write=False) as session:
        rows = session.execute(
            select(USAGE.c.hour, USAGE.c.feature, USAGE.c.credit_type,
                   func.sum(USAGE.c.charged - USAGE.c.refunded))
            .where(USAGE.c.hour >= start, USAGE.c.hour <= now)
            .group_by(USAGE.c.hour, USAGE.c.feature, USAGE.c.credit_type)
        ).all()
    buckets = [start + timedelta(days=i) for i in range(days)]
    points: dict[tuple[str, str], list[int]] = {}
    for hour, feature, credit_type, net in rows:
        day = (midnight(hour) - start).days
        points.setdefault((feature or "(none)", credit_type), [0] * days)[day] += int(net or 0)
    series = [Series(feature, credit_type, values) for (feature, credit_type), values in points.items()]
    series.sort(key=lambda s: (-s.total, s.feature, s.credit_type))
    return ChargesByFeature(buckets, series)


@dataclass(frozen=True)
class Spender:
    user_id: int
    username: str
    credit_type: str
    spent: int  # net credits charged in the window
    requests: int
    balance: int  # spendable now, of the same credit type, in the user's own wallet


def top_spenders(now: datetime | None = None, days: int = CHART_DAYS, limit: int = 10) -> list[Spender]:
    """The users who spent most in the last `days` days, per credit type (credits of two types
    are not added up), with what they can spend now."""
    now = now or utcnow()
    start = window_start(now, days)
    spent = func.sum(USAGE.c.charged - USAGE.c.refunded)
    found = []
    with atomic(write=False) as session:
        for credit_type in CREDIT_TYPES:
            found += session.execute(
                select(USAGE.c.user_id, USERS.c.username, USAGE.c.credit_type, spent.label("spent"),
                       func.sum(USAGE.c.requests).label("requests"))
                .join(USERS, USERS.c.id == USAGE.c.user_id)
                .where(USAGE.c.hour >= start, USAGE.c.hour <= now, USAGE.c.credit_type == credit_type)
                .group_by(USAGE.c.user_id, USERS.c.username, USAGE.c.credit_type)
                .having(spent > 0).order_by(spent.desc(), USAGE.c.user_id).limit(limit)
            ).all()
    # The exact spendable balance (lots past their expiry count for nothing) of at most
    # limit × credit types users.
    balances = {user_id: credit_service.get_credit_balance(user_id) for user_id in {r.user_id for r in found}}
    return [Spender(r.user_id, r.username, r.credit_type, int(r.spent), int(r.requests),
                    getattr(balances[r.user_id], r.credit_type)) for r in found]


@dataclass(frozen=True)
class Health:
    open_holds: dict[str, int]  # how many, per credit type
    held: dict[str, int]  # credits they hold, per credit type
    oldest_hold_at: datetime | None
    expiring_lots: int  # lots with credits left that lapse within EXPIRING_DAYS
    expiring: dict[str, int]  # what they would take away, per credit type
    debt: dict[str, int]  # what refunds took back that had been spent, per credit type
    wallets_in_debt: int
    last_verify: verify_runs.VerifyRun | None

    def oldest_hold_age(self, now: datetime) -> timedelta | None:
        return now - self.oldest_hold_at if self.oldest_hold_at is not None else None


def health(now: datetime | None = None) -> Health:
    """Open holds, lots about to lapse, debt, and the last verification."""
    now = now or utcnow()
    with atomic(write=False) as session:
        holds = session.execute(
            select(HOLDS.c.credit_type, func.count(), func.sum(HOLDS.c.amount), func.min(HOLDS.c.created_at))
            .where(HOLDS.c.status == "open").group_by(HOLDS.c.credit_type)
        ).all()
        # Frozen (disputed) and voided lots cannot lapse into anything: they are not spendable.
        expiring = session.execute(
            select(LOTS.c.credit_type, func.count(), func.sum(LOTS.c.remaining - LOTS.c.held))
            .where(LOTS.c.remaining > LOTS.c.held, LOTS.c.expires_at > now,
                   LOTS.c.expires_at <= now + timedelta(days=EXPIRING_DAYS),
                   LOTS.c.frozen_at.is_(None), LOTS.c.voided_at.is_(None))
            .group_by(LOTS.c.credit_type)
        ).all()
        debt = session.execute(
            select(ACCOUNTS.c.credit_type, func.count(), func.sum(ACCOUNTS.c.debt))
            .where(ACCOUNTS.c.debt > 0).group_by(ACCOUNTS.c.credit_type)
        ).all()
    oldest = [r[3] for r in holds if r[3] is not None]
    return Health(
        open_holds=_per_type((r[0], r[1]) for r in holds), held=_per_type((r[0], r[2]) for r in holds),
        oldest_hold_at=min(oldest) if oldest else None,
        expiring_lots=sum(int(r[1]) for r in expiring), expiring=_per_type((r[0], r[2]) for r in expiring),
        debt=_per_type((r[0], r[2]) for r in debt), wallets_in_debt=sum(int(r[1]) for r in debt),
        last_verify=verify_runs.last(),
    )


@dataclass(frozen=True)
class UserPage:
    user_id: int
    username: str
    balance: dict[str, int]
    debt: dict[str, int]
    lots: list[dict] = field(default_factory=list)
    ledger: list[dict] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    purchases: list[dict] = field(default_factory=list)


def user_page(user_id: int, rows: int = 25) -> UserPage:
    """One user's wallet: balance, lots (spent ones too), the latest ledger rows, jobs and
    purchases. UnknownUser if there is no such user."""
    if not 0 < user_id < TEAM_WALLETS:  # a team's wallet is not a user's page
        raise UnknownUser(f"no user with id {user_id}")
    overview = credit_service.overview(user_id, expiring=0)  # raises UnknownUser
    lots = credit_service.list_lots(user_id, include_spent=True, limit=rows).items
    ledger = credit_service.list_transactions(user_id, limit=rows).items
    with atomic(write=False) as session:
        username = session.execute(select(USERS.c.username).where(USERS.c.id == user_id)).scalar()
        jobs = session.execute(
            select(JOBS.c.id, JOBS.c.feature, JOBS.c.status, JOBS.c.credit_type, JOBS.c.amount, JOBS.c.charged,
                   JOBS.c.created_at, JOBS.c.finished_at)
            .where(JOBS.c.user_id == user_id).order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(rows)
        ).mappings().all()
        purchases = session.execute(
            select(PURCHASES.c.id, PURCHASES.c.pack, PURCHASES.c.status, PURCHASES.c.credit_type,
                   PURCHASES.c.credits, PURCHASES.c.price, PURCHASES.c.currency, PURCHASES.c.refunded,
                   PURCHASES.c.created_at, PURCHASES.c.paid_at)
            .where(PURCHASES.c.user_id == user_id).order_by(PURCHASES.c.id.desc()).limit(rows)
        ).mappings().all()
    return UserPage(user_id, username, overview.balance.as_dict(), dict(overview.debt), lots, ledger,
                    [dict(j) for j in jobs], [dict(p) for p in purchases])


def admin_actions(limit: int = 50) -> list[dict]:
    """The log of administrators' actions, newest first (creditapp.admin_actions)."""
    return recent_admin_actions(limit=limit)

