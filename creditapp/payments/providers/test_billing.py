"""The test provider's subscriptions: what Stripe Billing does with a checkout in `subscription`
mode, played in the app's database and told to the app through the same signed events.

Stripe renews a subscription by itself at each period's end; the test provider renews when it is
asked about it after the end (`advance`: the subscription read and `flask plans reconcile` ask),
with one invoice for the period holding now, as Stripe would have sent last. Its page's buttons
make the next renewals fail (then pay them), cancel at the period's end, or end it now.
"""
import json
import secrets
from datetime import datetime

from sqlalchemy import insert, select, update

from ...ledger import periods
from ...ledger.clock import utcnow
from ...ledger.transactions import atomic
from ..tables import TestSubscription
from . import stripe_objects

SUBSCRIPTIONS = TestSubscription.__table__

SUBSCRIPTION_ACTIONS = ("fail-renewals", "pay-renewals", "cancel", "resume", "end")


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


class TestBilling:
    __test__ = False
    deliver = None  # (body, headers) -> None: the app's inbox, set when the app starts

    def _subscriptions(self):
        return SUBSCRIPTIONS

    def _send(self, events: list[tuple[bytes, dict]]) -> None:
        for body, headers in events:
            self.deliver(body, headers)

    def find_subscription(self, subscription_id: str):
        with atomic(write=False) as session:
            return session.execute(select(self._subscriptions()).where(
                self._subscriptions().c.id == subscription_id)).first()

    def subscription_of_checkout(self, checkout_id: str):
        with atomic(write=False) as session:
            return session.execute(select(self._subscriptions()).where(
                self._subscriptions().c.checkout_id == checkout_id)).first()

    # --- what the app asks (the PaymentProvider interface) --------------------------------
    def expire_checkout(self, checkout_id: str) -> None:
        from .test import ActionNotAllowed
        try:
            self._send(self.act(checkout_id, "expire"))
        except ActionNotAllowed:
            pass  # not open any more (paid, or lapsed): nothing to close, as Stripe

    def cancel_subscription(self, subscription_id: str, *, at_period_end: bool) -> None:
        self._send(self.act_subscription(subscription_id, "cancel" if at_period_end else "resume"))

    def change_plan(self, subscription_id: str, recurring, amount: int, currency: str) -> None:
        """Stripe's `subscriptions.update` with `proration_behavior=always_invoice`: the price
        changes now; an upgrade's proration is invoiced (and, here, paid) at once."""
        table = self._subscriptions()
        now = utcnow()
        with atomic() as session:
            row = session.execute(select(table).where(table.c.id == subscription_id).with_for_update()).one()
            before = max(row.amount, row.period_paid or 0)  # down and up again: not charged twice
            if amount > before and row.fail_renewals:  # the card the page set to fail: Stripe refuses
                from .base import PaymentDeclined
                raise PaymentDeclined("the test card was declined (the subscription's renewals are set to fail)")
            metadata = {**json.loads(row.metadata_json), "creditapp_plan": recurring.plan}
            session.execute(update(table).where(table.c.id == row.id).values(
                plan=recurring.plan, amount=amount, metadata_json=json.dumps(metadata),
                period_paid=max(before, amount) if row.status == "active" else row.period_paid))
            row = session.execute(select(table).where(table.c.id == row.id)).one()
        events = [self._signed("customer.subscription.updated", self._subscription(row))]
        if amount > before and row.status == "active":  # a downgrade's credit goes to the next invoice
            left = (row.period_end - now) / (row.period_end - row.period_start)
            prorated = max(1, round((amount - before) * left))
            events.append(self._signed("invoice.paid", self._invoice(row, "subscription_update", now, row.period_end,
                                                                      amount=prorated)))
        self._send(events)

    def advance(self, subscription_id: str) -> None:
        """Renew what is due by now, as Stripe does at each period's end by itself."""
        self._send(self.act_subscription(subscription_id, "renew"))

    # --- what the buyer, the bank and Stripe's clock do -----------------------------------
    def _subscribe(self, session, row, after) -> list[tuple[str, dict]]:
        """A checkout in subscription mode, paid: the subscription, its first invoice paid."""
        terms = json.loads(row.subscription_json)
        now = utcnow()
        subscription_id = f"sub_test_{secrets.token_hex(12)}"
        table = self._subscriptions()
        session.execute(insert(table).values(
            id=subscription_id, checkout_id=row.id, reference=row.reference, metadata_json=row.metadata_json,
            plan=terms["plan"], amount=row.amount, currency=row.currency, period=terms["period"],
            period_seconds=terms["period_seconds"], status="active", period_start=now,
            period_end=periods.nth_start(now, terms["period"], terms["period_seconds"], 1),
            cancel_at_period_end=False, fail_renewals=False, open_invoice=None, period_paid=row.amount,
            created_at=now))
        sub = session.execute(select(table).where(table.c.id == subscription_id)).one()
        session_object = self._session(after)
        session_object["subscription"] = subscription_id
        return [("checkout.session.completed", session_object),
                ("customer.subscription.created", self._subscription(sub)),
                ("invoice.paid", self._invoice(sub, "subscription_create", sub.period_start, sub.period_end))]

    def act_subscription(self, subscription_id: str, action: str) -> list[tuple[bytes, dict]]:
        table = self._subscriptions()
        with atomic() as session:
            row = session.execute(select(table).where(table.c.id == subscription_id).with_for_update()).first()
            if row is None:
                from .test import UnknownCheckout
                raise UnknownCheckout(subscription_id)
            changes, events = self._subscription_move(row, action, utcnow())
            if changes:
                session.execute(update(table).where(table.c.id == subscription_id).values(**changes))
        return [self._signed(kind, obj) for kind, obj in events]

    def _subscription_move(self, row, action: str, now: datetime) -> tuple[dict, list]:
        from .test import ActionNotAllowed
        if row.status == "canceled":
            if action == "renew":
                return {}, []
            raise ActionNotAllowed(f"{action}: the subscription is canceled")
        if action == "fail-renewals":
            return {"fail_renewals": True}, []
        if action == "pay-renewals":
            events = []
            if row.status == "past_due" and row.open_invoice:  # the failed renewal, paid now
                events = [("invoice.paid", self._invoice(row, "subscription_cycle", row.period_start, row.period_end,
                                                         invoice=row.open_invoice))]
            return {"fail_renewals": False, "status": "active", "open_invoice": None,
                    "period_paid": row.amount if events else row.period_paid}, events
        if action in ("cancel", "resume"):
            after = {**row._mapping, "cancel_at_period_end": action == "cancel"}
            return {"cancel_at_period_end": action == "cancel"}, [
                ("customer.subscription.updated", self._subscription(_Row(after)))]
        if action == "end":
            after = _Row({**row._mapping, "status": "canceled"})
            return {"status": "canceled"}, [("customer.subscription.deleted", self._subscription(after, ended=now))]
        if action != "renew":
            raise ActionNotAllowed(f"unknown action {action!r}")
        if row.period_end > now or row.status == "past_due":
            return {}, []  # not due yet; a past-due one waits for its invoice to be paid
        if row.cancel_at_period_end:
            after = _Row({**row._mapping, "status": "canceled"})
            return {"status": "canceled"}, [("customer.subscription.deleted",
                                             self._subscription(after, ended=row.period_end))]
        # The period holding now (the ones missed in between would have lapsed unspent).
        start, end = periods.period_at(row.period_start, row.period, row.period_seconds, now)
        after = _Row({**row._mapping, "period_start": start, "period_end": end})
        if row.fail_renewals:
            invoice = f"in_test_{secrets.token_hex(12)}"
            after = _Row({**after._mapping, "status": "past_due", "open_invoice": invoice})
            return ({"period_start": start, "period_end": end, "status": "past_due", "open_invoice": invoice,
                     "period_paid": None},
                    [("invoice.payment_failed", self._invoice(after, "subscription_cycle", start, end, invoice=invoice,
                                                              paid=False)),
                     ("customer.subscription.updated", self._subscription(after))])
        return ({"period_start": start, "period_end": end, "period_paid": row.amount},
                [("invoice.paid", self._invoice(after, "subscription_cycle", start, end))])

    # --- Stripe's objects ---------------------------------------------------------------------
    def _subscription(self, row, ended: datetime | None = None) -> dict:
        return stripe_objects.subscription_object(
            id=row.id, status=row.status, price=f"price_test_{row.plan}", amount=row.amount, currency=row.currency,
            interval=row.period if row.period != "seconds" else "day", period_start=_ts(row.period_start),
            period_end=_ts(row.period_end), cancel_at_period_end=row.cancel_at_period_end,
            metadata=json.loads(row.metadata_json), created=_ts(row.created_at),
            ended_at=_ts(ended) if ended else None)

    def _invoice(self, row, reason: str, start: datetime, end: datetime, *, invoice: str | None = None,
                 amount: int | None = None, paid: bool = True) -> dict:
        return stripe_objects.invoice_object(
            id=invoice or f"in_test_{secrets.token_hex(12)}", subscription=row.id, billing_reason=reason,
            status="paid" if paid else "open", amount=row.amount if amount is None else amount,
            currency=row.currency, period_start=_ts(start), period_end=_ts(end), price=f"price_test_{row.plan}",
            metadata=json.loads(row.metadata_json))


class _Row:
    """A row with some of its values changed, read by attribute like the row itself."""

    def __init__(self, values):
        self._mapping = dict(values)
        self.__dict__.update(self._mapping)

