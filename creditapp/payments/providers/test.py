"""The built-in test provider: a checkout page the app serves itself, and the events Stripe would
send for what its buttons do, signed with Stripe's scheme and read by the same reader, inbox and
state machine as Stripe's. Its checkouts live in the app's database (`test_checkouts`), so every
worker and host sees them. Never in production (config refuses it)."""
import json
import secrets
from types import SimpleNamespace
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from sqlalchemy import insert, select, update

from ...ledger.clock import utcnow
from ...ledger.transactions import atomic
from ..tables import TestCheckout
from . import stripe_objects
from .base import Checkout, CheckoutOrder, CheckoutState, LivemodeMismatch, ProviderEvent
from .test_billing import TestBilling

CHECKOUTS = TestCheckout.__table__
# What a buyer, a bank or an administrator at Stripe can do to a checkout.
ACTIONS = ("pay", "transfer", "settle", "decline", "refund", "dispute", "dispute-won", "dispute-lost")


class UnknownCheckout(LookupError):
    pass


class ActionNotAllowed(ValueError):
    pass


def _with(row: SimpleNamespace, **changes) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(row), **changes})


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


class TestProvider(TestBilling):
    __test__ = False  # not a test class, whatever its name
    name = "test"
    livemode = False

    def __init__(self, webhook_secret: str, page_url: Callable[[str], str]):
        self.webhook_secret = webhook_secret
        self._page_url = page_url

    def create_checkout(self, order: CheckoutOrder) -> Checkout:
        with atomic() as session:
            row = session.execute(select(CHECKOUTS).where(CHECKOUTS.c.idempotency_key == order.idempotency_key)).first()
            if row is None:
                checkout_id = f"cs_test_{secrets.token_hex(12)}"
                session.execute(insert(CHECKOUTS).values(
                    id=checkout_id, idempotency_key=order.idempotency_key, reference=order.reference,
                    name=order.name, amount=order.amount, currency=order.currency, status="open",
                    payment_status="unpaid", payment_intent=None, amount_refunded=0,
                    success_url=order.success_url, cancel_url=order.cancel_url,
                    metadata_json=json.dumps(order.metadata), created_at=utcnow(), expires_at=order.expires_at,
                    **self._mode(order)))
                expires_at = order.expires_at
            else:
                checkout_id, expires_at = row.id, row.expires_at
        return Checkout(id=checkout_id, url=self._page_url(checkout_id), expires_at=expires_at)

    @staticmethod
    def _mode(order: CheckoutOrder) -> dict:
        if order.recurring is None:
            return {"mode": "payment", "subscription_json": None}
        period = order.recurring.interval or "seconds"
        return {"mode": "subscription", "subscription_json": json.dumps({
            "plan": order.recurring.plan, "period": period, "period_seconds": order.recurring.interval_seconds})}

    def find(self, checkout_id: str):
        with atomic(write=False) as session:
            row = session.execute(select(CHECKOUTS).where(CHECKOUTS.c.id == checkout_id)).first()
        if row is None:
            raise UnknownCheckout(checkout_id)
        return row

    def retrieve_checkout(self, checkout_id: str) -> CheckoutState:
        return stripe_objects.checkout_state(self._session(self.find(checkout_id)))

    def parse_event(self, body: bytes, headers: Mapping[str, str]) -> ProviderEvent:
        payload = stripe_objects.verify(body, headers.get("Stripe-Signature"), [self.webhook_secret])
        if payload.get("livemode"):
            raise LivemodeMismatch("a live-mode event for the test provider")
        return stripe_objects.event(payload, body)

    def act(self, checkout_id: str, action: str, amount: int | None = None) -> list[tuple[bytes, dict]]:
        """Do what a buyer (or the bank, or an administrator at Stripe) would, and answer the events
        Stripe would send for it: (body, headers) pairs, signed, to give to the inbox."""
        with atomic() as session:
            row = session.execute(select(CHECKOUTS).where(CHECKOUTS.c.id == checkout_id).with_for_update()).first()
            if row is None:
                raise UnknownCheckout(checkout_id)
            changes, events = self._move(SimpleNamespace(**row._mapping), action, amount)
            if events and events[0][0] == "subscribe":
                events = self._subscribe(session, row, events[0][1])
            if changes:
                session.execute(update(CHECKOUTS).where(CHECKOUTS.c.id == checkout_id).values(**changes))
        return [self._signed(kind, obj) for kind, obj in events]

    def _move(self, row, action: str, amount: int | None) -> tuple[dict, list[tuple[str, dict]]]:
        status = self._status(row)
        if row.mode == "subscription":
            return self._move_subscription_checkout(row, status, action)
        intent = row.payment_intent or f"pi_test_{secrets.token_hex(12)}"
        after = _with(row, payment_intent=intent)
        if action in ("pay", "transfer"):
            self._must(status == "open", f"{action}: the checkout is {status}")
            paid = "paid" if action == "pay" else "unpaid"
            after = _with(after, status="complete", payment_status=paid)
            return ({"status": "complete", "payment_status": paid, "payment_intent": intent},
                    [("checkout.session.completed", self._session(after))])
        if action == "settle":
            self._must(status == "complete" and row.payment_status == "unpaid", "settle: no transfer is pending")
            after = _with(after, payment_status="paid")
            return ({"payment_status": "paid"}, [("checkout.session.async_payment_succeeded", self._session(after))])
        if action == "decline":
            if status == "complete" and row.payment_status == "unpaid":  # the transfer bounced
                return {}, [("checkout.session.async_payment_failed", self._session(after))]
            self._must(status == "open", f"decline: the checkout is {status}")
            # A declined card leaves the session open; the buyer gives up and it lapses.
            after = _with(after, status="expired")
            return {"status": "expired"}, [("checkout.session.expired", self._session(after))]
        self._must(status == "complete" and row.payment_status == "paid", f"{action}: nothing was paid")
        charge = f"ch_{intent[3:]}"
        if action == "refund":
            refunded = min(row.amount, row.amount_refunded + (amount if amount is not None else row.amount))
            self._must(amount is None or amount >= 1, "refund: the amount must be at least 1")
            self._must(refunded > row.amount_refunded, "refund: everything was refunded already")
            return ({"amount_refunded": refunded}, [("charge.refunded", stripe_objects.charge_object(
                id=charge, payment_intent=intent, amount=row.amount, amount_refunded=refunded, currency=row.currency))])
        kind, dispute_status = {"dispute": ("charge.dispute.created", "needs_response"),
                                "dispute-won": ("charge.dispute.closed", "won"),
                                "dispute-lost": ("charge.dispute.closed", "lost")}[action]
        return {}, [(kind, stripe_objects.dispute_object(
            id=f"dp_{intent[3:]}", charge=charge, payment_intent=intent, status=dispute_status, amount=row.amount,
            currency=row.currency))]

    def _move_subscription_checkout(self, row, status: str, action: str):
        if action == "pay":
            self._must(status == "open", f"pay: the checkout is {status}")
            # The subscription is made in act()'s transaction, with the checkout's row locked.
            return {"status": "complete", "payment_status": "paid"}, [("subscribe", _with(
                row, status="complete", payment_status="paid"))]
        if action in ("decline", "expire"):
            self._must(status == "open", f"{action}: the checkout is {status}")
            after = _with(row, status="expired")
            return {"status": "expired"}, [("checkout.session.expired", self._session(after))]
        raise ActionNotAllowed(f"{action}: not for a subscription's checkout")

    @staticmethod
    def _must(condition: bool, why: str) -> None:
        if not condition:
            raise ActionNotAllowed(why)

    @staticmethod
    def _status(row) -> str:
        if row.status == "open" and row.expires_at <= utcnow():
            return "expired"  # as Stripe: a session past its expires_at can no longer be paid
        return row.status

    def _session(self, row) -> dict:
        return stripe_objects.session_object(
            id=row.id, url=self._page_url(row.id), status=self._status(row), payment_status=row.payment_status,
            amount=row.amount, currency=row.currency, payment_intent=row.payment_intent, reference=row.reference,
            metadata=json.loads(row.metadata_json), expires_at=_ts(row.expires_at), success_url=row.success_url,
            cancel_url=row.cancel_url, created=_ts(row.created_at), mode=row.mode)

    def _signed(self, kind: str, obj: dict) -> tuple[bytes, dict]:
        body = stripe_objects.event_body(f"evt_test_{secrets.token_hex(12)}", kind, obj,
                                         created=_ts(datetime.now(timezone.utc)))
        return body, {"Stripe-Signature": stripe_objects.sign(body, self.webhook_secret)}
