"""The inbox of provider events: every verified event is stored (unique per provider and event
id) before it is applied, and applied exactly once, in any order.

Applying takes the purchase's lock first, then the event's, then (through the ledger's writes)
the wallet's: one order everywhere, so 50 copies of one event at once, the buyer's return page
and reconcile serialize on the purchase and only the first moves it. A move that comes before the
state it needs is `deferred`; an event naming a payment we do not know yet is `unmatched`; both
are kept and applied by the move that makes them possible. A duplicate changes nothing.
"""
import json
from dataclasses import fields
from datetime import datetime
from typing import Protocol

from sqlalchemy import insert, or_, select, update

from ..ledger import credit_service
from ..ledger.clock import utcnow
from ..ledger.transactions import atomic, retry_conflicts
from . import machine
from .facts import SUBSCRIPTION_MOVES, Facts, of_event
from .providers import PaymentProvider, ProviderEvent
from .tables import PaymentEvent

EVENTS = PaymentEvent.__table__
PURCHASES = machine.PURCHASES
WAITING = ("deferred", "unmatched")
FACT_FIELDS = {f.name for f in fields(Facts)}


class Observer(Protocol):
    def purchase_moved(self, purchase, status: str) -> None: ...
    def money_back(self, currency: str, amount: int) -> None: ...
    def payment_event(self, kind: str, outcome: str) -> None: ...
    def amount_mismatch(self, purchase, detail: str) -> None: ...


class SubscriptionApplier(Protocol):
    def apply_event(self, event_row: int) -> str: ...


