"""Subscriptions' and invoices' events from the payments inbox (stored there first, as every
provider event), applied exactly once, in any order.

Applying takes the subscription's lock first, then the event's, then (through the ledger's
writes) the wallet's. An event naming a subscription we do not know yet (an invoice that came
before its checkout's completion, without our metadata) is `unmatched`; one that needs a state
the subscription has not reached (an upgrade's invoice before the first) is `deferred`; both are
kept, counted, and applied by the move that makes them possible.
"""
from sqlalchemy import or_, select

from ..ledger import credit_service
from ..ledger.transactions import atomic, retry_conflicts
from ..payments.facts import Facts
from ..payments.inbox import EVENTS, WAITING, facts_of, mark
from . import machine as machines
from .machine import SUBSCRIPTIONS, Machine, Outcome


class SubscriptionEvents:
    def __init__(self, machine: Machine, provider=None, *, logger=None):
        self.machine = machine
        self.provider = provider
        self._logger = logger

    def apply_event(self, event_row: int) -> str:
        outcome = self._apply(event_row)
        if isinstance(outcome, Outcome) and outcome.superseded and self.provider is not None:
            # Two checkouts of one account both paid: the one replaced stops billing (its period,
            # paid, runs out; no provider call is made inside a transaction).
            try:
                self.provider.cancel_subscription(outcome.superseded, at_period_end=True)
            except Exception:
                if self._logger:
                    self._logger.exception("subscription %s replaced: not canceled at the provider; cancel it there",
                                           outcome.superseded)
        return outcome.status if isinstance(outcome, Outcome) else outcome

    @retry_conflicts
    def _apply(self, event_row: int):
        with atomic(write=False) as session:
            event = session.execute(select(EVENTS).where(EVENTS.c.id == event_row)).one()
        if event.status != "received":
            return "duplicate"
        facts = facts_of(event)
        found = event.subscription_id or self._by_provider(facts.provider_subscription)
        with credit_service.writing() as writes:
            session = writes.session
            sub = machines.lock(session, found) if found is not None else None
            event = session.execute(select(EVENTS).where(EVENTS.c.id == event_row).with_for_update()).one()
            if event.status != "received":
                return "duplicate"  # another delivery applied it while this one waited
            if sub is None and facts.provider_subscription:
                # Its checkout may have completed since the read above: look again, locked.
                again = self._by_provider(facts.provider_subscription, session)
                sub = machines.lock(session, again) if again is not None else None
            if sub is None or not _ours(sub, facts):
                mark(session, event_row, "unmatched", "no subscription of ours", subscription_id=None)
                return "unmatched"
            outcome = self.machine.apply(writes, sub, facts)
            mark(session, event_row, outcome.status, outcome.detail, subscription_id=sub.id)
            if outcome.status == "applied":
                self._release_waiting(writes, sub.id)
        return outcome

    def release(self, subscription_id: int) -> None:
        """Apply what waits for this subscription and can be applied now (a period begun since)."""
        with atomic(write=False) as session:
            waiting = session.execute(select(EVENTS.c.id).where(
                EVENTS.c.subscription_id == subscription_id, EVENTS.c.status.in_(WAITING)).limit(1)).first()
        if waiting is not None:
            self._release(subscription_id)

    @retry_conflicts
    def _release(self, subscription_id: int) -> None:
        with credit_service.writing() as writes:
            self._release_waiting(writes, subscription_id)

    def _release_waiting(self, writes, subscription_id: int) -> None:
        """After a move: apply, oldest first, what was waiting for it, until nothing more moves."""
        session = writes.session
        while True:
            sub = machines.lock(session, subscription_id)
            waiting = EVENTS.c.subscription_id == subscription_id
            if sub.provider_subscription:
                waiting = or_(waiting, EVENTS.c.provider_subscription == sub.provider_subscription)
            rows = session.execute(select(EVENTS).where(EVENTS.c.status.in_(WAITING), waiting)
                                   .order_by(EVENTS.c.created, EVENTS.c.id).with_for_update()).all()
            moved = False
            for row in rows:
                facts = facts_of(row)
                if not _ours(sub, facts):
                    continue
                outcome = self.machine.apply(writes, sub, facts)
                if outcome.status != "deferred" or row.status != "deferred":
                    mark(session, row.id, outcome.status, outcome.detail, subscription_id=sub.id)
                if outcome.status == "applied":
                    moved = True
                    break  # the subscription changed: read it again before the next
            if not moved:
                return

    @staticmethod
    def _by_provider(provider_subscription: str | None, session=None) -> int | None:
        if not provider_subscription:
            return None
        query = select(SUBSCRIPTIONS.c.id).where(SUBSCRIPTIONS.c.provider_subscription == provider_subscription)
        if session is not None:
            return session.execute(query).scalar()
        with atomic(write=False) as reading:
            return reading.execute(query).scalar()


def _ours(sub, facts: Facts) -> bool:
    """An event about this subscription's own checkout and provider subscription: another app on
    the same Stripe account could name subscription 12 too, but not our checkout's id."""
    if facts.checkout_id and sub.checkout_id and facts.checkout_id != sub.checkout_id:
        return False
    if facts.provider_subscription and sub.provider_subscription \
            and facts.provider_subscription != sub.provider_subscription:
        return False
    return True
