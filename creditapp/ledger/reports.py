"""Usage reports: paid requests, failures, charges and refunds per bucket of time and group, as
exact as the ledger.

A report covers [start, end), cut into buckets (an hour or a day) on the calendar of `start`'s
offset: the first point starts at `start`, each next one at a whole hour or a midnight of that
offset, and the last one ends at `end`. Whole UTC hours inside one bucket are read from the
hourly rollup (usage.py); the parts of hours that the range or a bucket cuts (a range from 10:17,
a day that starts at 18:30 UTC in +05:30) from what the rollup counted for them: the holds closed
and the refund rows written then (found by the indexes of migration 0013). So a report adds up to
the ledger whatever its edges, and a year of it reads one rollup row per group and hour.

Credits of different types are never added together: every series is of one credit type.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import BigInteger, DateTime, and_, case, cast, func, literal_column, or_, select, text

from .clock import utcnow
from .errors import InvalidRange, TooManyBuckets
from .tables import CREDIT_TYPES, TEAM_WALLETS, CreditHold, CreditUsage, LedgerEntry
from .transactions import atomic
from .usage import hour_of

BUCKETS = {"hour": 3600, "day": 86400}
GROUPS = {"feature": "feature", "user": "user_id", "credit_type": "credit_type", "team": "team_id", "key": "key_id"}
MAX_BUCKETS = 1000  # points per series: 41 days of hours, 2.7 years of days
REPORT_WORK_MEM = "64MB"
DEFAULT_RANGE = timedelta(days=30)
HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
USAGE, HOLDS, LEDGER = CreditUsage.__table__, CreditHold.__table__, LedgerEntry.__table__
NOTHING = literal_column("0")


@dataclass(frozen=True)
class Plan:
    """Where a report's figures come from: the points' starts, the grid that numbers them
    (bucket = (epoch − grid0) // stride), the whole UTC hours read from the rollup (`whole`, but
    those ≡ `cut_hour` mod a day, which a day of an offset such as +05:30 cuts), and the
    intervals read from the holds and the refund rows (`exact`)."""

    starts: list[datetime]
    grid0: int
    stride: int
    whole: tuple[datetime, datetime] | None
    cut_hour: int | None
    exact: list[tuple[datetime, datetime]]


def seconds(moment: datetime) -> int:
    """Whole seconds since the epoch, rounded down."""
    return (moment - EPOCH) // timedelta(seconds=1)


def plan(start: datetime, end: datetime, bucket: str) -> Plan:
    """How to read [start, end) in `bucket`s; InvalidRange (TooManyBuckets) for a range that is none."""
    if start.utcoffset() is None or end.utcoffset() is None:
        raise InvalidRange("from and to need an offset (Z, +05:30, ...)")
    if start >= end:
        raise InvalidRange("from must be before to")
    stride = BUCKETS[bucket]
    if start.utcoffset() % timedelta(minutes=1) or end.utcoffset() % timedelta(minutes=1):
        raise InvalidRange("the offsets of from and to must be whole minutes")
    offset = int(start.utcoffset().total_seconds())
    zone = timezone(timedelta(seconds=offset))
    grid0 = (seconds(start) + offset) // stride * stride - offset
    count = -((EPOCH + timedelta(seconds=grid0) - end) // timedelta(seconds=stride))
    if count > MAX_BUCKETS:
        raise TooManyBuckets(count, MAX_BUCKETS)
    bounds = [EPOCH + timedelta(seconds=grid0 + k * stride) for k in range(1, count)]
    start, end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    starts = [moment.astimezone(zone) for moment in [start, *bounds]]
    whole_start = hour_of(start) + (HOUR if hour_of(start) < start else timedelta(0))
    whole_end = hour_of(end)
    cuts_hours = offset % 3600 != 0
    if whole_start >= whole_end or (cuts_hours and stride == 3600):
        return Plan(starts, grid0, stride, None, None, [(start, end)])
    cut = [hour_of(b) for b in bounds if whole_start <= hour_of(b) < whole_end] if cuts_hours else []
    exact = ([(start, whole_start)] if start < whole_start else []) + [(h, h + HOUR) for h in cut] + (
        [(whole_end, end)] if whole_end < end else [])
    return Plan(starts, grid0, stride, (whole_start, whole_end), seconds(cut[0]) if cut else None, _merged(exact))


def _merged(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for low, high in sorted(intervals):
        if merged and merged[-1][1] >= low:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _epoch(column, dialect: str):
    if dialect == "postgresql":
        return cast(func.floor(func.date_part("epoch", column)), BigInteger)
    return cast(func.strftime("%s", column), BigInteger)


def _team(wallet_id):
    return case((wallet_id >= TEAM_WALLETS, wallet_id - TEAM_WALLETS), else_=0)


def _dimensions(table) -> dict:
    """Each group's column in the rollup or the holds ("none" is 0 or '' in both)."""
    if table is USAGE:
        return {"feature": USAGE.c.feature, "user": USAGE.c.user_id, "key": USAGE.c.key_id,
                "team": _team(USAGE.c.wallet_id), "credit_type": USAGE.c.credit_type, "wallet": USAGE.c.wallet_id}
    return {"feature": func.coalesce(HOLDS.c.feature, ""), "user": func.coalesce(HOLDS.c.user_id, 0),
            "key": func.coalesce(HOLDS.c.key_id, 0), "team": _team(HOLDS.c.wallet_id),
            "credit_type": HOLDS.c.credit_type, "wallet": HOLDS.c.wallet_id}


