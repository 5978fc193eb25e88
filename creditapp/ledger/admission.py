"""Admission: what a paid request must pass before its hold, checked by the hold's own call.

Two checks: its login session, when the web layer left that check to the ledger (PostgreSQL
with revoked sessions in the database: `session_id`), and the paid rate limit, counted per user
in fixed windows (`windows`: (amount, seconds) pairs) as Flask-Limiter's `fixed-window` counts
them: a window starts at its first hit and lasts its length, every request counts (those over the
limit too), and the windows are counted in order (the caller's: shortest first, as Flask-Limiter
sorted them) up to the first one over its amount. The
counter rows are shared by every worker and host, so the limit is exact however many serve.

On PostgreSQL both checks are part of the hold's one call (creditapp_paid_hold, migration 0018);
elsewhere the count is part of the hold's own transaction, and made again in a transaction of its
own when the hold is refused by a rollback (a cap, a rate limit, an Idempotency-Key in use), so
that a refused request stays counted, as it always was.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, case
from sqlalchemy.orm import Mapped, mapped_column

from . import procedures
from .clock import utcnow
from .errors import AccountDisabled, RateLimited, SessionRevoked
from .tables import Base, UTCDateTime
from .transactions import atomic
from .upsert import insert_for


class PaidRateCounter(Base):
    """One user's requests in the current window of one length (migration 0018)."""

    __tablename__ = "paid_rate_counters"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)
    window_ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_ref: Mapped[str | None] = mapped_column(String(32), nullable=True)


COUNTERS = PaidRateCounter.__table__


@dataclass(frozen=True)
class Counted:
    """The window an answer's rate-limit headers describe: the one over its amount, else the first."""

    window: int  # index into Admission.windows
    hits: int
    resets_at: datetime
    limited: bool


@dataclass
class Admission:
    """A paid request's checks before its hold. The call that counts it sets `counted`."""

    user_id: int
    windows: tuple[tuple[int, int], ...] = ()
    session_id: str | None = None
    counted: Counted | None = None

    @property
    def done(self) -> bool:
        return self.counted is not None or not self.windows and self.session_id is None

    def flat_windows(self) -> list[int]:
        return [number for window in self.windows for number in window]

    def record(self, outcome: str, window: int | None, hits: int | None, resets_at: datetime | None) -> None:
        """Take in a call's answer (window 1-based, as SQL counts), raising its refusal."""
        if outcome == "revoked":
            raise SessionRevoked("the token's login session was revoked")
        if outcome == "disabled":
            raise AccountDisabled("this account is disabled")
        self.took(Counted(window - 1, hits, resets_at, outcome == "rate_limited") if window is not None else None)

    def took(self, counted: Counted | None) -> None:
        """The checks were made and committed (`counted`: None without windows)."""
        self.session_id, self.counted = None, counted
        if counted is not None and counted.limited:
            raise RateLimited(counted)


class Admitting:
    def admit(self, admission: Admission, ref: str | None = None) -> None:
        """Check and count `admission` on its own (a request refused before its hold), once:
        SessionRevoked, AccountDisabled or RateLimited if it is refused."""
        if admission.done:
            return
        if procedures.available():
            row = procedures.admit(admission, ref)
            admission.record(row.outcome, row.rate_window, row.rate_hits, row.rate_reset)
            return
        if admission.session_id is not None:
            raise ValueError("the session check is part of the ledger call on PostgreSQL only (see checks_sessions)")
        with atomic() as session:
            counted = count(session, admission.user_id, admission.windows, utcnow())
        admission.took(counted)


def count(session, user_id: int, windows, now: datetime) -> Counted | None:
    """Count a request in the caller's transaction (SQLite's way; PostgreSQL's is in SQL)."""
    shown = None
    seen: dict[int, tuple[int, datetime]] = {}  # two windows of one length share a row: one hit
    for index, (amount, seconds) in enumerate(windows):
        if seconds not in seen:
            seen[seconds] = _hit(session, user_id, seconds, now)
        hits, resets_at = seen[seconds]
        if index == 0 or hits > amount:
            shown = Counted(index, hits, resets_at, limited=hits > amount)
        if hits > amount:
            break
    return shown


def _hit(session, user_id: int, seconds: int, now: datetime) -> tuple[int, datetime]:
    statement = insert_for(session, COUNTERS).values(user_id=user_id, window_seconds=seconds, hits=1,
                                                     window_ends_at=now + timedelta(seconds=seconds))
    lapsed = COUNTERS.c.window_ends_at <= now
    return tuple(session.execute(statement.on_conflict_do_update(
        index_elements=["user_id", "window_seconds"],
        set_={"hits": case((lapsed, 1), else_=COUNTERS.c.hits + 1),
              "window_ends_at": case((lapsed, statement.excluded.window_ends_at),
                                     else_=COUNTERS.c.window_ends_at)},
    ).returning(COUNTERS.c.hits, COUNTERS.c.window_ends_at)).one())
