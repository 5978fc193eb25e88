"""Buying packs through Stripe, against a local fake of Stripe's API (creditapp.testing.fake_stripe)
called by the real `stripe` package, and webhooks signed with Stripe's scheme: exactly one lot per
paid purchase, whatever repeats, reorders, lies or comes late."""
import json
import time

import pytest
from sqlalchemy import func, select

from creditapp.extensions import db
from creditapp.ledger import credit_service
from creditapp.payments.tables import PaymentEvent, Purchase
from creditapp.testing import ledger_is_clean
from creditapp.testing.fake_stripe import WEBHOOK_SECRET

HOOK = "/api/webhooks/stripe"
PACKS = {"starter": {"name": "Starter", "credit_type": "generation_credits", "credits": 20, "price": 500,
                     "currency": "usd"},
         "tokens": {"name": "Tokens", "credit_type": "ai_tokens", "credits": 1000, "price": 1000, "currency": "eur",
                    "priority": 70, "expires_in_days": 30}}


@pytest.fixture
def creditapp_settings(fake_stripe):
    return {**fake_stripe.settings, "CREDIT_PACKS": PACKS}


def buy(client, user, pack="starter", **headers):
    response = client.post("/api/purchases", json={"pack": pack}, headers={**user.headers, **headers})
    assert response.status_code == 201, response.json
    return response.json


def deliver(client, event):
    body, headers = event
    return client.post(HOOK, data=body, headers=headers)


def credits(user, kind="generation_credits"):
    return getattr(credit_service.get_credit_balance(user.id), kind)


def debt(client, user):
    return client.get("/api/credits/balance", headers=user.headers).json["debt"]


def stored_events() -> int:
    return db.session.execute(select(func.count()).select_from(PaymentEvent)).scalar()


def session_of(fake, purchase) -> str:
    return next(s["id"] for s in fake.sessions.values() if s["client_reference_id"] == f"purchase:{purchase['id']}")


def test_a_purchase_opens_the_checkout_stripe_expects_and_its_payment_grants_one_lot(client, make_user, fake_stripe):
    user = make_user()
    purchase = buy(client, user, "tokens")
    assert {k: purchase[k] for k in ("pack", "credit_type", "credits", "price", "currency", "status", "provider",
                                     "lot_id", "refunded", "credits_taken_back")} == {
        "pack": "tokens", "credit_type": "ai_tokens", "credits": 1000, "price": 1000, "currency": "eur",
        "status": "open", "provider": "stripe", "lot_id": None, "refunded": 0, "credits_taken_back": 0}
    assert purchase["checkout_url"].startswith("https://checkout.stripe.test/")
    sent = fake_stripe.requests[0]
    assert sent["idempotency_key"].startswith(f"creditapp-purchase-{purchase['id']}-")
    params = sent["params"]
    assert params["mode"] == "payment" and params["client_reference_id"] == f"purchase:{purchase['id']}"
    assert params["line_items"] == [{"quantity": "1", "price_data": {
        "currency": "eur", "unit_amount": "1000", "product_data": {"name": "Tokens"}}}]
    assert params["metadata"] == params["payment_intent_data"]["metadata"] == {"purchase_id": str(purchase["id"])}
    assert abs(int(params["expires_at"]) - (time.time() + 3600)) < 60

    session = session_of(fake_stripe, purchase)
    completed = fake_stripe.complete(session)
    first = deliver(client, completed)
    assert (first.status_code, first.json.get("outcome")) == (200, "applied"), first.json
    again = deliver(client, completed)  # Stripe retries what it did not see acknowledged
    assert (again.status_code, again.json["outcome"]) == (200, "duplicate")
    # Another event describing the same payment changes nothing either.
    assert deliver(client, fake_stripe.settle(session)).json["outcome"] == "ignored"

    paid = client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json
    assert paid["status"] == "paid" and paid["lot_id"] is not None and paid["paid_at"]
    lots = client.get("/api/credits/lots", query_string={"credit_type": "ai_tokens"}, headers=user.headers).json["items"]
    lot = next(lot for lot in lots if lot["id"] == paid["lot_id"])
    assert (lot["granted"], lot["priority"], lot["source"], lot["reference"]) == (1000, 70, "purchase", f"purchase:{purchase['id']}")
    assert lot["expires_at"] is not None
    assert credits(user, "ai_tokens") == 1000
    assert stored_events() == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'creditapp_purchases_total{pack="tokens",status="paid"} 1.0' in metrics
    assert 'creditapp_revenue_minor_units_total{currency="eur"} 1000.0' in metrics
    assert 'creditapp_payment_events_total{outcome="duplicate",type="checkout.session.completed"} 1.0' in metrics
    ledger_is_clean()


