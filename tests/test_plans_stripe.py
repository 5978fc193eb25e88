"""Paid plans through Stripe, against the local fake of Stripe's API (creditapp.testing.fake_stripe)
called by the real `stripe` package, with events signed with Stripe's scheme: a subscription-mode
checkout, its invoices in any order, a failed renewal, cancel and plan changes made at Stripe."""
import json

import pytest

from creditapp.ledger import credit_service
from creditapp.testing import ledger_is_clean, make_app

HOOK = "/api/webhooks/stripe"
PLANS = {
    "free": {"name": "Free", "price": 0, "currency": "usd", "interval": "month", "allowance": {"generation_credits": 5}},
    "pro": {"name": "Pro", "price": 1500, "currency": "usd", "interval": "month", "stripe_price": "price_pro",
            "allowance": {"generation_credits": 200}, "rollover_max": {"generation_credits": 100}},
    "max": {"name": "Max", "price": 3000, "currency": "usd", "interval": "month", "stripe_price": "price_max",
            "allowance": {"generation_credits": 500}},
}


@pytest.fixture
def creditapp_settings(fake_stripe):
    fake_stripe.add_price("price_pro", 1500)
    fake_stripe.add_price("price_max", 3000)
    return {**fake_stripe.settings, "PLANS": PLANS, "DEFAULT_PLAN": "free"}


