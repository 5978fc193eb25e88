"""A paid plan's invoices as Stripe sends them, signed, to `POST /api/webhooks/test`: twice, out
of order, failed between paid ones, for a subscription nobody knows, for the wrong amount; and
plan changes at the provider (an upgrade's proration, a downgrade). Both databases."""
import json
import secrets
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select, update

from creditapp.extensions import db
from creditapp.ledger import credit_service
from creditapp.ledger.tables import CreditLot
from creditapp.payments.providers import stripe_objects
from creditapp.ledger.transactions import atomic
from creditapp.payments.tables import PaymentEvent, TestSubscription
from creditapp.plans.tables import PlanInvoice
from creditapp.testing import ledger_is_clean
from tests.test_plans import MINUTE, PLANS, credits, path, plan_lots, subscription

LOTS = CreditLot.__table__
TEST_SUBSCRIPTIONS = TestSubscription.__table__


@pytest.fixture
def creditapp_settings():
    return {"PLANS": PLANS, "DEFAULT_PLAN": "free"}


@pytest.fixture
def whole_seconds(manual_clock):
    """Stripe's times are whole seconds: start on one, so periods fall where the test counts."""
    manual_clock.advance(-manual_clock.current.microsecond / 1e6 + 0.0)
    return manual_clock


class Paid:
    """A user on `pro` through the test checkout, and Stripe's events for its subscription."""

    def __init__(self, app, client, user, *, renews=False):
        self.client, self.user = client, user
        opened = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
        assert opened.status_code == 201, opened.json
        assert client.post(path(opened.json["checkout_url"]), data={"action": "pay"}).status_code == 303
        self.provider = app.extensions["creditapp.payments"].provider
        self.id = opened.json["pending"]["id"]
        described = subscription(client, user)
        assert described["status"] == "active" and described["id"] == self.id, described
        self.start = int(datetime.fromisoformat(described["period_start"]).timestamp())
        row = self.provider.subscription_of_checkout(path(opened.json["checkout_url"]).rsplit("/", 1)[1])
        self.sub, self.metadata = row.id, json.loads(row.metadata_json)
        # The test provider renews by itself when asked after a period's end; unless the test
        # plays Stripe's renewals itself, its own are put off.
        if renews:
            return
        with atomic() as session:
            session.execute(update(TEST_SUBSCRIPTIONS).where(TEST_SUBSCRIPTIONS.c.id == row.id).values(
                period_end=datetime(2100, 1, 1, tzinfo=timezone.utc)))

    def period(self, n: int) -> tuple[int, int]:
        return self.start + n * MINUTE, self.start + (n + 1) * MINUTE

    def invoice(self, n: int, *, invoice: str | None = None, status="paid", reason="subscription_cycle",
                amount=1500, price="price_test_pro", metadata=None, subscription=None) -> dict:
        start, end = self.period(n)
        return stripe_objects.invoice_object(
            id=invoice or f"in_{secrets.token_hex(8)}", subscription=subscription or self.sub,
            billing_reason=reason, status=status, amount=amount, currency="usd", period_start=start,
            period_end=end, price=price, metadata=self.metadata if metadata is None else metadata)

    def send(self, kind: str, obj: dict, *, event_id: str | None = None):
        body = stripe_objects.event_body(event_id or f"evt_{secrets.token_hex(8)}", kind, obj,
                                         created=int(datetime.now(timezone.utc).timestamp()))
        headers = {"Stripe-Signature": stripe_objects.sign(body, self.provider.webhook_secret),
                   "Content-Type": "application/json"}
        response = self.client.post("/api/webhooks/test", data=body, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response

    def paid(self, n: int, **options) -> str:
        invoice = options.pop("invoice", None) or f"in_{secrets.token_hex(8)}"
        self.send("invoice.paid", self.invoice(n, invoice=invoice, **options))
        return invoice


def event_statuses():
    table = PaymentEvent.__table__
    return dict(db.session.execute(select(table.c.status, func.count()).group_by(table.c.status)).all())


def test_an_invoice_twice_grants_its_period_once(app, client, make_user, whole_seconds):
    user = make_user()
    paid = Paid(app, client, user)
    whole_seconds.advance(MINUTE)
    invoice = paid.paid(1)
    paid.paid(1, invoice=invoice)  # Stripe's retry: another event, the same invoice
    body = paid.invoice(1, invoice=invoice)
    paid.send("invoice.paid", body, event_id="evt_same")
    paid.send("invoice.paid", body, event_id="evt_same")
    assert plan_lots(user).count(("plan", 100)) == 2  # the first period's and this one's
    assert subscription(client, user)["remaining"]["generation_credits"] == 100 + 50  # and the rollover
    ledger_is_clean()


def test_invoices_out_of_order_and_a_failed_payment_between(app, client, make_user, whole_seconds):
    user = make_user()
    paid = Paid(app, client, user)
    whole_seconds.advance(2 * MINUTE)
    # Period 2's invoice before period 1's (which comes late, after its period ended: its lots
    # would lapse at once, so none is made).
    paid.paid(2)
    paid.paid(1)
    assert plan_lots(user) == [("plan", 5), ("plan", 100), ("plan", 100)], plan_lots(user)
    # Period 3: the payment fails, so nothing comes; the retry pays the same invoice.
    whole_seconds.advance(MINUTE)
    failed = paid.invoice(3, status="open")
    paid.send("invoice.payment_failed", failed)
    described = subscription(client, user)
    assert described["status"] == "past_due" and described["remaining"]["generation_credits"] == 0, described
    assert credits(user) == 0
    paid.send("invoice.paid", {**failed, "status": "paid", "amount_paid": 1500})
    paid.send("invoice.payment_failed", failed)  # a failure told after the payment changes nothing
    described = subscription(client, user)
    assert described["status"] == "active" and credits(user) == 100 + 50, described  # with period 2's rollover
    ledger_is_clean()


def test_an_invoice_for_a_period_not_begun_waits_for_it(app, client, make_user, whole_seconds):
    user = make_user()
    paid = Paid(app, client, user)
    paid.paid(10)  # ten minutes ahead: more than the provider's clock may be off
    assert credits(user) == 105 and event_statuses().get("deferred") == 1
    whole_seconds.advance(10 * MINUTE)
    # Periods 1 to 9 were never paid: nothing rolls over into 10.
    assert subscription(client, user)["remaining"]["generation_credits"] == 100
    assert event_statuses().get("deferred") is None
    ledger_is_clean()


def test_unknown_subscriptions_wrong_amounts_and_foreign_metadata_grant_nothing(app, client, make_user,
                                                                             whole_seconds):
    user = make_user()
    paid = Paid(app, client, user)
    whole_seconds.advance(MINUTE)
    paid.paid(1, subscription="sub_nobody", metadata={})
    assert event_statuses().get("unmatched") == 1
    paid.paid(1, amount=1)  # not the plan's price
    assert credits(user) == 0
    paid.paid(1, subscription="sub_nobody", metadata={"creditapp_subscription": str(paid.id)})  # not its own
    assert credits(user) == 0 and event_statuses().get("unmatched") == 2
    ledger_is_clean()


def test_an_upgrade_grants_the_difference_now_and_a_downgrade_waits_for_the_next_period(
        app, client, make_user, whole_seconds):
    user = make_user()
    Paid(app, client, user, renews=True)
    client.post("/api/generate", json={"prompt": "a cat"}, headers=user.headers)
    whole_seconds.advance(MINUTE // 2)
    up = client.post("/api/subscription", json={"plan": "max"}, headers=user.headers)
    assert up.status_code == 200 and up.json["plan"] == "max", up.json
    # 300 - 100 now; the period's end is unchanged. (The spend took the free period's lot: it
    # ends at the same second, and is older.)
    assert up.json["remaining"]["generation_credits"] == 300 and credits(user) == 5 - 1 + 300, up.json
    down = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
    assert down.status_code == 200 and down.json["plan"] == "pro" and credits(user) == 304, down.json
    invoices = db.session.execute(select(func.count()).select_from(PlanInvoice.__table__)).scalar()
    again = client.post("/api/subscription", json={"plan": "max"}, headers=user.headers)
    assert again.status_code == 200 and credits(user) == 304  # this period was granted 300 already
    # ... and paid for: up again is not invoiced twice.
    assert db.session.execute(select(func.count()).select_from(PlanInvoice.__table__)).scalar() == invoices
    client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
    whole_seconds.advance(MINUTE // 2)
    described = subscription(client, user)
    assert described["plan"] == "pro" and described["allowance"]["generation_credits"] == 100
    assert described["remaining"]["generation_credits"] == 100 + 50, described  # pro's allowance and rollover cap
    ledger_is_clean()


def test_cancel_keeps_the_allowance_to_the_period_end_then_the_default_plan(app, client, make_user, whole_seconds):
    user = make_user()
    Paid(app, client, user, renews=True)
    canceled = client.delete("/api/subscription", headers=user.headers)
    assert canceled.json["cancel_at_period_end"] is True and canceled.json["plan"] == "pro"
    resumed = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
    assert resumed.status_code == 200 and resumed.json["cancel_at_period_end"] is False, resumed.json
    client.delete("/api/subscription", headers=user.headers)
    whole_seconds.advance(MINUTE - 1)
    assert subscription(client, user)["plan"] == "pro" and credits(user) == 105
    whole_seconds.advance(1)
    described = subscription(client, user)
    assert (described["plan"], described["status"], described["id"]) == ("free", "active", None), described
    assert credits(user) == 5
    assert client.delete("/api/subscription", headers=user.headers).status_code == 409
    ledger_is_clean()


def test_an_upgrade_on_a_card_that_fails_is_declined_and_grants_nothing(app, client, make_user, whole_seconds):
    user = make_user()
    paid = Paid(app, client, user, renews=True)
    page = f"/checkout/test/subscriptions/{paid.sub}"
    assert 'id="fail-renewals"' in client.get(page).get_data(as_text=True)
    assert client.post(page, data={"action": "fail-renewals"}).status_code == 303
    declined = client.post("/api/subscription", json={"plan": "max"}, headers=user.headers)
    assert declined.status_code == 402 and declined.json["error"] == "payment_declined", declined.json
    assert subscription(client, user)["plan"] == "pro" and credits(user) == 105
    ledger_is_clean()


def test_two_checkouts_both_paid_leave_one_subscription_billing(app, client, make_user, whole_seconds):
    user = make_user()
    provider = app.extensions["creditapp.payments"].provider
    first = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers).json
    first_checkout = path(first["checkout_url"]).rsplit("/", 1)[1]
    held_back = provider.act(first_checkout, "pay")  # paid at the provider; its events are late
    second = client.post("/api/subscription", json={"plan": "max"}, headers=user.headers)
    assert second.status_code == 201, second.json  # the first could not be expired: it was paid
    assert client.post(path(second.json["checkout_url"]), data={"action": "pay"}).status_code == 303
    assert subscription(client, user)["plan"] == "max"
    for body, headers in held_back:
        client.post("/api/webhooks/test", data=body, headers=headers)
    described = subscription(client, user)
    assert described["plan"] == "pro" and described["id"] == first["pending"]["id"], described
    replaced = provider.subscription_of_checkout(path(second.json["checkout_url"]).rsplit("/", 1)[1])
    assert replaced.cancel_at_period_end is True  # the provider bills it no more
    assert credits(user) == 5 + 300 + 100  # both periods were paid for
    ledger_is_clean()