class Inbox:
    def __init__(self, provider: PaymentProvider, *, logger=None):
        self.provider = provider
        self.observer: Observer | None = None
        # What applies subscriptions' and invoices' events (the plans package), when there are plans.
        self.subscriptions: SubscriptionApplier | None = None
        self._logger = logger

    def receive(self, body: bytes, headers) -> str:
        """Verify, store, apply. Raises InvalidSignature or LivemodeMismatch (nothing stored);
        otherwise the event is stored when this returns, whatever applying it did: `applied`,
        `deferred`, `unmatched`, `ignored`, `duplicate`, or `stored` (applying failed: reconcile
        applies it)."""
        event = self.provider.parse_event(body, headers)
        facts = of_event(event)
        event_row, new = self._store(event, facts)
        outcome = "stored"
        try:
            outcome = self.apply_event(event_row)
        except Exception:
            if self._logger:
                self._logger.exception("payment event %s stored, not applied yet", event.id)
        self._observe("event", event.type, outcome)
        return outcome

    @retry_conflicts
    def _store(self, event: ProviderEvent, facts: Facts) -> tuple[int, bool]:
        with atomic() as session:
            dialect = session.get_bind().dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as upsert
            else:
                from sqlalchemy.dialects.sqlite import insert as upsert
            row_id = session.execute(upsert(EVENTS).values(
                provider=self.provider.name, event_id=event.id, type=event.type, livemode=event.livemode,
                created=event.created, received_at=utcnow(), status="received", purchase_id=facts.purchase_id,
                payment_intent=facts.payment_intent, subscription_id=facts.subscription_id,
                provider_subscription=facts.provider_subscription, facts=json.dumps(facts.as_dict()),
                body=event.body.decode("utf-8"),
            ).on_conflict_do_nothing(index_elements=["provider", "event_id"]).returning(EVENTS.c.id)).scalar()
            if row_id is not None:
                return row_id, True
            return session.execute(select(EVENTS.c.id).where(
                EVENTS.c.provider == self.provider.name, EVENTS.c.event_id == event.id)).scalar_one(), False

    @retry_conflicts
    def apply_event(self, event_row: int) -> str:
        """Apply one stored event; what it did, or `duplicate` when it was applied (or set aside
        to wait) before."""
        with atomic(write=False) as session:
            event = session.execute(select(EVENTS).where(EVENTS.c.id == event_row)).one()
        if event.status != "received":
            return "duplicate"
        facts = _facts(event)
        if facts.move in SUBSCRIPTION_MOVES:
            if self.subscriptions is not None:
                return self.subscriptions.apply_event(event_row)
            with atomic() as session:
                mark(session, event_row, "ignored", "no plans here")
            return "ignored"
        purchase_id = event.purchase_id or self._by_intent(facts.payment_intent)
        seen: list = []  # what to tell the observer once the transaction has committed
        with credit_service.writing() as writes:
            purchase = machine.lock(writes.session, purchase_id) if purchase_id is not None else None
            event = writes.session.execute(select(EVENTS).where(EVENTS.c.id == event_row).with_for_update()).one()
            if event.status != "received":
                return "duplicate"  # another delivery applied it while this one waited for the lock
            if facts.move == "ignore":
                self._mark(writes.session, event_row, "ignored", f"{event.type}: nothing to do")
                return "ignored"
            if purchase is None and facts.payment_intent:
                # Its payment may have been recorded since the read above, its waiting events
                # released already: look again now that this event is locked.
                found = writes.session.execute(select(PURCHASES.c.id).where(
                    PURCHASES.c.payment_intent == facts.payment_intent)).scalar()
                purchase = machine.lock(writes.session, found) if found is not None else None
            if purchase is None or not _ours(purchase, facts):
                self._mark(writes.session, event_row, "unmatched", "no purchase of ours", purchase_id=None)
                return "unmatched"
            outcome = self._move(writes, purchase, facts, seen)
            self._mark(writes.session, event_row, outcome.status, outcome.detail, purchase_id=purchase.id)
            if outcome.status == "applied":
                self._release_waiting(writes, purchase.id, seen)
        self._tell(seen)
        return outcome.status

    @retry_conflicts
    def apply_facts(self, purchase_id: int, facts: Facts) -> str:
        """Apply what the provider says of a checkout now (the return page, reconcile): the same
        moves as its events, so whichever comes first moves the purchase and the rest change nothing."""
        seen: list = []
        with credit_service.writing() as writes:
            purchase = machine.lock(writes.session, purchase_id)
            if purchase is None or not _ours(purchase, facts):
                return "unmatched"
            outcome = self._move(writes, purchase, facts, seen)
            if outcome.status == "applied":
                self._release_waiting(writes, purchase.id, seen)
        self._tell(seen)
        return outcome.status

    def apply_stored(self, received_before: datetime) -> int:
        """Apply the events stored but never applied (the process died between the two)."""
        with atomic(write=False) as session:
            rows = session.execute(select(EVENTS.c.id).where(
                EVENTS.c.status == "received", EVENTS.c.received_at <= received_before)
                .order_by(EVENTS.c.created, EVENTS.c.id)).scalars().all()
        return sum(self.apply_event(row) == "applied" for row in rows)

    @staticmethod
    def _move(writes, purchase, facts: Facts, seen: list) -> machine.Outcome:
        outcome = machine.apply(writes, purchase, facts)
        if outcome.detail.startswith("amount_mismatch"):
            seen.append(("mismatch", purchase, outcome.detail))
        if outcome.status == "applied":
            after = machine.lock(writes.session, purchase.id)
            if after.status != purchase.status:
                seen.append(("purchase_moved", purchase, after.status))
            if after.refunded > purchase.refunded:
                seen.append(("money_back", purchase.currency, after.refunded - purchase.refunded))
            elif after.status == "dispute_lost":
                seen.append(("money_back", purchase.currency, purchase.price - purchase.refunded))
        return outcome

    def _release_waiting(self, writes, purchase_id: int, seen: list) -> None:
        """After a move: apply, oldest first, what was waiting for it (refunds and disputes that
        came before the payment, events of its payment intent that came before the intent was
        known), until nothing more moves."""
        session = writes.session
        while True:
            purchase = machine.lock(session, purchase_id)
            waiting = or_(EVENTS.c.purchase_id == purchase_id, EVENTS.c.payment_intent == purchase.payment_intent) \
                if purchase.payment_intent else EVENTS.c.purchase_id == purchase_id
            rows = session.execute(select(EVENTS).where(EVENTS.c.status.in_(WAITING), waiting)
                                   .order_by(EVENTS.c.created, EVENTS.c.id).with_for_update()).all()
            moved = False
            for row in rows:
                facts = _facts(row)
                if not _ours(purchase, facts):
                    continue
                outcome = self._move(writes, purchase, facts, seen)
                if outcome.status != "deferred" or row.status != "deferred":
                    self._mark(session, row.id, outcome.status, outcome.detail, purchase_id=purchase_id)
                if outcome.status == "applied":
                    moved = True
                    break  # the purchase changed: read it again before the next
            if not moved:
                return

    def _by_intent(self, payment_intent: str | None) -> int | None:
        if not payment_intent:
            return None
        with atomic(write=False) as session:
            return session.execute(select(PURCHASES.c.id).where(PURCHASES.c.payment_intent == payment_intent)).scalar()

    @staticmethod
    def _mark(session, event_row: int, status: str, detail: str, **more) -> None:
        mark(session, event_row, status, detail, **more)

    def _observe(self, what: str, *args) -> None:
        self._tell([(what, *args)])

    def _tell(self, seen: list) -> None:
        if self.observer is None:
            return
        for what, *args in seen:
            if what == "mismatch" and self._logger:
                self._logger.warning("purchase %s granted nothing: %s", args[0].id, args[1])
            {"event": self.observer.payment_event, "purchase_moved": self.observer.purchase_moved,
             "money_back": self.observer.money_back, "mismatch": self.observer.amount_mismatch}[what](*args)


def mark(session, event_row: int, status: str, detail: str, **more) -> None:
    """What applying a stored event did."""
    values = {"status": status, "outcome": detail[:64], **more}
    if status in ("applied", "ignored"):
        values["applied_at"] = utcnow()
    session.execute(update(EVENTS).where(EVENTS.c.id == event_row).values(**values))


def facts_of(event) -> Facts:
    return _facts(event)


def _facts(event) -> Facts:
    return Facts(**{key: value for key, value in json.loads(event.facts).items() if key in FACT_FIELDS})


def _ours(purchase, facts: Facts) -> bool:
    """An event about this purchase's own checkout and payment: another app on the same Stripe
    account could name purchase 12 too, but not our checkout's id."""
    if facts.checkout_id and purchase.checkout_id and facts.checkout_id != purchase.checkout_id:
        return False
    if facts.payment_intent and purchase.payment_intent and facts.payment_intent != purchase.payment_intent:
        return False
    return True