@pytest.mark.parametrize("case", ["missing", "forged", "another secret", "stale", "truncated", "not json",
                                  "live mode", "not an event"])
def test_a_webhook_that_is_not_stripes_own_is_refused_and_changes_nothing(client, make_user, fake_stripe, case):
    user = make_user()
    purchase = buy(client, user)
    body, headers = fake_stripe.complete(session_of(fake_stripe, purchase))
    if case == "missing":
        headers = {}
    elif case == "forged":
        headers = {"Stripe-Signature": headers["Stripe-Signature"][:-4] + "0000"}
    elif case == "another secret":
        body, headers = fake_stripe.event("checkout.session.completed", json.loads(body)["data"]["object"],
                                          secret="whsec_someone_else")
    elif case == "stale":
        body, headers = fake_stripe.event("checkout.session.completed", json.loads(body)["data"]["object"],
                                          timestamp=int(time.time()) - 301)
    elif case == "truncated":
        body = body[:-10]
    elif case == "not json":
        from creditapp.payments.providers.stripe_objects import sign
        body = b"{not json"
        headers = {"Stripe-Signature": sign(body, WEBHOOK_SECRET)}
    elif case == "live mode":
        body, headers = fake_stripe.event("checkout.session.completed", json.loads(body)["data"]["object"],
                                          livemode=True)
    elif case == "not an event":
        from creditapp.payments.providers.stripe_objects import sign
        body = b'{"id": "evt_1", "data": 3}'
        headers = {"Stripe-Signature": sign(body, WEBHOOK_SECRET)}
    response = client.post(HOOK, data=body, headers=headers)
    expected = "livemode_mismatch" if case == "live mode" else "invalid_signature"
    assert (response.status_code, response.json["error"]) == (400, expected), response.json
    assert stored_events() == 0
    assert db.session.execute(select(Purchase.status)).scalar() == "open"
    assert credits(user) == 0


