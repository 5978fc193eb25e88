"""The one clock that money decisions read.

A hold's end and a stored answer's end are decided by comparing with this clock at the moment of
the write that depends on them (after the account lock is taken), never by a sweep having run.
Tests replace the source with `clock.use(...)` to move time without sleeping.
"""
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone


def system_now() -> datetime:
    return datetime.now(timezone.utc)


class Clock:
    def __init__(self) -> None:
        self._source: Callable[[], datetime] = system_now

    def now(self) -> datetime:
        return self._source()

    @contextmanager
    def use(self, source: Callable[[], datetime]) -> Iterator[None]:
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous


class ManualClock:
    """A clock that moves only when told to (tests). `on_change(now)` is told every move, so
    that a clock kept elsewhere (the database's, on PostgreSQL) can move with it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or system_now()
        self.on_change: Callable[[datetime], None] | None = None

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        if self.on_change is not None:
            self.on_change(self.current)
        return self.current


clock = Clock()


def utcnow() -> datetime:
    return clock.now()
