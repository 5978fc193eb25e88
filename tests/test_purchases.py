"""Buying packs with the built-in test provider (the default outside production): its checkout
page, `flask purchases simulate`, and what must hold whatever the provider: one lot per purchase
under real parallel deliveries to gunicorn, a catalogue checked at start."""
import json
import re
import threading

import pytest
import requests
from sqlalchemy import func, select

from creditapp.settings import ProductionConfig
from creditapp.extensions import db
from creditapp.ledger import credit_service
from creditapp.ledger.tables import CreditLot
from creditapp.testing import ledger_is_clean, make_app
from creditapp.testing.servers import fire_together


def buy(client, user, pack="starter"):
    response = client.post("/api/purchases", json={"pack": pack}, headers=user.headers)
    assert response.status_code == 201, response.json
    return response.json


def page_path(purchase) -> str:
    return re.sub(r"^https?://[^/]+", "", purchase["checkout_url"])


def credits(user):
    return credit_service.get_credit_balance(user.id).generation_credits


def status(client, user, purchase):
    return client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json["status"]


def test_the_checkout_page_pays_and_the_balance_shows_the_pack(client, make_user):
    user = make_user(credits=3)
    purchase = buy(client, user)
    assert purchase["provider"] == "test" and purchase["checkout_url"].startswith("http://localhost/checkout/test/")
    page = client.get(page_path(purchase))
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "5.00 USD" in html
    assert [b for b in ("pay", "transfer", "settle", "decline") if f'id="{b}"' in html] == ["pay", "transfer", "decline"]
    paid = client.post(page_path(purchase), data={"action": "pay"})
    assert paid.status_code == 303 and paid.headers["Location"].endswith(f"/checkout/return?purchase={purchase['id']}")
    assert client.get(paid.headers["Location"]).status_code == 200
    assert status(client, user, purchase) == "paid" and credits(user) == 23
    again = client.post(page_path(purchase), data={"action": "pay"})
    assert again.status_code == 409 and credits(user) == 23
    assert 'id="pay"' not in client.get(page_path(purchase)).get_data(as_text=True)
    ledger_is_clean()


def test_a_bank_transfer_waits_to_settle_and_a_decline_lapses(client, make_user):
    user = make_user()
    transfer, declined = buy(client, user), buy(client, user)
    client.post(page_path(transfer), data={"action": "transfer"})
    assert (status(client, user, transfer), credits(user)) == ("processing", 0)
    assert 'id="settle"' in client.get(page_path(transfer)).get_data(as_text=True)
    client.post(page_path(transfer), data={"action": "settle"})
    assert (status(client, user, transfer), credits(user)) == ("paid", 20)
    response = client.post(page_path(declined), data={"action": "decline"})
    assert response.status_code == 303 and "cancelled=1" in response.headers["Location"]
    assert status(client, user, declined) == "expired"
    assert client.post(page_path(declined), data={"action": "nonsense"}).status_code == 409
    assert client.get("/checkout/test/cs_test_nope").status_code == 404
    ledger_is_clean()


def test_simulate_plays_refunds_and_disputes_through_the_signed_webhook(app, client, make_user):
    user = make_user()
    first, second = buy(client, user), buy(client, user)
    runner = app.test_cli_runner()
    for purchase in (first, second):
        result = runner.invoke(args=["purchases", "simulate", str(purchase["id"]), "pay"])
        assert "checkout.session.completed: applied" in result.output, result.output
    assert credits(user) == 40
    for _ in range(25):
        client.post("/api/generate", json={"prompt": "x"}, headers=user.headers)
    result = runner.invoke(args=["purchases", "simulate", str(first["id"]), "refund", "--amount", "250"])
    assert "charge.refunded: applied" in result.output and json.loads(result.output.split("\n", 1)[1])["credits_taken_back"] == 10
    assert credits(user) == 5
    runner.invoke(args=["purchases", "simulate", str(second["id"]), "dispute"])
    assert credits(user) == 0  # what was left of the pack is frozen
    runner.invoke(args=["purchases", "simulate", str(second["id"]), "dispute-lost"])
    balance = client.get("/api/credits/balance", headers=user.headers).json
    # 40 bought, 25 spent, 10 + 20 taken back: 15 owed.
    assert (balance["generation_credits"], balance["debt"]["generation_credits"]) == (0, 15)
    refused = runner.invoke(args=["purchases", "simulate", str(first["id"]), "settle"])
    assert refused.exit_code != 0 and "no transfer is pending" in refused.output
    ledger_is_clean()