def deliver(client, event):
    body, headers = event
    response = client.post(HOOK, data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def credits(user):
    return credit_service.get_credit_balance(user.id).generation_credits


def subscribed(client, user, fake_stripe, *, order=(0, 1, 2)):
    opened = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
    assert opened.status_code == 201, opened.json
    session_id = opened.json["checkout_url"].rsplit("/", 1)[1]
    sent = next(r for r in fake_stripe.requests if r["path"] == "/v1/checkout/sessions")
    assert sent["params"]["mode"] == "subscription" and sent["params"]["line_items"] == [
        {"quantity": "1", "price": "price_pro"}]
    assert sent["params"]["subscription_data"]["metadata"]["creditapp_plan"] == "pro"
    events = fake_stripe.subscribe(session_id)
    for i in order:
        deliver(client, events[i])
    return opened.json, next(iter(fake_stripe.subscriptions))


def test_a_subscription_checkout_its_invoice_first_and_its_renewals(app, client, make_user, fake_stripe,
                                                                   manual_clock):
    user = make_user()
    # The invoice before the checkout's completion: our metadata finds the subscription anyway.
    _, sub = subscribed(client, user, fake_stripe, order=(2, 1, 0))
    described = client.get("/api/subscription", headers=user.headers).json
    assert (described["plan"], described["status"], described["provider"]) == ("pro", "active", "stripe"), described
    assert described["remaining"] == {"generation_credits": 200} and credits(user) == 205
    # The renewal fails: past due, no allowance; paid later: the period, with its rollover.
    failed_body, failed_headers = fake_stripe.renew(sub, paid=False)
    start = fake_stripe.subscriptions[sub]["items"]["data"][0]["current_period_start"]
    manual_clock.advance(start + 1 - manual_clock.current.timestamp())  # a calendar month on
    deliver(client, (failed_body, failed_headers))
    described = client.get("/api/subscription", headers=user.headers).json
    assert described["status"] == "past_due" and credits(user) == 0, described
    invoice = json.loads(failed_body)["data"]["object"]["id"]
    paid = fake_stripe.renew(sub, invoice=invoice)
    deliver(client, paid), deliver(client, paid)
    described = client.get("/api/subscription", headers=user.headers).json
    assert described["status"] == "active" and described["remaining"] == {"generation_credits": 300}, described
    ledger_is_clean()


def test_cancel_and_plan_changes_are_asked_of_stripe_and_applied_from_its_events(app, client, make_user, fake_stripe):
    user = make_user()
    _, sub = subscribed(client, user, fake_stripe)
    # A declined card on the upgrade's proration: 402, nothing changes.
    fake_stripe.decline_next()
    declined = client.post("/api/subscription", json={"plan": "max"}, headers=user.headers)
    assert declined.status_code == 402 and declined.json["error"] == "payment_declined", declined.json
    assert client.get("/api/subscription", headers=user.headers).json["plan"] == "pro"
    up = client.post("/api/subscription", json={"plan": "max"}, headers=user.headers)
    assert up.status_code == 200, up.json
    change = [r for r in fake_stripe.requests if r["path"] == f"/v1/subscriptions/{sub}" and r["method"] == "POST"][-1]
    assert change["params"]["items"][0]["price"] == "price_max"
    assert change["params"]["proration_behavior"] == "always_invoice"
    deliver(client, fake_stripe.updated(sub))
    deliver(client, fake_stripe.invoice(sub, "subscription_update", amount=1500))
    described = client.get("/api/subscription", headers=user.headers).json
    assert described["plan"] == "max" and described["remaining"] == {"generation_credits": 500}, described
    # Cancel: asked of Stripe, applied when its event comes; the allowance stays to the end.
    canceled = client.delete("/api/subscription", headers=user.headers)
    assert canceled.status_code == 200
    assert fake_stripe.subscriptions[sub]["cancel_at_period_end"] is True
    deliver(client, fake_stripe.updated(sub))
    deliver(client, fake_stripe.updated(sub))
    described = client.get("/api/subscription", headers=user.headers).json
    assert described["cancel_at_period_end"] is True and credits(user) == 505
    # Deleted before the period's end (canceled at once in Stripe's dashboard): what was granted
    # for the period paid stays to its end; the default plan follows.
    deliver(client, fake_stripe.deleted(sub))
    described = client.get("/api/subscription", headers=user.headers).json
    assert (described["plan"], described["id"]) == ("free", None) and credits(user) == 505, described
    ledger_is_clean()


def test_forged_and_live_mode_events_change_nothing(app, client, make_user, fake_stripe):
    user = make_user()
    opened = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
    events = fake_stripe.subscribe(opened.json["checkout_url"].rsplit("/", 1)[1])
    body, headers = events[2]
    assert client.post(HOOK, data=body.replace(b"1500", b"1501"), headers=headers).status_code == 400
    live_body, live_headers = fake_stripe.event("invoice.paid", {**json.loads(body)["data"]["object"],
                                                                 "livemode": True}, livemode=True)
    assert client.post(HOOK, data=live_body, headers=live_headers).status_code == 400
    assert client.get("/api/subscription", headers=user.headers).json["plan"] == "free" and credits(user) == 5
    ledger_is_clean()


def test_stripe_plans_must_bill_by_calendar_interval(database_url, fake_stripe):
    plans = {**PLANS, "pro": {**PLANS["pro"], "interval_seconds": 60}}
    del plans["pro"]["interval"]
    with pytest.raises(RuntimeError, match="Stripe bills by day, week, month or year"):
        make_app(database_url, **fake_stripe.settings, PLANS=plans, DEFAULT_PLAN="free")


def test_a_proration_of_two_lines_and_a_renewal_paid_partly_by_balance(app, client, make_user, fake_stripe,
                                                                      manual_clock):
    user = make_user()
    _, sub = subscribed(client, user, fake_stripe)
    assert client.post("/api/subscription", json={"plan": "max"}, headers=user.headers).status_code == 200
    deliver(client, fake_stripe.updated(sub))
    # As Stripe bills a proration: the unused time of the old price credited, the new one charged.
    body, _ = fake_stripe.invoice(sub, "subscription_update", amount=1500)
    invoice = json.loads(body)["data"]["object"]
    credit = {**invoice["lines"]["data"][0], "id": "il_credit", "amount": -1500,
              "pricing": {"type": "price_details", "price_details": {"price": "price_pro", "product": "prod_x"}}}
    charge = {**invoice["lines"]["data"][0], "amount": 3000}
    invoice["lines"]["data"] = [credit, charge]
    deliver(client, fake_stripe.event("invoice.paid", invoice))
    described = client.get("/api/subscription", headers=user.headers).json
    assert described["plan"] == "max" and credits(user) == 505, described
    # The renewal: 3000 in all, 1000 of it from a credit on the customer's balance.
    body, _ = fake_stripe.renew(sub)
    renewal = json.loads(body)["data"]["object"]
    start = renewal["lines"]["data"][0]["period"]["start"]
    manual_clock.advance(start + 1 - manual_clock.current.timestamp())
    deliver(client, fake_stripe.event("invoice.paid", {**renewal, "amount_paid": 2000, "total": 3000}))
    assert client.get("/api/subscription", headers=user.headers).json["remaining"] == {"generation_credits": 500}
    ledger_is_clean()


def test_an_upgrade_right_after_a_first_invoice_from_a_clock_ahead_of_ours_is_topped_up(
        app, client, make_user, fake_stripe, manual_clock):
    manual_clock.advance(-60)  # Stripe's clock a minute ahead: the paid period starts after our now
    user = make_user()
    _, sub = subscribed(client, user, fake_stripe)
    assert credits(user) == 205
    assert client.post("/api/subscription", json={"plan": "max"}, headers=user.headers).status_code == 200
    deliver(client, fake_stripe.updated(sub))
    deliver(client, fake_stripe.invoice(sub, "subscription_update", amount=1500))
    assert credits(user) == 505
    ledger_is_clean()


def test_a_cancel_between_a_renewal_and_its_invoice_keeps_the_period_paid(app, client, make_user, fake_stripe,
                                                                          manual_clock):
    user = make_user()
    _, sub = subscribed(client, user, fake_stripe)
    renewal = fake_stripe.renew(sub)  # Stripe renews; its invoice is paid an hour later
    start = fake_stripe.subscriptions[sub]["items"]["data"][0]["current_period_start"]
    manual_clock.advance(start + 1 - manual_clock.current.timestamp())
    # The cancel is made before the renewal's subscription.updated has come: our period is the old one.
    assert client.delete("/api/subscription", headers=user.headers).status_code == 200
    deliver(client, fake_stripe.updated(sub))  # the new period, canceled at its end
    described = client.get("/api/subscription", headers=user.headers).json
    assert (described["plan"], described["cancel_at_period_end"]) == ("pro", True), described
    deliver(client, renewal)
    described = client.get("/api/subscription", headers=user.headers).json
    assert described["remaining"] == {"generation_credits": 300}, described  # 200 and 100 rolled over
    ledger_is_clean()
