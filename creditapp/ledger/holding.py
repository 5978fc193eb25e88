"""A hold inside a transaction of the caller's: for work whose own state must change together
with its hold (a job's row), in one commit.

`credit_service.holding(hold)` locks the hold's account, reads the clock after the lock and the
hold's row, and yields a `HeldHold`; whatever the caller writes in `held.session` commits or rolls
back with what it does to the hold. So an extension, a settle and an expiry of one hold, and the
job changes that go with them, queue on one lock and exactly one of them decides the hold's end.
"""
from datetime import datetime, timedelta

from . import keys as idempotency
from .types import Balance, Hold


class HeldHold:
    def __init__(self, service, session, hold: Hold, now: datetime, state):
        self._service = service
        self.session = session
        self.hold = hold
        self.now = now
        self.status: str = state.status
        self.amount: int = state.amount
        self.expires_at: datetime = state.expires_at

    @property
    def open(self) -> bool:
        return self.status == "open"

    def end_if_due(self) -> bool:
        """Expire the hold if it is past its expiry by the clock read after the lock (its credits
        go back, its key if still in flight is freed). True if the hold is open after."""
        if self.open and self.expires_at <= self.now:
            self._service._expire_hold(self.session, self.hold.wallet_id, self.hold.credit_type,
                                       self.hold.hold_id, self.now)
            idempotency.free_for_hold(self.session, self.hold.hold_id)
            self.status = "expired"
        return self.open

    def extend(self, seconds: float) -> datetime:
        """Keep an open hold (not past its expiry: call end_if_due first) alive `seconds` from now,
        never shortening it."""
        self._must_be_live()
        self.expires_at = max(self.expires_at, self.now + timedelta(seconds=seconds))
        self._service._extend(self.session, self.hold.hold_id, self.expires_at)
        self.hold.expires_at = self.expires_at
        return self.expires_at

    def settle(self, charge: int) -> None:
        """Charge `charge` (0 releases the hold) and give back the rest."""
        self._must_be_live()
        self._service._settle(self.session, self.hold, self.amount, charge, self.now)
        self.status = "settled" if charge else "released"
        self.hold.closed = True

    def answer(self, status: int, body: str) -> None:
        """Store the answer for the hold's Idempotency-Key now, while the hold stays open: a retry
        replays it (a job's 202) instead of waiting for the hold to end."""
        idempotency.complete_for_hold(self.session, self.hold.hold_id, status, body,
                                      self._service._key_expiry(self.now))

    def balance(self) -> Balance:
        """What the wallet can spend, as of this transaction."""
        return self._service._spendable(self.session, self.hold.wallet_id, self.now)

    def _must_be_live(self) -> None:
        if not self.open or self.expires_at <= self.now:
            raise ValueError(f"hold {self.hold.hold_id} is {self.status} (expires {self.expires_at}); "
                             "call end_if_due() first")
