"""Balance, history, prices and admin grants through the test client."""
import pytest

from creditapp.credits import credit_service


def test_balance(client, make_user):
    user = make_user(credits=4, tokens=9)
    assert client.get("/api/credits/balance", headers=user.headers).json == {
        "generation_credits": 4, "ai_tokens": 9, "expiring": [],
        "debt": {"generation_credits": 0, "ai_tokens": 0}}


def test_signup_grant_comes_from_config(app, client):
    app.config.update(CREDITS_SIGNUP_GRANT=7, AI_TOKENS_SIGNUP_GRANT=0)
    assert client.post("/api/auth/register", json={"username": "carol", "password": "long-password"}).status_code == 201
    token = client.post("/api/auth/login", json={"username": "carol", "password": "long-password"}).json["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/credits/balance", headers=headers).json == {
        "generation_credits": 7, "ai_tokens": 0, "expiring": [],
        "debt": {"generation_credits": 0, "ai_tokens": 0}}
    items = client.get("/api/credits/transactions", headers=headers).json["items"]
    assert [(i["kind"], i["amount"], i["reason"]) for i in items] == [("grant", 7, "signup grant")]


def test_transactions_pages_with_a_cursor(client, make_user):
    user = make_user(credits=1)
    for amount in range(2, 7):
        credit_service.add_credits(user.id, amount, "generation_credits")
    seen, cursor = [], None
    while True:
        query = "/api/credits/transactions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=user.headers).json
        seen += [item["amount"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1]
    item = client.get("/api/credits/transactions?limit=1", headers=user.headers).json["items"][0]
    assert set(item) >= {"id", "credit_type", "amount", "kind", "balance_after", "created_at"}
    assert item["balance_after"] == 21


def test_transactions_filter_by_credit_type(client, make_user):
    user = make_user(credits=1, tokens=5)
    items = client.get("/api/credits/transactions?credit_type=ai_tokens", headers=user.headers).json["items"]
    assert [(i["credit_type"], i["amount"]) for i in items] == [("ai_tokens", 5)]


def test_transactions_are_private(client, make_user):
    alice, bob = make_user(credits=1), make_user(credits=2)
    items = client.get("/api/credits/transactions", headers=bob.headers).json["items"]
    assert [i["amount"] for i in items] == [2]
    assert alice.id != bob.id


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=abc", "cursor=0",
                                   "cursor=-5", "cursor=9999999999999999999", "credit_type=gold"])
def test_transactions_bad_query_is_422(client, make_user, query):
    user = make_user()
    response = client.get(f"/api/credits/transactions?{query}", headers=user.headers)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"


def test_costs_are_public_and_complete(client):
    costs = client.get("/api/credits/costs").json["costs"]
    assert {c["feature"]: (c["credit_type"], c["cost"]) for c in costs} == {
        "basic_generation": ("generation_credits", 1),
        "professional_photo": ("generation_credits", 1),
        "change_hairstyle": ("generation_credits", 1),
        "upscale": ("generation_credits", 2),
        "ai_complete": ("ai_tokens", 1),
    }


def test_admin_grants_credits(client, make_user):
    admin, user = make_user(admin=True), make_user(credits=1)
    response = client.post(f"/api/admin/users/{user.id}/credits",
                           json={"amount": 10, "credit_type": "generation_credits", "reason": "promo"},
                           headers=admin.headers)
    assert response.status_code == 201
    body = response.json
    grant, lot = body.pop("grant"), body.pop("lot")
    assert body == {"user_id": user.id, "generation_credits": 11, "ai_tokens": 0}
    assert (grant["amount"], grant["credit_type"], grant["reason"], grant["reference"]) == (
        10, "generation_credits", "promo", None)
    assert (lot["granted"], lot["remaining"], lot["held"], lot["priority"], lot["expires_at"], lot["source"],
            lot["status"]) == (10, 10, 0, 50, None, "admin", "active")
    item = client.get("/api/credits/transactions?limit=1", headers=user.headers).json["items"][0]
    assert (item["kind"], item["amount"], item["reason"], item["lot_id"]) == ("grant", 10, "promo", lot["id"])
    tokens = client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 500, "credit_type": "ai_tokens"},
                         headers=admin.headers)
    assert tokens.json["ai_tokens"] == 500


def test_non_admin_cannot_grant(client, make_user):
    user = make_user(credits=1)
    response = client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 10}, headers=user.headers)
    assert response.status_code == 403
    assert response.json["error"] == "forbidden"
    assert credit_service.get_credit_balance(user.id).generation_credits == 1


def test_grant_to_unknown_user_is_404(client, make_user):
    admin = make_user(admin=True)
    response = client.post("/api/admin/users/424242/credits", json={"amount": 10}, headers=admin.headers)
    assert response.status_code == 404
    assert response.json["error"] == "unknown_user"


@pytest.mark.parametrize("body, field", [
    ({}, "amount"),
    ({"amount": 0}, "amount"),
    ({"amount": -5}, "amount"),
    ({"amount": 1.5}, "amount"),
    ({"amount": "10"}, "amount"),
    ({"amount": True}, "amount"),
    ({"amount": 10**13}, "amount"),
    ({"amount": 1, "credit_type": "gold"}, "credit_type"),
    ({"amount": 1, "reason": "x" * 256}, "reason"),
])
def test_invalid_grant_is_422_and_changes_nothing(client, make_user, body, field):
    admin, user = make_user(admin=True), make_user(credits=1)
    response = client.post(f"/api/admin/users/{user.id}/credits", json=body, headers=admin.headers)
    assert response.status_code == 422
    assert field in response.json["errors"]
    assert credit_service.get_credit_balance(user.id).generation_credits == 1


def test_grant_needs_a_token(client, make_user):
    user = make_user()
    assert client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 1}).status_code == 401
