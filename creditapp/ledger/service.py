"""The credit ledger: grants, holds, settlements, refunds and audits.

No Flask request code lives here, so the same service serves the API, the CLI and workers.
Every public method is one transaction. Balances change only through relative, conditional
UPDATEs (`available = available - n ... WHERE available >= n`) and each change appends a ledger
row in the same transaction, so the database itself refuses an overdraft and the ledger always
sums to the balance.

Lock order is always account row first, then hold rows, so settle, release and the expiry sweep
cannot deadlock with each other.
Every write to an account's lots (and holds) happens under its account row's lock, which the
PostgreSQL functions rely on to read lots without locking them one by one.
"""
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .clock import utcnow
from .transactions import atomic, read, retry_conflicts
from . import keys as idempotency
from . import lots
from . import procedures
from .errors import (
    AlreadyRefunded, ExpiryNotInTheFuture, HoldExpired, IdempotencyKeyInUse, IdempotencyKeyReused,
    InsufficientCredits, LotAlreadyVoided, NotACharge, NotRefundable, ReferenceConflict, RefundExceedsCharge,
    SessionRevoked, UnknownCharge, UnknownLot, UnknownUser,
)
from .tables import MAX_AMOUNT
from . import statements as sql
from .holding import HeldHold
from .statements import ACCOUNTS, HOLDS, LEDGER
from .types import Balance, CreditType, Grant, Refund, Hold

_active_holds: ContextVar[tuple[Hold, ...]] = ContextVar(
    "creditapp_active_holds", default=()
)


@dataclass(frozen=True)
class Discrepancy:
    user_id: int
    credit_type: str
    field: str
    recorded: int
    expected: int

    def __str__(self) -> str:
        return (
            f"user {self.user_id} {self.credit_type}: {self.field} is {self.recorded}, "
            f"ledger says {self.expected}"
        )


@dataclass(frozen=True)
class LedgerPage:
    items: list
    next_cursor: int | None


def _credit_type(value) -> CreditType:
    try:
        return CreditType(value)
    except ValueError:
        raise ValueError(f"unknown credit type {value!r}") from None


DEFAULT_PRIORITY = 50  # lots are spent lowest priority first; 0 to 100


def _priority(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"priority must be an integer from 0 to 100, got {value!r}")
    return value


def _amount(value) -> int:
    # bool is an int subclass: True must not pass for 1 credit.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"amount must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"amount must be positive, got {value}")
    if value > MAX_AMOUNT:
        raise ValueError(f"amount must be at most {MAX_AMOUNT}, got {value}")
    return value


