"""Periods back to back from an anchor: a cap's budget period, a plan's billing period.

Days and weeks are UTC days; a month (a year) keeps the anchor's day, clamped to the month's last
day, as Stripe does: from 31 January the periods start on 28 February, 31 March, 30 April. Every
period is counted from the anchor, never from the period before, so a clamped day does not stick.
`creditapp_period_start` in the PostgreSQL functions computes the same, and tests hold the two to
each other.
"""
import calendar
from datetime import datetime, timedelta

FIXED = {"day": 86400, "week": 7 * 86400}
MONTHS = {"month": 1, "year": 12}


def add_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def nth_start(anchor: datetime, period: str, seconds: int | None, n: int) -> datetime:
    """The start of the n-th period (the 0th begins at the anchor)."""
    if period in MONTHS:
        return add_months(anchor, n * MONTHS[period])
    step = seconds if period == "seconds" else FIXED[period]
    return anchor + timedelta(seconds=n * step)


def index_at(anchor: datetime, period: str | None, seconds: int | None, now: datetime) -> int:
    """Which period holds `now` (0 before and at the anchor, and always when there is no period)."""
    if period is None or now <= anchor:
        return 0
    if period in MONTHS:
        step = MONTHS[period]
        n = ((now.year - anchor.year) * 12 + now.month - anchor.month) // step
        if add_months(anchor, n * step) > now:
            n -= 1
        return n
    step = seconds if period == "seconds" else FIXED[period]
    return (now - anchor) // timedelta(seconds=step)


def period_at(anchor: datetime, period: str | None, seconds: int | None,
              now: datetime) -> tuple[datetime, datetime | None]:
    """The period that holds `now`: (start, end); end is None when periods never end."""
    if period is None:
        return anchor, None
    n = index_at(anchor, period, seconds, now)
    return nth_start(anchor, period, seconds, n), nth_start(anchor, period, seconds, n + 1)


def check(period: str | None, seconds: int | None) -> None:
    """ValueError unless (period, seconds) names periods: a known unit, or "seconds" with a count."""
    if period is None and seconds is None:
        return
    if period == "seconds" or (period is None and seconds is not None):
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 10 * 366 * 86400:
            raise ValueError(f"period seconds must be a whole number from 1 to {10 * 366 * 86400}, got {seconds!r}")
        return
    if period not in (*FIXED, *MONTHS) or seconds is not None:
        raise ValueError(f"period must be one of day, week, month, year or a number of seconds, got {period!r}")