def _bucket(moment, plan_: Plan, dialect: str):
    """The index of `moment`'s point. PostgreSQL bins it with date_bin first: much cheaper per
    row than arithmetic on its epoch, and an integer comes back, not a time to convert."""
    if dialect == "postgresql":
        moment = func.date_bin(timedelta(seconds=plan_.stride), moment, EPOCH + timedelta(seconds=plan_.grid0),
                               type_=DateTime(timezone=True))
    return (_epoch(moment, dialect) - plan_.grid0) // plan_.stride


def _grouped(table, groups, moment, plan_: Plan, dialect: str, filters: dict, figures: list):
    dims = _dimensions(table)
    bucket = _bucket(moment, plan_, dialect).label("g_bucket")
    columns = [dims[name].label(f"g_{name}") for name in groups]
    return (select(*columns, bucket, *figures)
            .where(*[dims[name] == value for name, value in filters.items()])
            .group_by(*[literal_column(f"g_{name}") for name in groups], literal_column("g_bucket")))


def _sum(column):
    # An integer, not PostgreSQL's numeric sum of bigints (a Decimal to convert per row).
    return cast(func.sum(column), BigInteger)


def _within(column, intervals):
    return or_(*[and_(column >= low, column < high) for low, high in intervals])


def _rows(session, plan_: Plan, groups: list[str], filters: dict) -> list:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # A year by user is tens of thousands of groups: hashed in memory, not sorted on disk.
        session.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
    rows = []
    if plan_.whole is not None:
        query = _grouped(USAGE, groups, USAGE.c.hour, plan_, dialect, filters, [
            _sum(USAGE.c.requests), _sum(USAGE.c.charged), _sum(USAGE.c.refunded), _sum(USAGE.c.failed)]).where(USAGE.c.hour >= plan_.whole[0], USAGE.c.hour < plan_.whole[1])
        if plan_.cut_hour is not None:
            query = query.where((_epoch(USAGE.c.hour, dialect) - plan_.cut_hour) % 86400 != 0)
        rows += session.execute(query).all()
    if plan_.exact:
        closed = HOLDS.c.closed_at
        rows += session.execute(_grouped(HOLDS, groups, closed, plan_, dialect, filters, [
            func.count(), _sum(HOLDS.c.settled_amount), NOTHING,
            _sum(case((HOLDS.c.settled_amount == 0, 1), else_=0))]).where(_within(closed, plan_.exact))).all()
        written = LEDGER.c.created_at
        rows += session.execute(_grouped(HOLDS, groups, written, plan_, dialect, filters, [
            NOTHING, NOTHING, _sum(LEDGER.c.amount), NOTHING])
            .select_from(LEDGER.join(HOLDS, HOLDS.c.id == LEDGER.c.hold_id))
            .where(LEDGER.c.kind == "refund", _within(written, plan_.exact))).all()
    return rows


