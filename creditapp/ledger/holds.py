"""Holds: credits set aside for one unit of work, settled, released or expired.

A hold is taken with every cap that applies (a key's budget, a member's cap) counted in the same
transaction, claims its Idempotency-Key there too, and ends in one transaction that settles its
charge (storing the answer for its key) or gives everything back. Its end is decided by the
clock read after the account's lock: from its `expires_at` on it cannot be settled, whatever a
sweep has or has not done. On PostgreSQL the hold and the close are one function call each
(procedures.py); elsewhere the same steps run here.
"""
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import select

from . import caps, lots, procedures
from . import keys as idempotency
from . import statements as sql
from .clock import utcnow
from .core import checked_amount, credit_type_of
from .errors import (
    CapExceeded, HoldExpired, IdempotencyKeyInUse, IdempotencyKeyReused, InsufficientCredits, LedgerError, RateLimited,
    UnknownCharge,
)
from .admission import Admission
from .admission import count as count_request
from .holding import HeldHold
from .statements import HOLDS
from .transactions import atomic, read, retry_conflicts
from .types import Balance, CreditType, Hold, Spender

_active_holds: ContextVar[tuple[Hold, ...]] = ContextVar("creditapp_active_holds", default=())
REFILL_ATTEMPTS = 3  # a refill that answers `refill` again means a period ended in between