def test_the_test_webhook_takes_only_its_own_signature(client, make_user):
    from creditapp.payments.providers.stripe_objects import event_body, sign

    body = event_body("evt_x", "checkout.session.completed", {"id": "cs_x", "client_reference_id": "purchase:1"})
    for headers in ({}, {"Stripe-Signature": sign(body, "whsec_guess")}):
        response = client.post("/api/webhooks/test", data=body, headers=headers)
        assert (response.status_code, response.json["error"]) == (400, "invalid_signature")
    assert client.post("/api/webhooks/stripe", data=body).status_code == 404


@pytest.mark.parametrize("packs, field", [
    ({"a": {"name": "A", "credit_type": "generation_credits", "credits": 0, "price": 100, "currency": "usd"}}, "credits"),
    ({"a": {"name": "A", "credit_type": "gold", "credits": 1, "price": 100, "currency": "usd"}}, "credit_type"),
    ({"a": {"name": "A", "credit_type": "ai_tokens", "credits": 1, "price": 1.5, "currency": "usd"}}, "price"),
    ({"a": {"name": "A", "credit_type": "ai_tokens", "credits": 1, "price": 100, "currency": "USD"}}, "currency"),
    ({"a": {"name": "A", "credit_type": "ai_tokens", "credits": 1, "price": 100, "currency": "usd",
            "priority": 101}}, "priority"),
    ({"a": {"credit_type": "ai_tokens", "credits": 1, "price": 100, "currency": "usd"}}, "name"),
    ({"a": {"name": "A", "credit_type": "ai_tokens", "credits": 1, "price": 100, "currency": "usd", "colour": 1}},
     "colour"),
])
def test_a_bad_catalogue_stops_the_app_naming_the_field(database_url, packs, field):
    with pytest.raises(RuntimeError, match=field):
        make_app(database_url, CREDIT_PACKS=packs)


def test_production_refuses_the_test_provider_and_has_no_purchases_until_stripe_is_set(database_url):
    secret = "x" * 40
    with pytest.raises(RuntimeError, match="PAYMENTS_PROVIDER=test"):
        from creditapp import create_app
        create_app(ProductionConfig, {"SQLALCHEMY_DATABASE_URI": database_url, "JWT_SECRET_KEY": secret,
                                      "PAYMENTS_PROVIDER": "test"})
    with pytest.raises(RuntimeError, match="STRIPE_SECRET_KEY"):
        make_app(database_url, PAYMENTS_PROVIDER="stripe")
    app = make_app(database_url, PAYMENTS_PROVIDER="")
    client = app.test_client()
    assert client.get("/api/purchases/packs").status_code == 200
    from creditapp import users
    with app.app_context():
        users.create_user("nobuyer", "correct-horse-battery", hash_method=app.config["PASSWORD_HASH_METHOD"])
    token = client.post("/api/auth/login", json={"username": "nobuyer", "password": "correct-horse-battery"}).json
    response = client.post("/api/purchases", json={"pack": "starter"},
                           headers={"Authorization": f"Bearer {token['access_token']}"})
    assert (response.status_code, response.json["error"]) == (503, "payments_unavailable")


@pytest.mark.slow
def test_fifty_copies_of_the_payment_the_return_page_and_reconcile_at_once_give_one_lot(
        app, database_url, make_user, fake_stripe, live_server):
    """Real parallel deliveries to gunicorn (2 workers of 4 threads): the completion event 50
    times, with the buyer's return page and `flask purchases reconcile` in the same instant."""
    user = make_user()
    stripe_app = make_app(database_url, **fake_stripe.settings)
    with live_server(**fake_stripe.settings) as server:
        purchase = requests.post(f"{server.url}/api/purchases", json={"pack": "starter"}, headers=user.headers,
                                 timeout=30).json()
        session = next(iter(fake_stripe.sessions))
        body, headers = fake_stripe.complete(session)
        runner = stripe_app.test_cli_runner()

        def send(i):
            if i == 50:
                return requests.get(f"{server.url}/api/purchases/{purchase['id']}", headers=user.headers,
                                    timeout=60).status_code
            if i == 51:
                with stripe_app.app_context():
                    return runner.invoke(args=["purchases", "reconcile", "--older-than", "0"]).exit_code
            return requests.post(f"{server.url}/api/webhooks/stripe", data=body, headers=headers, timeout=60)

        answers = fire_together(52, send)
    deliveries = answers[:50]
    assert all(answer.status_code == 200 for answer in deliveries), [a.text for a in deliveries if a.status_code != 200]
    outcomes = sorted(answer.json()["outcome"] for answer in deliveries)
    assert outcomes.count("applied") <= 1 and set(outcomes) <= {"applied", "duplicate", "ignored"}, outcomes
    assert answers[50:] == [200, 0]
    lots = db.session.execute(select(func.count()).select_from(CreditLot)
                              .where(CreditLot.reference == f"purchase:{purchase['id']}")).scalar()
    assert lots == 1 and credits(user) == 20
    ledger_is_clean()