def _group(groups: list[str], key: tuple) -> dict:
    group = {}
    for name, value in zip(groups, key):
        group[GROUPS[name]] = value if name == "credit_type" else (value or None)
    return group


class Reports:
    def usage_report(self, *, start: datetime | None = None, end: datetime | None = None, bucket: str = "day",
                     group_by=(), wallet_id: int | None = None, user_id: int | None = None,
                     feature: str | None = None, credit_type: str | None = None) -> dict:
        """Requests, charges, refunds and failures of paid requests in [start, end) (by default the
        last 30 days), per `bucket` ("hour", "day") and per group of `group_by` (of GROUPS; the
        credit type always), of one wallet or all, filtered by spender, feature or credit type.
        Raises InvalidRange (TooManyBuckets) for a range that is none, ValueError for an unknown
        bucket or group."""
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}")
        unknown = [name for name in group_by if name not in GROUPS]
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r}")
        if end is None:
            end = utcnow() if start is None or start.utcoffset() is None else utcnow().astimezone(start.tzinfo)
        if start is None:
            start = end - DEFAULT_RANGE
        plan_ = plan(start, end, bucket)
        groups = [name for name in GROUPS if name in group_by or name == "credit_type"]
        filters = {name: value for name, value in (("wallet", wallet_id), ("user", user_id), ("feature", feature),
                                                   ("credit_type", credit_type)) if value is not None}
        with atomic(write=False) as session:
            rows = _rows(session, plan_, groups, filters)
        return _report(plan_, groups, rows, start, end, bucket)


def _report(plan_: Plan, groups: list[str], rows, start: datetime, end: datetime, bucket: str) -> dict:
    """The rows' figures added up per group and point (a year by user is tens of thousands of
    rows: kept to list indexing)."""
    count, width = len(plan_.starts), len(groups)
    sums: dict[tuple, tuple[list[int], ...]] = {}
    for row in rows:
        key = tuple(row[:width])
        figures = sums.get(key)
        if figures is None:
            figures = sums[key] = ([0] * count, [0] * count, [0] * count, [0] * count)
        slot = row[width]
        for figure, value in zip(figures, row[width + 1:]):
            figure[slot] += value or 0
    totals = {"requests": 0, "failed": 0, "charged": dict.fromkeys(CREDIT_TYPES, 0),
              "refunded": dict.fromkeys(CREDIT_TYPES, 0)}
    series = []
    for key, (requests, charged, refunded, failed) in sums.items():
        ctype = key[groups.index("credit_type")]
        totals["requests"] += sum(requests)
        totals["failed"] += sum(failed)
        totals["charged"][ctype] += sum(charged)
        totals["refunded"][ctype] += sum(refunded)
        series.append(((-sum(charged), -sum(requests), repr(key)), {
            "group": _group(groups, key),
            "points": [{"start": begins, "requests": r, "charged": c, "refunded": g, "failed": f}
                       for begins, r, c, g, f in zip(plan_.starts, requests, charged, refunded, failed)],
        }))
    zone = plan_.starts[0].tzinfo
    return {"from": start.astimezone(zone), "to": end.astimezone(zone), "bucket": bucket,
            "series": [entry for _order, entry in sorted(series, key=lambda item: item[0])], "totals": totals}