class Holds:
    @retry_conflicts
    def reserve(
        self, wallet_id: int, amount: int, credit_type, *, key: str | None = None,
        fingerprint: str | None = None, spender: Spender | None = None, feature: str | None = None,
        admission: Admission | None = None,
    ) -> Hold:
        """Hold `amount` credits, or raise InsufficientCredits (or the refusal of a cap: CapClosed,
        CapExpired, FeatureNotAllowed, CapExceeded) and hold nothing.

        With an Idempotency-Key, the key is claimed for this hold in the same transaction (and the
        hold records it), or IdempotencyKeyInUse is raised and nothing is held. With `admission`
        (the paid rate limit), the request is counted in that transaction too (RateLimited).
        """
        amount, credit_type = checked_amount(amount), credit_type_of(credit_type)
        spender = spender or Spender.of_user(wallet_id)
        if procedures.available():
            return self._hold_call(spender, amount, credit_type, key, fingerprint, feature, replay=False)
        shortfall = None
        counting = admission is not None and not admission.done
        try:
            with atomic() as session:
                if counting:  # in this transaction (SQLite); PostgreSQL's call counted it already
                    counted = count_request(session, admission.user_id, admission.windows, utcnow())
                    if counted is not None and counted.limited:
                        raise RateLimited(counted)
                self._enter(session, wallet_id)
                self._lock_account(session, wallet_id, credit_type)
                now = utcnow()  # after the lock: what has expired is decided at this write
                starts = caps.check(session, spender.caps, wallet_id, credit_type.value, amount, feature, now)
                self._expire_lots(session, wallet_id, credit_type, now)
                row = self._take_available(session, wallet_id, credit_type, amount, held_change=amount)
                if row is None:
                    # Maybe expired holds are what is missing: sweep them, and try once more.
                    self._expire_holds(session, wallet_id, credit_type, now)
                    row = self._take_available(session, wallet_id, credit_type, amount, held_change=amount)
                    if row is None:
                        shortfall = self._lock_account(session, wallet_id, credit_type).available
                if shortfall is None:
                    expires_at = now + timedelta(seconds=self.hold_ttl_seconds)
                    hold_id = session.execute(sql.INSERT_HOLD, {
                        "wallet_id": wallet_id, "credit_type": credit_type.value, "amount": amount,
                        "settled_amount": 0, "status": "open", "created_at": now,
                        "expires_at": expires_at, "idempotency_key": key, "user_id": spender.user_id,
                        "key_id": spender.key_id, "feature": feature,
                    }).scalar_one()
                    parts = lots.allocate(session, wallet_id, credit_type.value, amount, now, hold=True)
                    lots.record_receipt(session, hold_id, parts)
                    changes = [("hold", p.lot_id, -p.amount, p.amount) for p in parts]
                    self._rows(session, wallet_id, credit_type, changes, row, hold_id=hold_id)
                    caps.count(session, hold_id, spender.caps, starts, credit_type.value, amount, now)
                    # Swept after the hold's own rows, so that every row's *_after is the state it left.
                    after_sweep = self._expire_holds(session, wallet_id, credit_type, now, excluding=hold_id)[1] or row
                    balance = self._spendable(session, wallet_id, now)
                    if key is not None:
                        # In flight until the hold ends; its time to live starts when its answer is stored.
                        idempotency.claim(session, spender.client_id, key, fingerprint, expires_at, hold_id=hold_id)
        except LedgerError:
            if counting:  # the refusal rolled its count back: count it on its own
                self.admit(admission)
            raise
        if counting:
            admission.took(counted)
        # Raised after the commit so that an expiry sweep done on the way is kept.
        if shortfall is not None:
            raise InsufficientCredits(amount, shortfall, credit_type.value)
        return Hold(
            hold_id=hold_id, wallet_id=wallet_id, credit_type=credit_type, amount=amount,
            available_before=after_sweep.available + amount, available_after=after_sweep.available,
            balance=balance, expires_at=expires_at, key=key, user_id=spender.user_id, client_id=spender.client_id,
        )

    @retry_conflicts
    def hold_or_replay(
        self, wallet_id: int, amount: int, credit_type, *, key: str | None = None,
        fingerprint: str | None = None, spender: Spender | None = None, feature: str | None = None,
        admission: Admission | None = None,
    ) -> Hold | idempotency.StoredResponse:
        """A paid request's first step: its `admission` (session, paid rate limit: see
        admission.py), then the stored answer to replay for its Idempotency-Key, or a new hold
        (see `replay_or_free` and `reserve`). On PostgreSQL this is one call."""
        amount, credit_type = checked_amount(amount), credit_type_of(credit_type)
        spender = spender or Spender.of_user(wallet_id)
        if procedures.available():
            return self._hold_call(spender, amount, credit_type, key, fingerprint, feature, replay=True,
                                   admission=admission)
        if admission is not None and (key is not None or admission.session_id is not None):
            self.admit(admission)  # its own transaction: a replay or a key refused is counted too
        if key is not None:
            stored = self.replay_or_free(spender.client_id, key, fingerprint)
            if stored is not None:
                return stored
        return self.reserve(wallet_id, amount, credit_type, key=key, fingerprint=fingerprint, spender=spender,
                            feature=feature, admission=admission)

    def _hold_call(self, spender: Spender, amount, credit_type, key, fingerprint, feature, *, replay: bool,
                   admission: Admission | None = None):
        ref = procedures.new_ref()  # one per request: a refill's second call is the same request
        for _attempt in range(REFILL_ATTEMPTS):
            admitting = admission is not None and not admission.done
            try:
                row = procedures.hold(spender=spender, credit_type=credit_type.value, amount=amount,
                                      ttl=self.hold_ttl_seconds, key=key, fingerprint=fingerprint, replay=replay,
                                      feature=feature, ref=ref, admission=admission)
            except IdempotencyKeyInUse:
                if admitting:  # the key's race rolled the whole call back, its count too
                    self.admit(admission, ref)
                raise
            if admitting:
                admission.record(row.outcome, row.rate_window, row.rate_hits, row.rate_reset)
            if row.outcome != "refill":
                break
            self.refill(spender.wallet_id, due=True)
        if row.outcome == "held":
            return Hold(
                hold_id=row.hold_id, wallet_id=spender.wallet_id, credit_type=credit_type, amount=amount,
                available_before=row.available + amount, available_after=row.available,
                balance=Balance(**{t.value: getattr(row, t.value) for t in CreditType}),
                expires_at=row.expires_at, key=key, user_id=spender.user_id, client_id=spender.client_id,
            )
        if row.outcome == "replay":
            return idempotency.StoredResponse(row.response_status, row.response_body)
        if row.outcome == "insufficient":
            raise InsufficientCredits(amount, row.available, credit_type.value)
        if row.outcome == "in_use":
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
        if row.outcome == "reused":
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
        procedures.refuse(row, spender.wallet_id, amount, credit_type.value)
        raise RuntimeError(f"creditapp_hold answered {row.outcome!r}")

    def deduct_credits(self, wallet_id: int, amount: int, credit_type, reason: str | None = None) -> Balance:
        """Charge `amount`, or raise InsufficientCredits and change nothing. 0 charges nothing
        (work that used nothing, such as a cached answer) and returns the balance.

        Inside `activate(hold)` for the same balance, the charge is taken from that
        hold and committed when it closes successfully; the balance returned already
        counts what the close will give back. Elsewhere the charge is taken at once.
        """
        nothing = type(amount) is int and amount == 0
        amount, credit_type = (0 if nothing else checked_amount(amount)), credit_type_of(credit_type)
        for hold in _active_holds.get():
            if (hold.wallet_id, hold.credit_type) == (wallet_id, credit_type) and not hold.closed:
                if not nothing:
                    self._add_charge(hold, amount, reason)
                # As of the hold, plus what the close will give back: no extra query.
                unspent = hold.amount - hold.pending
                balance = hold.balance
                return replace(balance, **{credit_type.value: getattr(balance, credit_type.value) + unspent})
        if nothing:
            return self.get_credit_balance(wallet_id)
        return self._charge_now(wallet_id, credit_type, amount, reason)

    @retry_conflicts
    def _charge_now(self, wallet_id, credit_type, amount: int, reason) -> Balance:
        with atomic() as session:
            self._enter(session, wallet_id)
            self._lock_account(session, wallet_id, credit_type)
            now = utcnow()
            self._expire_lots(session, wallet_id, credit_type, now)
            row = self._take_available(session, wallet_id, credit_type, amount, held_change=0)
            if row is None:
                available = self._lock_account(session, wallet_id, credit_type).available
                raise InsufficientCredits(amount, available, credit_type.value)
            parts = lots.allocate(session, wallet_id, credit_type.value, amount, now, hold=False)
            self._rows(session, wallet_id, credit_type, [("charge", p.lot_id, -p.amount, 0) for p in parts], row,
                       reason=reason)
            return self._balance(session, wallet_id)

    @retry_conflicts
    def _add_charge(self, hold: Hold, amount: int, reason: str | None) -> None:
        """Count `amount` against the hold, first holding more if it is not enough (from the
        balance and within the hold's caps)."""
        if hold.closed:
            raise ValueError("the hold is already closed")
        total = hold.pending + amount
        extra = total - hold.amount
        if extra > 0:
            wallet_id, credit_type = hold.wallet_id, hold.credit_type
            with atomic() as session:
                self._lock_account(session, wallet_id, credit_type)
                now = utcnow()
                self._expire_lots(session, wallet_id, credit_type, now)
                grown = session.execute(sql.GROW_HOLD, {"p_hold": hold.hold_id, "p_extra": extra}).rowcount
                if grown:
                    try:
                        caps.grow(session, hold.hold_id, credit_type.value, extra)
                    except CapExceeded as exc:
                        # The work used more than its cap left: like a balance that cannot cover it.
                        raise InsufficientCredits(total, hold.amount + exc.limit - exc.spent, credit_type.value) from exc
                    row = self._take_available(session, wallet_id, credit_type, extra, held_change=extra)
                    if row is None:
                        available = self._lock_account(session, wallet_id, credit_type).available
                        raise InsufficientCredits(total, available + hold.amount, credit_type.value)
                    parts = lots.allocate(session, wallet_id, credit_type.value, extra, now, hold=True)
                    lots.record_receipt(session, hold.hold_id, parts, grow=True)
                    self._rows(session, wallet_id, credit_type,
                               [("hold", p.lot_id, -p.amount, p.amount) for p in parts], row,
                               hold_id=hold.hold_id)
                    hold.balance = replace(hold.balance, **{credit_type.value: row.available})
            hold.amount = total
        hold.pending = total
        hold.reason = reason or hold.reason

    def settle(self, hold: Hold, amount: int, reason: str | None = None) -> Balance:
        """Charge `amount` against a hold and close it now, giving back the rest."""
        self._add_charge(hold, checked_amount(amount), reason)
        self.close(hold, succeeded=True)
        return self.get_credit_balance(hold.wallet_id)

    def _settle(self, session, hold: Hold, held: int, charge: int, now: datetime) -> None:
        """Consume `charge` of an open hold and give back the rest."""
        self._end_hold(session, hold.wallet_id, hold.credit_type, hold.hold_id, charge,
                       "settled" if charge else "released", now, reason=hold.reason)

    @retry_conflicts
    def close(self, hold: Hold, *, succeeded: bool, answer: tuple[int, str] | None = None) -> None:
        """End a hold in one transaction: on success settle its charges, give back the rest and
        store `answer` (status, body) for its Idempotency-Key; on failure give back everything
        and free the key.

        The hold's end is decided here, with the clock read after the account is locked: from its
        `expires_at` on it cannot be settled, whatever a sweep has or has not done. Such a close
        expires the hold (if nothing else ended it first), charges nothing and raises
        HoldExpired when there was something to charge.
        """
        if hold.closed:
            return
        wallet_id, credit_type, hold_id = hold.wallet_id, hold.credit_type, hold.hold_id
        charge = hold.pending if succeeded else 0
        if procedures.available():
            outcome = procedures.close(
                hold_id=hold_id, wallet_id=wallet_id, credit_type=credit_type.value, charge=charge,
                answer=answer if succeeded and hold.key is not None else None,
                key_ttl=self.idempotency_ttl_seconds, reason=hold.reason,
            )
            hold.closed = True
            if outcome == "expired" and charge:
                raise HoldExpired(f"hold {hold_id} expired before the work finished; nothing was charged")
            return
        with atomic() as session:
            self._lock_account(session, wallet_id, credit_type)
            now = utcnow()
            state = session.execute(sql.LOCK_HOLD, {"p_hold": hold_id}).one()
            answered = expired = False
            if state.status != "open":
                # Ended elsewhere: a retry with its key, or a sweep, found it past its expiry.
                expired = state.status == "expired"
            elif state.expires_at <= now:
                self._expire_hold(session, wallet_id, credit_type, hold_id, now)
                expired = True
            else:
                self._settle(session, hold, state.amount, charge, now)
                if succeeded and answer is not None and hold.key is not None:
                    idempotency.complete_for_hold(session, hold_id, *answer, self._key_expiry(now))
                    answered = True
            if not answered and hold.key is not None:
                idempotency.free_for_hold(session, hold_id)
        hold.closed = True
        if expired and charge:
            raise HoldExpired(f"hold {hold_id} expired before the work finished; nothing was charged")

    @retry_conflicts
    def extend(self, hold: Hold, seconds: float | None = None) -> datetime:
        """Keep a hold alive for work that is still running (a job's heartbeat): its expiry
        becomes `seconds` (CREDIT_HOLD_TTL_SECONDS by default) from now, never earlier than it
        was. Returns the new expiry.

        Decided like the close, after the account lock and by the clock read then: a hold already
        past its expiry is not revived but expired here (its credits go back, its key is freed)
        and HoldExpired is raised; so is HoldExpired for a hold that has ended otherwise. An
        extension, a close and an expiry of one hold queue on the same lock, and whichever comes
        first decides."""
        seconds = self.hold_ttl_seconds if seconds is None else seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        if hold.closed:
            raise HoldExpired(f"hold {hold.hold_id} has ended")
        with self.holding(hold) as held:
            if held.end_if_due():
                return held.extend(seconds)
        hold.closed = True
        raise HoldExpired(f"hold {hold.hold_id} ended before it could be extended; nothing will be charged")

    @contextmanager
    def holding(self, hold: Hold) -> Iterator[HeldHold]:
        """One transaction on `hold` under its account's lock, for the caller's writes that must
        commit with the hold's (see holding.py). Callers wrap their whole transaction in
        `retry_conflicts`."""
        with atomic() as session:
            self._lock_account(session, hold.wallet_id, hold.credit_type)
            now = utcnow()  # after the lock: what has expired is decided here
            state = session.execute(sql.LOCK_HOLD, {"p_hold": hold.hold_id}).one_or_none()
            if state is None:
                raise UnknownCharge(f"no hold with id {hold.hold_id}")
            yield HeldHold(self, session, hold, now, state)

    def _extend(self, session, hold_id: int, expires_at: datetime) -> None:
        session.execute(sql.EXTEND_HOLD, {"p_hold": hold_id, "p_expires": expires_at})

    def replay_or_free(self, client_id: int, key: str, request_fingerprint: str):
        """What an Idempotency-Key says about a new request: the stored answer to replay, or None
        when the request should run. Raises IdempotencyKeyReused or IdempotencyKeyInUse.

        A key in flight whose hold is past its expiry is freed here, in the same transaction that
        ends that hold, so its first request can no longer be charged when the retry runs."""
        with atomic() as session:
            row = idempotency.find(session, client_id, key)
            if row is not None and row.status == "in_flight" and row.hold_id is not None:
                self._lock_account(session, row.hold_wallet_id, CreditType(row.hold_credit_type))
                row = idempotency.find(session, client_id, key)  # as it is now that we hold the lock
            if row is None:
                return None
            now = utcnow()
            if row.expires_at <= now and (row.status == "completed" or row.hold_id is None):
                idempotency.forget(session, row.id)
                return None
            if row.status == "in_flight" and row.hold_id is not None and not (
                row.hold_status == "open" and row.hold_expires_at > now
            ):
                if row.hold_status == "open":
                    self._expire_hold(session, row.hold_wallet_id, CreditType(row.hold_credit_type), row.hold_id, now)
                idempotency.forget(session, row.id)
                return None
        if row.fingerprint != request_fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
        if row.status == "in_flight":
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
        return idempotency.StoredResponse(row.response_status, row.response_body)

    def hold_status(self, hold_id: int) -> str | None:
        rows = read(sql.HOLD_STATUS.params(p_hold=hold_id))
        return rows[0].status if rows else None

    @retry_conflicts
    def release_expired(self, now: datetime | None = None) -> int:
        """Give back every hold past its expiry and write off every lot past its expiry (for
        cron: it tidies up, the writes that depend on either decide by the clock anyway).
        Returns how many holds were given back."""
        now = now or utcnow()
        with atomic(write=False) as session:
            accounts = set(session.execute(
                select(HOLDS.c.wallet_id, HOLDS.c.credit_type)
                .where(HOLDS.c.status == "open", HOLDS.c.expires_at <= now)
                .distinct()
            ).all()) | set(session.execute(
                select(lots.LOTS.c.wallet_id, lots.LOTS.c.credit_type)
                .where(lots.LOTS.c.remaining > lots.LOTS.c.held, lots.LOTS.c.expires_at <= now,
                       lots.LOTS.c.frozen_at.is_(None))
                .distinct()
            ).all())
        released = 0
        for wallet_id, credit_type in sorted(accounts):
            with atomic() as session:
                self._enter(session, wallet_id)
                self._lock_account(session, wallet_id, CreditType(credit_type))
                self._expire_lots(session, wallet_id, CreditType(credit_type), now)
                released += self._expire_holds(session, wallet_id, CreditType(credit_type), now)[0]
        return released

    @contextmanager
    def activate(self, hold: Hold) -> Iterator[Hold]:
        """Make deduct_credits in this context charge `hold` instead of the balance."""
        token = _active_holds.set(_active_holds.get() + (hold,))
        try:
            yield hold
        finally:
            _active_holds.reset(token)