def test_an_oversized_body_is_400_and_the_route_answers_no_browser(client, make_user, fake_stripe):
    user = make_user()
    session = session_of(fake_stripe, buy(client, user))
    fake_stripe.sessions[session]["metadata"]["note"] = "x" * 300_000  # past the app's 64 KiB, within 1 MiB
    assert deliver(client, fake_stripe.complete(session)).json["outcome"] == "applied"
    response = client.post(HOOK, data=b"x" * ((1 << 20) + 1), headers={"Stripe-Signature": "t=1,v1=0"})
    assert (response.status_code, response.json["error"]) == (400, "invalid_body")
    preflight = client.options(HOOK, headers={"Origin": "http://web.test", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert client.post("/api/webhooks/test", data=b"{}").status_code == 404  # not the configured provider
    assert stored_events() == 1 and credits(user) == 20


def test_either_of_two_webhook_secrets_may_sign(database_url, fake_stripe, make_user):
    from creditapp.testing import make_app

    app = make_app(database_url, **{**fake_stripe.settings, "STRIPE_WEBHOOK_SECRET": ["whsec_new", WEBHOOK_SECRET]})
    client = app.test_client()
    user = make_user()
    purchase = client.post("/api/purchases", json={"pack": "starter"}, headers=user.headers).json
    body, _ = fake_stripe.complete(session_of(fake_stripe, purchase))
    from creditapp.payments.providers.stripe_objects import sign
    for secret in ("whsec_new", WEBHOOK_SECRET):
        assert client.post(HOOK, data=body, headers={"Stripe-Signature": sign(body, secret)}).status_code == 200
    assert credits(user) == 20


def test_a_payment_of_another_amount_grants_nothing(client, make_user, fake_stripe):
    user = make_user()
    purchase = buy(client, user)
    assert deliver(client, fake_stripe.complete(session_of(fake_stripe, purchase), amount=50)).status_code == 200
    failed = client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json
    assert (failed["status"], failed["failure_reason"], failed["lot_id"]) == ("failed", "amount_mismatch", None)
    assert credits(user) == 0
    ledger_is_clean()


def test_a_bank_transfer_grants_only_once_it_settles_and_nothing_when_it_fails(client, make_user, fake_stripe):
    user = make_user()
    settled, bounced, lapsed = buy(client, user), buy(client, user), buy(client, user)
    for purchase in (settled, bounced):
        deliver(client, fake_stripe.complete(session_of(fake_stripe, purchase), paid=False))
        assert client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json["status"] == "processing"
    assert credits(user) == 0
    deliver(client, fake_stripe.settle(session_of(fake_stripe, settled)))
    deliver(client, fake_stripe.settle(session_of(fake_stripe, bounced), succeeded=False))
    deliver(client, fake_stripe.expire(session_of(fake_stripe, lapsed)))
    statuses = {p["id"]: p["status"] for p in client.get("/api/purchases", headers=user.headers).json["items"]}
    assert statuses == {settled["id"]: "paid", bounced["id"]: "failed", lapsed["id"]: "expired"}
    assert credits(user) == 20
    ledger_is_clean()


def test_a_refund_takes_credits_back_in_proportion_and_what_was_spent_becomes_debt(client, make_user, fake_stripe):
    user = make_user(credits=2)
    purchase = buy(client, user)
    session = session_of(fake_stripe, purchase)
    deliver(client, fake_stripe.complete(session))
    for _ in range(15):  # spend 15 of the 22
        assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 200
    assert credits(user) == 7
    deliver(client, fake_stripe.refund(session, 250))  # half the money: 10 credits back
    half = client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json
    assert (half["status"], half["refunded"], half["credits_taken_back"]) == ("partially_refunded", 250, 10)
    assert (credits(user), debt(client, user)["generation_credits"]) == (0, 3)
    deliver(client, fake_stripe.refund(session, 200))  # an older, smaller cumulative figure: nothing more
    deliver(client, fake_stripe.refund(session, 500))
    full = client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json
    assert (full["status"], full["credits_taken_back"]) == ("refunded", 20)
    assert (credits(user), debt(client, user)["generation_credits"]) == (0, 13)
    refused = client.post("/api/generate", json={"prompt": "x"}, headers=user.headers)
    assert refused.status_code == 403
    # The next grant pays the debt first.
    credit_service.grant(user.id, 20, "generation_credits", reason="admin", reference="after-debt")
    assert (credits(user), debt(client, user)["generation_credits"]) == (7, 0)
    ledger_is_clean()


def test_a_full_refund_of_an_unspent_pack_leaves_the_balance_as_before(client, make_user, fake_stripe):
    user = make_user(credits=3)
    purchase = buy(client, user)
    session = session_of(fake_stripe, purchase)
    deliver(client, fake_stripe.complete(session))
    assert credits(user) == 23
    deliver(client, fake_stripe.refund(session, 500))
    assert (credits(user), debt(client, user)) == (3, {"generation_credits": 0, "ai_tokens": 0})
    ledger_is_clean()


def test_a_dispute_freezes_what_is_left_and_its_end_decides(client, make_user, fake_stripe):
    user = make_user()
    won, lost = buy(client, user), buy(client, user)
    for purchase in (won, lost):
        deliver(client, fake_stripe.complete(session_of(fake_stripe, purchase)))
    hold = credit_service.reserve(user.id, 5, "generation_credits")  # a running request holds 5
    for purchase in (won, lost):
        deliver(client, fake_stripe.dispute(session_of(fake_stripe, purchase)))
    assert client.get(f"/api/purchases/{won['id']}", headers=user.headers).json["status"] == "disputed"
    assert credits(user) == 0  # frozen: not spendable, not in the balance
    with credit_service.activate(hold):  # the held credits stay with their request, which is charged
        credit_service.deduct_credits(user.id, 5, "generation_credits")
    credit_service.close(hold, succeeded=True)
    deliver(client, fake_stripe.dispute(session_of(fake_stripe, won), "won"))
    assert credits(user) == 15
    deliver(client, fake_stripe.dispute(session_of(fake_stripe, lost), "lost"))
    ended = client.get(f"/api/purchases/{lost['id']}", headers=user.headers).json
    assert (ended["status"], ended["credits_taken_back"]) == ("dispute_lost", 20)
    # 40 bought, 5 spent, 20 taken back: 15 left, no debt.
    assert (credits(user), debt(client, user)["generation_credits"]) == (15, 0)
    ledger_is_clean()


def test_events_before_the_payment_they_depend_on_wait_for_it(client, make_user, fake_stripe):
    user = make_user()
    refunded, disputed = buy(client, user), buy(client, user)
    first, second = (session_of(fake_stripe, p) for p in (refunded, disputed))
    completions = [fake_stripe.complete(first), fake_stripe.complete(second)]
    late = [fake_stripe.refund(first, 500), fake_stripe.dispute(second, "won"), fake_stripe.dispute(second)]
    outcomes = [deliver(client, event).json["outcome"] for event in late]
    assert outcomes == ["unmatched", "unmatched", "unmatched"]  # no purchase has those payments yet
    for event in completions:
        assert deliver(client, event).json["outcome"] == "applied"
    assert client.get(f"/api/purchases/{refunded['id']}", headers=user.headers).json["status"] == "refunded"
    # The dispute's close came before its opening: opened, then won.
    assert client.get(f"/api/purchases/{disputed['id']}", headers=user.headers).json["status"] == "paid"
    assert credits(user) == 20
    statuses = db.session.execute(select(PaymentEvent.status)).scalars().all()
    assert sorted(statuses) == ["applied"] * 5
    ledger_is_clean()


def test_the_return_page_and_reconcile_find_a_payment_whose_webhook_never_came(app, client, make_user, fake_stripe):
    user = make_user()
    seen, forgotten = buy(client, user), buy(client, user)
    fake_stripe.complete(session_of(fake_stripe, seen))
    fake_stripe.complete(session_of(fake_stripe, forgotten))
    assert client.get(f"/api/purchases/{seen['id']}", headers=user.headers).json["status"] == "paid"
    result = app.test_cli_runner().invoke(args=["purchases", "reconcile", "--older-than", "0"])
    assert result.exit_code == 0 and "asked about 1 purchases, 1 changed" in result.output, result.output
    assert client.get(f"/api/purchases/{forgotten['id']}", headers=user.headers).json["status"] == "paid"
    assert credits(user) == 40
    ledger_is_clean()


def test_an_event_stored_but_not_applied_is_applied_later(app, client, make_user, fake_stripe, monkeypatch):
    """The process dies between storing the event and applying it: the 200 came after the store,
    and reconcile (or the next delivery) applies it."""
    from creditapp.payments.inbox import Inbox

    user = make_user()
    purchase = buy(client, user)
    session = session_of(fake_stripe, purchase)
    deliver(client, fake_stripe.complete(session))
    refund = fake_stripe.refund(session, 500)
    real = Inbox.apply_event

    def crash(self, row):
        raise ConnectionError("worker killed")

    monkeypatch.setattr(Inbox, "apply_event", crash)
    assert deliver(client, refund).json["outcome"] == "stored"
    monkeypatch.setattr(Inbox, "apply_event", real)
    assert credits(user) == 20
    result = app.test_cli_runner().invoke(args=["purchases", "reconcile", "--older-than", "0"])
    assert "asked about 0 purchases, 0 changed; 1 stored events applied" in result.output, result.output
    assert credits(user) == 0
    assert deliver(client, refund).json["outcome"] == "duplicate"
    ledger_is_clean()


def test_a_provider_that_fails_leaves_no_purchase_and_a_key_answers_one_purchase(client, make_user, fake_stripe):
    user = make_user()
    fake_stripe.fail_next(3)  # the SDK's two retries too
    failed = client.post("/api/purchases", json={"pack": "starter"}, headers={**user.headers, "Idempotency-Key": "p1"})
    assert (failed.status_code, failed.json["error"]) == (503, "payments_unavailable")
    assert db.session.execute(select(func.count()).select_from(Purchase)).scalar() == 0
    first = buy(client, user, **{"Idempotency-Key": "p1"})
    again = client.post("/api/purchases", json={"pack": "starter"}, headers={**user.headers, "Idempotency-Key": "p1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first["id"]
    other = client.post("/api/purchases", json={"pack": "tokens"}, headers={**user.headers, "Idempotency-Key": "p1"})
    assert (other.status_code, other.json["error"]) == (422, "idempotency_key_reused")
    assert len(fake_stripe.sessions) == 1


def test_bad_requests_change_nothing(client, make_user, fake_stripe):
    user, stranger = make_user(), make_user()
    unknown = client.post("/api/purchases", json={"pack": "nope"}, headers=user.headers)
    assert (unknown.status_code, unknown.json["error"]) == (422, "unknown_pack")
    for body in ({}, {"pack": ""}, {"pack": 3}, []):
        assert client.post("/api/purchases", json=body, headers=user.headers).status_code in (400, 422)
    assert client.post("/api/purchases", json={"pack": "starter"}).status_code == 401
    purchase = buy(client, user)
    for path in (f"/api/purchases/{purchase['id']}", "/api/purchases/999999"):
        response = client.get(path, headers=stranger.headers)
        assert (response.status_code, response.json["error"]) == (404, "unknown_purchase")
    assert client.get("/api/purchases", query_string={"status": "lost"}, headers=user.headers).status_code == 422
    assert client.get("/api/admin/purchases", headers=user.headers).status_code == 403
    admin = make_user(admin=True)
    listed = client.get("/api/admin/purchases", query_string={"user_id": user.id}, headers=admin.headers).json
    assert [item["id"] for item in listed["items"]] == [purchase["id"]]
    packs = client.get("/api/purchases/packs").json["packs"]
    assert [p["id"] for p in packs] == ["starter", "tokens"] and packs[0]["priority"] == 50


@pytest.mark.parametrize("body", [b"[]", b"123", b'"x"', b"null", b'{"id": 5, "type": "x", "data": {"object": {}}}',
                                  b'{"id": "evt_1", "type": "checkout.session.completed", "data": {"object": '
                                  b'{"metadata": "no", "client_reference_id": 5, "id": []}}}',
                                  b'{"id": "evt_2", "type": "checkout.session.completed", "data": {"object": '
                                  b'{"client_reference_id": "purchase:99999999999999999999999", "status": "complete"}}}',
                                  b'{"id": "evt_nul\\u0000", "type": "charge.refunded", "data": {"object": {}}}',
                                  b'{"id": "evt_3", "type": "charge.refunded", "created": 1e20, "data": {"object": {}}}',
                                  b'{"id": "evt_4", "type": "charge.refunded", "data": {"object": {"payment_intent": "'
                                  + b"p" * 300 + b'"}}}'])
def test_a_signed_body_of_any_shape_is_a_clear_answer_never_a_500(client, fake_stripe, body):
    from creditapp.payments.providers.stripe_objects import sign

    response = client.post(HOOK, data=body, headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)})
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    assert response.json.get("error", "invalid_signature") == "invalid_signature" or response.json["received"]


def test_a_dispute_that_races_the_payment_is_not_lost(client, make_user, fake_stripe, monkeypatch):
    """The dispute finds no purchase for its payment intent, then the completion commits (and
    releases what waited for it) before the dispute is marked unmatched: it is applied anyway."""
    from creditapp.payments.inbox import Inbox

    user = make_user()
    purchase = buy(client, user)
    session = session_of(fake_stripe, purchase)
    completed = fake_stripe.complete(session)
    dispute = fake_stripe.dispute(session)
    real = Inbox._by_intent

    def late(self, intent):
        found = real(self, intent)
        monkeypatch.setattr(Inbox, "_by_intent", real)
        assert deliver(client, completed).json["outcome"] == "applied"
        return found

    monkeypatch.setattr(Inbox, "_by_intent", late)
    assert deliver(client, dispute).json["outcome"] == "applied"
    assert client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json["status"] == "disputed"
    assert credits(user) == 0
    ledger_is_clean()


def test_a_lost_dispute_whose_opening_never_came_still_takes_back_and_a_refund_after_it_is_recorded(
        client, make_user, fake_stripe):
    user = make_user()
    purchase = buy(client, user)
    session = session_of(fake_stripe, purchase)
    deliver(client, fake_stripe.complete(session))
    assert deliver(client, fake_stripe.dispute(session, "lost")).json["outcome"] == "applied"
    assert credits(user) == 0
    deliver(client, fake_stripe.refund(session, 500))
    ended = client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json
    assert (ended["status"], ended["refunded"], ended["credits_taken_back"]) == ("dispute_lost", 500, 20)
    assert credits(user) == 0 and debt(client, user)["generation_credits"] == 0
    ledger_is_clean()


def test_reconcile_sees_a_bank_transfer_that_failed_without_its_webhook(app, client, make_user, fake_stripe):
    user = make_user()
    purchase = buy(client, user)
    session = session_of(fake_stripe, purchase)
    deliver(client, fake_stripe.complete(session, paid=False))
    fake_stripe.settle(session, succeeded=False)  # the webhook of the failure never comes
    app.test_cli_runner().invoke(args=["purchases", "reconcile", "--older-than", "0"])
    failed = client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json
    assert (failed["status"], failed["failure_reason"]) == ("failed", "payment_failed")
    assert credits(user) == 0