class CreditService:
    def __init__(self, hold_ttl_seconds: int = 600, idempotency_ttl_seconds: int = 24 * 3600):
        self.hold_ttl_seconds = hold_ttl_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds

    def configure(self, *, hold_ttl_seconds: int, idempotency_ttl_seconds: int) -> None:
        if hold_ttl_seconds <= 0:
            raise ValueError("hold TTL must be positive")
        if idempotency_ttl_seconds <= hold_ttl_seconds:
            # A key that could expire while its request still runs would let a retry charge again.
            raise ValueError(
                f"IDEMPOTENCY_TTL_SECONDS ({idempotency_ttl_seconds}) must be longer than "
                f"CREDIT_HOLD_TTL_SECONDS ({hold_ttl_seconds})"
            )
        self.hold_ttl_seconds = hold_ttl_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds

    # --- reading -------------------------------------------------------------------------

    def get_credit_balance(self, user_id: int) -> Balance:
        """What can be spent at this instant: lots past their expiry count for nothing, whether
        or not their expiry has been written yet."""
        if procedures.available():
            return self.balance_overview(user_id, expiring=0)[0]
        with atomic(write=False) as session:
            return self._spendable(session, user_id, utcnow())

    @property
    def checks_sessions(self) -> bool:
        """Whether the balance read takes the caller's login session and refuses a revoked one
        in the same call (PostgreSQL), so the web layer need not look it up first."""
        return procedures.available()

    def balance_overview(self, user_id: int, expiring: int = 5,
                         session_id: str | None = None) -> tuple[Balance, list[dict]]:
        """What can be spent now, and the next credits to lapse, soonest first
        ([{credit_type, amount, expires_at}], at most `expiring`), read together. With
        `session_id` (only where `checks_sessions`), SessionRevoked if it was revoked."""
        if procedures.available():
            row, lapsing = procedures.balance(user_id=user_id, session_id=session_id, expiring=expiring)
            _refuse(row.outcome, user_id)
            return Balance(**{t.value: getattr(row, t.value) for t in CreditType}), lapsing
        _no_session_check(session_id)
        with atomic(write=False) as session:
            now = utcnow()
            return self._spendable(session, user_id, now), lots.expiring(session, user_id, now, expiring)

    def list_lots(self, user_id: int, *, credit_type=None, include_spent: bool = False,
                  offset: int = 0, limit: int = 20) -> LedgerPage:
        """The user's lots in spending order (per credit type), `limit` at a time from `offset`;
        without `include_spent`, only lots with credits still to spend."""
        ctype = _credit_type(credit_type).value if credit_type is not None else None
        with atomic(write=False) as session:
            self._balance(session, user_id)  # raises UnknownUser
            now = utcnow()
            rows = lots.listing(session, user_id, credit_type=ctype, include_spent=include_spent, now=now,
                                offset=offset, limit=limit + 1)
        items = [lots.describe(row, now) for row in rows[:limit]]
        return LedgerPage(items=items, next_cursor=offset + limit if len(rows) > limit else None)

    def hold_status(self, hold_id: int) -> str | None:
        rows = read(sql.HOLD_STATUS.params(p_hold=hold_id))
        return rows[0].status if rows else None

    def list_transactions(
        self, user_id: int, *, limit: int = 20, before_id: int | None = None,
        credit_type=None,
    ) -> LedgerPage:
        """A page of the user's ledger, newest first; `before_id` is the previous page's cursor."""
        query = select(LEDGER).where(LEDGER.c.user_id == user_id)
        if credit_type is not None:
            query = query.where(LEDGER.c.credit_type == _credit_type(credit_type).value)
        if before_id is not None:
            query = query.where(LEDGER.c.id < before_id)
        query = query.order_by(LEDGER.c.id.desc()).limit(limit + 1)
        with atomic(write=False) as session:
            self._balance(session, user_id)  # raises UnknownUser
            rows = session.execute(query).mappings().all()
        items = [dict(row) for row in rows[:limit]]
        next_cursor = items[-1]["id"] if len(rows) > limit else None
        return LedgerPage(items=items, next_cursor=next_cursor)

    # --- changing ------------------------------------------------------------------------

    def add_credits(self, user_id: int, amount: int, credit_type, reason: str | None = None) -> Balance:
        return self.grant(user_id, amount, credit_type, reason=reason).balance

    @retry_conflicts
    def grant(
        self, user_id: int, amount: int, credit_type, *, reason: str | None = None,
        reference: str | None = None, priority: int = DEFAULT_PRIORITY,
        expires_at: datetime | None = None, source: str = "admin",
        also: Callable[[Session, Grant], None] | None = None,
    ) -> Grant:
        """Add credits as a new lot. A grant with a `reference` already granted to this user adds
        nothing and answers the original grant (so a re-sent payment webhook cannot pay twice).
        `also(session, grant)` runs in the same transaction."""
        amount, credit_type = _amount(amount), _credit_type(credit_type)
        if expires_at is not None and expires_at <= utcnow():
            raise ExpiryNotInTheFuture(f"expires_at must be in the future, got {expires_at.isoformat()}")
        lot = {"priority": _priority(priority), "expires_at": expires_at, "source": source}
        try:
            with atomic() as session:
                result = self._grant(session, user_id, amount, credit_type, reason, reference, lot)
                if also is not None:
                    also(session, result)
                return result
        except IntegrityError:
            if reference is None:
                raise
            # Another grant with this reference committed first; answer it.
            with atomic() as session:
                result = self._grant(session, user_id, amount, credit_type, reason, reference, lot)
                if also is not None:
                    also(session, result)
                return result

    @retry_conflicts
    def reserve(
        self, user_id: int, amount: int, credit_type, *, key: str | None = None,
        fingerprint: str | None = None,
    ) -> Hold:
        """Hold `amount` credits, or raise InsufficientCredits and hold nothing.

        With an Idempotency-Key, the key is claimed for this hold in the same transaction (and the
        hold records it), or IdempotencyKeyInUse is raised and nothing is held.
        """
        amount, credit_type = _amount(amount), _credit_type(credit_type)
        if procedures.available():
            return self._hold_call(user_id, amount, credit_type, key, fingerprint, replay=False)
        shortfall = None
        with atomic() as session:
            self._lock_account(session, user_id, credit_type)
            now = utcnow()  # after the lock: what has expired is decided at this write
            self._expire_lots(session, user_id, credit_type, now)
            row = self._take_available(session, user_id, credit_type, amount, held_change=amount)
            if row is None:
                # Maybe expired holds are what is missing: sweep them, and try once more.
                self._expire_holds(session, user_id, credit_type, now)
                row = self._take_available(session, user_id, credit_type, amount, held_change=amount)
                if row is None:
                    shortfall = self._lock_account(session, user_id, credit_type).available
            if shortfall is None:
                expires_at = now + timedelta(seconds=self.hold_ttl_seconds)
                hold_id = session.execute(sql.INSERT_HOLD, {
                    "user_id": user_id, "credit_type": credit_type.value, "amount": amount,
                    "settled_amount": 0, "status": "open", "created_at": now,
                    "expires_at": expires_at, "idempotency_key": key,
                }).scalar_one()
                parts = lots.allocate(session, user_id, credit_type.value, amount, now, hold=True)
                lots.record_receipt(session, hold_id, parts)
                self._rows(session, user_id, credit_type, [("hold", p.lot_id, -p.amount, p.amount) for p in parts],
                           row, hold_id=hold_id)
                # Swept after the hold's own rows, so that every row's *_after is the state it left.
                after_sweep = self._expire_holds(session, user_id, credit_type, now, excluding=hold_id)[1] or row
                balance = self._spendable(session, user_id, now)
                if key is not None:
                    # In flight until the hold ends; its time to live starts when its answer is stored.
                    idempotency.claim(session, user_id, key, fingerprint, expires_at, hold_id=hold_id)
        # Raised after the commit so that an expiry sweep done on the way is kept.
        if shortfall is not None:
            raise InsufficientCredits(amount, shortfall, credit_type.value)
        return Hold(
            hold_id=hold_id, user_id=user_id, credit_type=credit_type, amount=amount,
            available_before=after_sweep.available + amount, available_after=after_sweep.available,
            balance=balance, expires_at=expires_at, key=key,
        )

    @retry_conflicts
    def hold_or_replay(
        self, user_id: int, amount: int, credit_type, *, key: str | None = None,
        fingerprint: str | None = None,
    ) -> Hold | idempotency.StoredResponse:
        """A paid request's first step: the stored answer to replay for its Idempotency-Key, or a
        new hold (see `replay_or_free` and `reserve`). On PostgreSQL this is one call."""
        amount, credit_type = _amount(amount), _credit_type(credit_type)
        if procedures.available():
            return self._hold_call(user_id, amount, credit_type, key, fingerprint, replay=True)
        if key is not None:
            stored = self.replay_or_free(user_id, key, fingerprint)
            if stored is not None:
                return stored
        return self.reserve(user_id, amount, credit_type, key=key, fingerprint=fingerprint)

    def _hold_call(self, user_id, amount, credit_type, key, fingerprint, *, replay: bool):
        row = procedures.hold(user_id=user_id, credit_type=credit_type.value, amount=amount,
                              ttl=self.hold_ttl_seconds, key=key, fingerprint=fingerprint, replay=replay)
        if row.outcome == "held":
            return Hold(
                hold_id=row.hold_id, user_id=user_id, credit_type=credit_type, amount=amount,
                available_before=row.available + amount, available_after=row.available,
                balance=Balance(**{t.value: getattr(row, t.value) for t in CreditType}),
                expires_at=row.expires_at, key=key,
            )
        if row.outcome == "replay":
            return idempotency.StoredResponse(row.response_status, row.response_body)
        if row.outcome == "insufficient":
            raise InsufficientCredits(amount, row.available, credit_type.value)
        if row.outcome == "in_use":
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
        if row.outcome == "reused":
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
        _refuse(row.outcome, user_id)
        raise RuntimeError(f"creditapp_hold answered {row.outcome!r}")

    def deduct_credits(
        self, user_id: int, amount: int, credit_type, reason: str | None = None
    ) -> Balance:
        """Charge `amount`, or raise InsufficientCredits and change nothing. 0 charges nothing
        (work that used nothing, such as a cached answer) and returns the balance.

        Inside `activate(hold)` for the same balance, the charge is taken from that
        hold and committed when it closes successfully; the balance returned already
        counts what the close will give back. Elsewhere the charge is taken at once.
        """
        nothing = type(amount) is int and amount == 0
        amount, credit_type = (0 if nothing else _amount(amount)), _credit_type(credit_type)
        for hold in _active_holds.get():
            if (hold.user_id, hold.credit_type) == (user_id, credit_type) and not hold.closed:
                if not nothing:
                    self._add_charge(hold, amount, reason)
                # As of the hold, plus what the close will give back: no extra query.
                unspent = hold.amount - hold.pending
                balance = hold.balance
                return replace(balance, **{credit_type.value: getattr(balance, credit_type.value) + unspent})
        if nothing:
            return self.get_credit_balance(user_id)
        return self._charge_now(user_id, credit_type, amount, reason)

    def settle(self, hold: Hold, amount: int, reason: str | None = None) -> Balance:
        """Charge `amount` against a hold and close it now, giving back the rest."""
        self._add_charge(hold, _amount(amount), reason)
        self.close(hold, succeeded=True)
        return self.get_credit_balance(hold.user_id)

    @retry_conflicts
    def close(
        self, hold: Hold, *, succeeded: bool, answer: tuple[int, str] | None = None,
    ) -> None:
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
        user_id, credit_type, hold_id = hold.user_id, hold.credit_type, hold.hold_id
        charge = hold.pending if succeeded else 0
        if procedures.available():
            outcome = procedures.close(
                hold_id=hold_id, user_id=user_id, credit_type=credit_type.value, charge=charge,
                answer=answer if succeeded and hold.key is not None else None,
                key_ttl=self.idempotency_ttl_seconds, reason=hold.reason,
            )
            hold.closed = True
            if outcome == "expired" and charge:
                raise HoldExpired(f"hold {hold_id} expired before the work finished; nothing was charged")
            return
        with atomic() as session:
            self._lock_account(session, user_id, credit_type)
            now = utcnow()
            state = session.execute(sql.LOCK_HOLD, {"p_hold": hold_id}).one()
            answered = expired = False
            if state.status != "open":
                # Ended elsewhere: a retry with its key, or a sweep, found it past its expiry.
                expired = state.status == "expired"
            elif state.expires_at <= now:
                self._expire_hold(session, user_id, credit_type, hold_id, state.amount, now)
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
            self._lock_account(session, hold.user_id, hold.credit_type)
            now = utcnow()  # after the lock: what has expired is decided here
            state = session.execute(sql.LOCK_HOLD, {"p_hold": hold.hold_id}).one_or_none()
            if state is None:
                raise UnknownCharge(f"no hold with id {hold.hold_id}")
            yield HeldHold(self, session, hold, now, state)

    def _extend(self, session, hold_id: int, expires_at: datetime) -> None:
        session.execute(sql.EXTEND_HOLD, {"p_hold": hold_id, "p_expires": expires_at})

    def replay_or_free(self, user_id: int, key: str, request_fingerprint: str):
        """What an Idempotency-Key says about a new request: the stored answer to replay, or None
        when the request should run. Raises IdempotencyKeyReused or IdempotencyKeyInUse.

        A key in flight whose hold is past its expiry is freed here, in the same transaction that
        ends that hold, so its first request can no longer be charged when the retry runs."""
        with atomic() as session:
            row = idempotency.find(session, user_id, key)
            if row is not None and row.status == "in_flight" and row.hold_id is not None:
                self._lock_account(session, user_id, CreditType(row.hold_credit_type))
                row = idempotency.find(session, user_id, key)  # as it is now that we hold the lock
            if row is None:
                return None
            now = utcnow()
            if row.status == "completed" and row.expires_at <= now:
                idempotency.forget(session, row.id)
                return None
            if row.status == "in_flight" and row.hold_id is not None and not (
                row.hold_status == "open" and row.hold_expires_at > now
            ):
                if row.hold_status == "open":
                    self._expire_hold(session, user_id, CreditType(row.hold_credit_type), row.hold_id,
                                      row.hold_amount, now)
                idempotency.forget(session, row.id)
                return None
        if row.fingerprint != request_fingerprint:
            raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
        if row.status == "in_flight":
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
        return idempotency.StoredResponse(row.response_status, row.response_body)

    def _key_expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.idempotency_ttl_seconds)

    @retry_conflicts
    def refund(self, hold_id: int, amount: int | None = None, *, reason: str,
               also: Callable[[Session, Refund], None] | None = None) -> Refund:
        """Give back all (`amount` None) or part of what a settled hold charged, to the lots it came
        from, in one transaction; `also(session, refund)` runs in it (to store an answer).

        Raises UnknownCharge, NotACharge (it charged nothing), AlreadyRefunded (nothing is left to
        refund) or RefundExceedsCharge; a refund never gives back more than was charged, however
        many run at once: they queue on the account's lock."""
        if amount is not None:
            amount = _amount(amount)
        with atomic() as session:
            found = session.execute(sql.HOLD_ACCOUNT, {"p_hold": hold_id}).one_or_none()
            if found is None:
                raise UnknownCharge(f"no charge with id {hold_id}")
            credit_type = CreditType(found.credit_type)
            self._lock_account(session, found.user_id, credit_type)
            hold = session.execute(sql.LOCK_HOLD_FOR_REFUND, {"p_hold": hold_id}).one()
            if hold.status != "settled" or hold.settled_amount == 0:
                raise NotACharge(f"hold {hold_id} charged nothing ({hold.status})")
            refundable = hold.settled_amount - hold.refunded_amount
            if refundable == 0:
                raise AlreadyRefunded(f"charge {hold_id} was refunded in full")
            amount = refundable if amount is None else amount
            if amount > refundable:
                raise RefundExceedsCharge(amount, refundable)
            if not lots.has_receipt(session, hold_id):
                raise NotRefundable(f"charge {hold_id} was made before credit lots existed; grant the credits instead")
            now = utcnow()
            parts = lots.refund(session, hold_id, amount, now)
            session.execute(sql.ADD_REFUNDED, {"p_hold": hold_id, "p_n": amount})
            changes = [("refund", part.lot_id, part.amount, 0) for part, _gone in parts]
            changes += [(gone, part.lot_id, -part.amount, 0) for part, gone in parts if gone]
            row = self._move(session, found.user_id, credit_type, sum(c[2] for c in changes), 0)
            self._rows(session, found.user_id, credit_type, changes, row, hold_id=hold_id, reason=reason)
            result = Refund(
                hold_id=hold_id, user_id=found.user_id, credit_type=credit_type, amount=amount,
                refunded_total=hold.refunded_amount + amount, charged=hold.settled_amount,
                lots=[{"lot_id": part.lot_id, "amount": part.amount, "lapsed": gone is not None}
                      for part, gone in parts],
                balance=self._spendable(session, found.user_id, now),
            )
            if also is not None:
                also(session, result)
        return result

    @retry_conflicts
    def void_lot(self, lot_id: int, *, reason: str) -> dict:
        """Remove what is left of a lot that nobody holds (a payment was reversed). Credits of it
        that holds have set aside stay with them: what they settle is spent, what they give back
        is voided then. Raises UnknownLot or LotAlreadyVoided."""
        with atomic() as session:
            found = lots.one(session, lot_id)
            if found is None:
                raise UnknownLot(f"no lot with id {lot_id}")
            credit_type = CreditType(found.credit_type)
            self._lock_account(session, found.user_id, credit_type)
            now = utcnow()
            self._expire_lots(session, found.user_id, credit_type, now)  # what expired is not voided
            lot = session.execute(lots.LOCK_LOT, {"p_lot": lot_id}).one()
            if lot.voided_at is not None:
                raise LotAlreadyVoided(f"lot {lot_id} was voided at {lot.voided_at.isoformat()}")
            free = lot.remaining - lot.held
            session.execute(lots.VOID, {"p_lot": lot_id, "p_now": now})
            if free:
                row = self._move(session, found.user_id, credit_type, -free, 0)
                self._rows(session, found.user_id, credit_type, [("void", lot_id, -free, 0)], row, reason=reason)
            return {"lot": lots.describe(lots.one(session, lot_id), now), "voided": free,
                    "user_id": found.user_id, "balance": self._spendable(session, found.user_id, now)}

    @retry_conflicts
    def release_expired(self, now: datetime | None = None) -> int:
        """Give back every hold past its expiry and write off every lot past its expiry (for
        cron: it tidies up, the writes that depend on either decide by the clock anyway).
        Returns how many holds were given back."""
        now = now or utcnow()
        with atomic(write=False) as session:
            accounts = set(session.execute(
                select(HOLDS.c.user_id, HOLDS.c.credit_type)
                .where(HOLDS.c.status == "open", HOLDS.c.expires_at <= now)
                .distinct()
            ).all()) | set(session.execute(
                select(lots.LOTS.c.user_id, lots.LOTS.c.credit_type)
                .where(lots.LOTS.c.remaining > lots.LOTS.c.held, lots.LOTS.c.expires_at <= now)
                .distinct()
            ).all())
        released = 0
        for user_id, credit_type in sorted(accounts):
            with atomic() as session:
                self._lock_account(session, user_id, CreditType(credit_type))
                self._expire_lots(session, user_id, CreditType(credit_type), now)
                released += self._expire_holds(session, user_id, CreditType(credit_type), now)[0]
        return released

    @contextmanager
    def activate(self, hold: Hold) -> Iterator[Hold]:
        """Make deduct_credits in this context charge `hold` instead of the balance."""
        token = _active_holds.set(_active_holds.get() + (hold,))
        try:
            yield hold
        finally:
            _active_holds.reset(token)

    # --- auditing ------------------------------------------------------------------------

    def verify(self) -> list[Discrepancy]:
        """Every balance against its ledger and its open holds; an empty list means all agree."""
        ledger = (
            select(
                LEDGER.c.user_id, LEDGER.c.credit_type,
                func.sum(LEDGER.c.amount).label("available"),
                func.sum(LEDGER.c.held_change).label("held"),
                func.max(LEDGER.c.id).label("last_id"),
            )
            .group_by(LEDGER.c.user_id, LEDGER.c.credit_type)
            .subquery()
        )
        holds = (
            select(HOLDS.c.user_id, HOLDS.c.credit_type, func.sum(HOLDS.c.amount).label("held"))
            .where(HOLDS.c.status == "open")
            .group_by(HOLDS.c.user_id, HOLDS.c.credit_type)
            .subquery()
        )
        latest = LEDGER.alias("latest")
        query = (
            select(
                ACCOUNTS.c.user_id, ACCOUNTS.c.credit_type, ACCOUNTS.c.available, ACCOUNTS.c.held,
                func.coalesce(ledger.c.available, 0).label("ledger_available"),
                func.coalesce(ledger.c.held, 0).label("ledger_held"),
                func.coalesce(holds.c.held, 0).label("open_holds"),
                func.coalesce(latest.c.balance_after, 0).label("last_balance_after"),
                func.coalesce(latest.c.held_after, 0).label("last_held_after"),
            )
            .outerjoin(ledger, and_(
                ledger.c.user_id == ACCOUNTS.c.user_id, ledger.c.credit_type == ACCOUNTS.c.credit_type
            ))
            .outerjoin(latest, latest.c.id == ledger.c.last_id)
            .outerjoin(holds, and_(
                holds.c.user_id == ACCOUNTS.c.user_id, holds.c.credit_type == ACCOUNTS.c.credit_type
            ))
            .order_by(ACCOUNTS.c.user_id, ACCOUNTS.c.credit_type)
        )
        orphans = select(ledger.c.user_id, ledger.c.credit_type, ledger.c.available).where(
            ~select(ACCOUNTS.c.user_id).where(
                ACCOUNTS.c.user_id == ledger.c.user_id, ACCOUNTS.c.credit_type == ledger.c.credit_type
            ).exists()
        )
        problems: list[Discrepancy] = []
        with atomic(write=False) as session:
            for r in session.execute(query):
                checks = (
                    ("available", r.available, r.ledger_available),
                    ("held", r.held, r.ledger_held),
                    ("held (open holds)", r.held, r.open_holds),
                    ("available (last ledger row)", r.available, r.last_balance_after),
                    ("held (last ledger row)", r.held, r.last_held_after),
                    ("available (must not be negative)", r.available, max(r.available, 0)),
                )
                problems += [
                    Discrepancy(r.user_id, r.credit_type, field, recorded, expected)
                    for field, recorded, expected in checks if recorded != expected
                ]
            for r in session.execute(orphans):
                problems.append(Discrepancy(r.user_id, r.credit_type, "account (missing)", 0, r.available))
            problems += self._double_charges(session)
            problems += self._lot_problems(session)
        return problems

    def _lot_problems(self, session) -> list[Discrepancy]:
        """Lots against their accounts, their ledger rows and the receipts of open holds."""
        L, R = lots.LOTS, lots.RECEIPTS
        per_account = (
            select(L.c.user_id, L.c.credit_type, func.sum(L.c.remaining - L.c.held).label("free"),
                   func.sum(L.c.held).label("held"))
            .group_by(L.c.user_id, L.c.credit_type).subquery()
        )
        accounts = session.execute(
            select(ACCOUNTS.c.user_id, ACCOUNTS.c.credit_type, ACCOUNTS.c.available, ACCOUNTS.c.held,
                   func.coalesce(per_account.c.free, 0).label("free"),
                   func.coalesce(per_account.c.held, 0).label("lots_held"))
            .outerjoin(per_account, and_(per_account.c.user_id == ACCOUNTS.c.user_id,
                                         per_account.c.credit_type == ACCOUNTS.c.credit_type))
            .order_by(ACCOUNTS.c.user_id, ACCOUNTS.c.credit_type)
        ).all()
        problems = []
        for r in accounts:
            if r.available != r.free:
                problems.append(Discrepancy(r.user_id, r.credit_type, "available (sum of lots)", r.available, r.free))
            if r.held != r.lots_held:
                problems.append(Discrepancy(r.user_id, r.credit_type, "held (sum of lots)", r.held, r.lots_held))
        moved = (
            select(LEDGER.c.lot_id, func.sum(LEDGER.c.amount + LEDGER.c.held_change).label("change"))
            .where(LEDGER.c.lot_id.is_not(None), LEDGER.c.kind != "grant")
            .group_by(LEDGER.c.lot_id).subquery()
        )
        open_receipts = (
            select(R.c.lot_id, func.sum(R.c.amount).label("held"))
            .join(HOLDS, HOLDS.c.id == R.c.hold_id).where(HOLDS.c.status == "open")
            .group_by(R.c.lot_id).subquery()
        )
        for r in session.execute(
            select(L.c.id, L.c.user_id, L.c.credit_type, L.c.amount, L.c.remaining, L.c.held,
                   func.coalesce(moved.c.change, 0).label("change"),
                   func.coalesce(open_receipts.c.held, 0).label("receipts"))
            .outerjoin(moved, moved.c.lot_id == L.c.id)
            .outerjoin(open_receipts, open_receipts.c.lot_id == L.c.id)
            .order_by(L.c.id)
        ):
            if r.remaining != r.amount + r.change:
                problems.append(Discrepancy(r.user_id, r.credit_type, f"lot {r.id} remaining", r.remaining,
                                            r.amount + r.change))
            if r.held != r.receipts:
                problems.append(Discrepancy(r.user_id, r.credit_type, f"lot {r.id} held (open holds' receipts)",
                                            r.held, r.receipts))
        receipts = select(R.c.hold_id, func.sum(R.c.amount).label("amount"), func.sum(R.c.settled).label("settled"),
                          func.sum(R.c.refunded).label("refunded")).group_by(R.c.hold_id).subquery()
        for r in session.execute(
            select(HOLDS.c.id, HOLDS.c.user_id, HOLDS.c.credit_type, HOLDS.c.status, HOLDS.c.amount,
                   HOLDS.c.settled_amount, HOLDS.c.refunded_amount,
                   func.coalesce(receipts.c.amount, 0).label("drawn"),
                   func.coalesce(receipts.c.settled, 0).label("settled"),
                   func.coalesce(receipts.c.refunded, 0).label("refunded"))
            .outerjoin(receipts, receipts.c.hold_id == HOLDS.c.id)
            .where(or_(HOLDS.c.status == "open", receipts.c.hold_id.is_not(None)))
            .order_by(HOLDS.c.id)
        ):
            if r.amount != r.drawn:
                problems.append(Discrepancy(r.user_id, r.credit_type, f"hold {r.id} receipt", r.drawn, r.amount))
            if r.settled != r.settled_amount:
                problems.append(Discrepancy(r.user_id, r.credit_type, f"hold {r.id} settled from lots", r.settled,
                                            r.settled_amount))
            if r.refunded != r.refunded_amount:
                problems.append(Discrepancy(r.user_id, r.credit_type, f"hold {r.id} refunded to lots", r.refunded,
                                            r.refunded_amount))
        return problems

    def _double_charges(self, session) -> list[Discrepancy]:
        """Two settled holds for one user and Idempotency-Key, the second taken while the first's
        answer was still kept: one request charged twice."""
        first, second = HOLDS.alias("first"), HOLDS.alias("second")
        pairs = session.execute(
            select(first.c.user_id, first.c.credit_type, first.c.idempotency_key, first.c.id,
                   first.c.closed_at, second.c.id.label("second_id"), second.c.created_at)
            .join(second, and_(second.c.user_id == first.c.user_id,
                               second.c.idempotency_key == first.c.idempotency_key,
                               second.c.id > first.c.id))
            .where(first.c.idempotency_key.is_not(None), first.c.status == "settled",
                   second.c.status == "settled")
            .order_by(first.c.id, second.c.id)
        ).all()
        kept = timedelta(seconds=self.idempotency_ttl_seconds)
        return [
            Discrepancy(p.user_id, p.credit_type,
                        f"charges for Idempotency-Key {p.idempotency_key!r} (holds {p.id} and {p.second_id})",
                        2, 1)
            for p in pairs if p.closed_at is None or p.created_at < p.closed_at + kept
        ]

    # --- internals (all run inside the caller's transaction) -----------------------------

    def _balance(self, session, user_id: int) -> Balance:
        rows = session.execute(sql.BALANCES, {"p_user": user_id}).all()
        if not rows:
            raise UnknownUser(f"no user with id {user_id}")
        return Balance(**{credit_type: available for credit_type, available in rows})

    def _lock_account(self, session, user_id: int, credit_type: CreditType):
        row = session.execute(sql.LOCK_ACCOUNT, {"p_user": user_id, "p_type": credit_type.value}).one_or_none()
        if row is None:
            raise UnknownUser(f"no user with id {user_id}")
        return row

    def _take_available(self, session, user_id, credit_type, amount: int, *, held_change: int):
        """The one conditional write: None when `amount` is more than is available."""
        return session.execute(sql.TAKE_AVAILABLE, {
            "p_user": user_id, "p_type": credit_type.value, "p_amount": amount, "p_held": held_change,
        }).one_or_none()

    def _move(self, session, user_id, credit_type, available_change: int, held_change: int):
        return session.execute(sql.MOVE, {
            "p_user": user_id, "p_type": credit_type.value, "p_available": available_change,
            "p_held": held_change,
        }).one()

    def _charge(self, session, user_id, credit_type, amount: int, reason) -> None:
        self._lock_account(session, user_id, credit_type)
        now = utcnow()
        self._expire_lots(session, user_id, credit_type, now)
        row = self._take_available(session, user_id, credit_type, amount, held_change=0)
        if row is None:
            available = self._lock_account(session, user_id, credit_type).available
            raise InsufficientCredits(amount, available, credit_type.value)
        parts = lots.allocate(session, user_id, credit_type.value, amount, now, hold=False)
        self._rows(session, user_id, credit_type, [("charge", p.lot_id, -p.amount, 0) for p in parts], row,
                   reason=reason)

    @retry_conflicts
    def _charge_now(self, user_id, credit_type, amount: int, reason) -> Balance:
        with atomic() as session:
            self._charge(session, user_id, credit_type, amount, reason)
            return self._balance(session, user_id)

    @retry_conflicts
    def _add_charge(self, hold: Hold, amount: int, reason: str | None) -> None:
        """Count `amount` against the hold, first holding more if it is not enough."""
        if hold.closed:
            raise ValueError("the hold is already closed")
        total = hold.pending + amount
        extra = total - hold.amount
        if extra > 0:
            user_id, credit_type = hold.user_id, hold.credit_type
            with atomic() as session:
                self._lock_account(session, user_id, credit_type)
                now = utcnow()
                self._expire_lots(session, user_id, credit_type, now)
                grown = session.execute(sql.GROW_HOLD, {"p_hold": hold.hold_id, "p_extra": extra}).rowcount
                if grown:
                    row = self._take_available(session, user_id, credit_type, extra, held_change=extra)
                    if row is None:
                        available = self._lock_account(session, user_id, credit_type).available
                        raise InsufficientCredits(total, available + hold.amount, credit_type.value)
                    parts = lots.allocate(session, user_id, credit_type.value, extra, now, hold=True)
                    lots.record_receipt(session, hold.hold_id, parts, grow=True)
                    self._rows(session, user_id, credit_type,
                               [("hold", p.lot_id, -p.amount, p.amount) for p in parts], row,
                               hold_id=hold.hold_id)
                    hold.balance = replace(hold.balance, **{credit_type.value: row.available})
            hold.amount = total
        hold.pending = total
        hold.reason = reason or hold.reason

    def _settle(self, session, hold: Hold, held: int, charge: int, now: datetime) -> None:
        """Consume `charge` of an open hold and give back the rest, lot by lot."""
        self._end_hold(session, hold.user_id, hold.credit_type, hold.hold_id, charge,
                       "settled" if charge else "released", now, reason=hold.reason)

    def _expire_hold(self, session, user_id, credit_type, hold_id: int, amount: int, now: datetime) -> None:
        """End one open hold that is past its expiry: its credits go back, nothing is charged."""
        self._end_hold(session, user_id, credit_type, hold_id, 0, "expired", now)

    def _end_hold(self, session, user_id, credit_type, hold_id: int, charge: int, status: str, now: datetime,
                  reason: str | None = None):
        """Close a hold with `status`: its receipt is consumed for `charge` in spending order and
        the rest goes back to its lots (and lapses at once where the lot has expired). Returns
        the account's state after."""
        ending = lots.end_hold(session, hold_id, charge, now)
        session.execute(sql.CLOSE_HOLD, {"p_hold": hold_id, "p_status": status, "p_settled": charge, "p_now": now})
        back = "expire" if status == "expired" else "release"
        changes = (
            [("settle", p.lot_id, 0, -p.amount) for p in ending.settled]
            + [(back, p.lot_id, p.amount, -p.amount) for p in ending.released]
            + [("expire", p.lot_id, 0, -p.amount) for p in ending.lapsed]
            + [("void", p.lot_id, 0, -p.amount) for p in ending.voided]
        )
        row = self._move(session, user_id, credit_type, sum(c[2] for c in changes), sum(c[3] for c in changes))
        self._rows(session, user_id, credit_type, changes, row, hold_id=hold_id, reason=reason)
        return row

    def _expire_lots(self, session, user_id, credit_type, now: datetime) -> None:
        """Write off the free part of this account's lots that are past their expiry."""
        due = lots.expire_due(session, user_id, credit_type.value, now)
        if due:
            row = self._move(session, user_id, credit_type, -sum(p.amount for p in due), 0)
            self._rows(session, user_id, credit_type, [("expire", p.lot_id, -p.amount, 0) for p in due], row,
                       reason="lot expired")

    def _expire_holds(self, session, user_id, credit_type, now: datetime, excluding: int | None = None):
        """Give back this account's expired holds: how many, and the account's state after (None
        when there were none)."""
        expired = session.execute(sql.EXPIRED_HOLDS, {
            "p_user": user_id, "p_type": credit_type.value, "p_now": now, "p_exclude": excluding or 0,
        }).all()
        row = None
        for (hold_id,) in expired:
            row = self._end_hold(session, user_id, credit_type, hold_id, 0, "expired", now)
        return len(expired), row

    def _grant(self, session, user_id, amount, credit_type, reason, reference, lot: dict) -> Grant:
        if reference is not None:
            original = session.execute(
                select(LEDGER).where(LEDGER.c.user_id == user_id, LEDGER.c.reference == reference)
            ).mappings().one_or_none()
            if original is not None:
                if (original["amount"], original["credit_type"]) != (amount, credit_type.value):
                    raise ReferenceConflict(
                        f"reference {reference!r} was used for a grant of {original['amount']} "
                        f"{original['credit_type']}"
                    )
                now = utcnow()
                original_lot = lots.one(session, original["lot_id"]) if original["lot_id"] else None
                return Grant(
                    id=original["id"], user_id=user_id, amount=amount, credit_type=credit_type,
                    reason=original["reason"], reference=reference,
                    balance=self._spendable(session, user_id, now), created=False,
                    lot_id=original["lot_id"], lot=lots.describe(original_lot, now) if original_lot else None,
                )
        row = session.execute(sql.MOVE, {
            "p_user": user_id, "p_type": credit_type.value, "p_available": amount, "p_held": 0,
        }).one_or_none()
        if row is None:
            raise UnknownUser(f"no user with id {user_id}")
        now = utcnow()
        lot_id = lots.create(session, user_id=user_id, credit_type=credit_type.value, amount=amount,
                             reason=reason, reference=reference, now=now, **lot)
        entry_id = self._ledger(session, user_id, credit_type, "grant", amount, 0, row,
                                reason=reason, reference=reference, lot_id=lot_id)
        return Grant(
            id=entry_id, user_id=user_id, amount=amount, credit_type=credit_type, reason=reason,
            reference=reference, balance=self._spendable(session, user_id, now), created=True, lot_id=lot_id,
            lot=lots.describe(lots.one(session, lot_id), now),
        )

    def _ledger(
        self, session, user_id, credit_type, kind, amount, held_change, after,
        *, hold_id=None, reason=None, reference=None, lot_id=None,
    ) -> int:
        balance_after, held_after = after
        return session.execute(sql.INSERT_LEDGER, {
            "user_id": user_id, "credit_type": credit_type.value, "kind": kind, "amount": amount,
            "held_change": held_change, "balance_after": balance_after, "held_after": held_after,
            "hold_id": hold_id, "lot_id": lot_id, "reason": reason, "reference": reference,
            "created_at": utcnow(),
        }).scalar_one()

    def _rows(self, session, user_id, credit_type, changes, after, *, hold_id=None, reason=None) -> None:
        """One ledger row per (kind, lot, change of available, change of held), in order, ending at
        `after`, the account's state that the caller's single account update left."""
        available = after[0] - sum(c[2] for c in changes)
        held = after[1] - sum(c[3] for c in changes)
        for kind, lot_id, d_available, d_held in changes:
            available, held = available + d_available, held + d_held
            self._ledger(session, user_id, credit_type, kind, d_available, d_held, (available, held),
                         hold_id=hold_id, reason=reason, lot_id=lot_id)

    def _spendable(self, session, user_id: int, now: datetime) -> Balance:
        """The balance less what lots past their expiry still count (until a write expires them)."""
        balance = self._balance(session, user_id)
        due = lots.due_by_account(session, user_id, now)
        if not due:
            return balance
        return Balance(**{t.value: getattr(balance, t.value) - due.get(t.value, 0) for t in CreditType})


credit_service = CreditService()


def _refuse(outcome: str, user_id: int) -> None:
    """Raise what a procedure's refusal means (nothing was changed)."""
    if outcome == "unknown_user":
        raise UnknownUser(f"no user with id {user_id}")
    if outcome == "revoked":
        raise SessionRevoked("the token's login session was revoked")


def _no_session_check(session_id: str | None) -> None:
    if session_id is not None:
        raise ValueError("the session check is part of the ledger call on PostgreSQL only (see checks_sessions)")


def open_accounts(session, user_id: int, grant: Balance, reason: str,
                  expires_at: datetime | None = None) -> None:
    """Open both balances of a new user inside the caller's transaction, granting `grant` as
    signup lots (that expire at `expires_at`, or never)."""
    now = utcnow()
    for credit_type in CreditType:
        amount = getattr(grant, credit_type.value)
        session.execute(
            insert(ACCOUNTS).values(user_id=user_id, credit_type=credit_type.value, available=amount, held=0)
        )
        if amount:
            lot_id = lots.create(session, user_id=user_id, credit_type=credit_type.value, amount=amount,
                                 priority=DEFAULT_PRIORITY, expires_at=expires_at, source="signup",
                                 reason=reason, reference=None, now=now)
            credit_service._ledger(session, user_id, credit_type, "grant", amount, 0, (amount, 0),
                                   reason=reason, lot_id=lot_id)
