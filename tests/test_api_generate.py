"""The paid routes through the test client: charge exactly the price, or nothing."""
import pytest
from sqlalchemy import func, select

from creditapp.credits import credit_service
from creditapp.ledger.transactions import atomic
from creditapp.ledger.tables import CreditHold, LedgerEntry

IMAGE = "https://example.com/me.jpg"
ROUTES = [
    ("/api/generate", {"prompt": "a lighthouse at dusk"}, 1),
    ("/api/generate/professional-photo", {"image_url": IMAGE}, 1),
    ("/api/generate/hairstyle", {"image_url": IMAGE, "hairstyle": "bob cut"}, 1),
    ("/api/generate/upscale", {"image_url": IMAGE, "scale": 4}, 2),
]


def ledger_size():
    with atomic(write=False) as session:
        return session.execute(select(func.count()).select_from(LedgerEntry)).scalar()


def hold_count():
    with atomic(write=False) as session:
        return session.execute(select(func.count()).select_from(CreditHold)).scalar()


@pytest.mark.parametrize("path, body, cost", ROUTES)
def test_paid_route_charges_its_price(client, make_user, stub, path, body, cost):
    user = make_user(credits=5, tokens=7)
    response = client.post(path, json=body, headers=user.headers)
    assert response.status_code == 200, response.json
    assert response.json["charged"] == {"credit_type": "generation_credits", "amount": cost}
    assert response.json["balance"] == {"generation_credits": 5 - cost, "ai_tokens": 7}
    assert response.json["result"]["image_url"].startswith("https://")
    assert stub.calls == 1
    assert credit_service.verify() == []


@pytest.mark.parametrize("path, body, cost", ROUTES)
def test_too_few_credits_is_403_and_changes_nothing(client, make_user, stub, path, body, cost):
    user = make_user(credits=cost - 1)
    before = ledger_size()
    response = client.post(path, json=body, headers=user.headers)
    assert response.status_code == 403
    assert response.json == {
        "error": "insufficient_credits", "message": response.json["message"],
        "required": cost, "available": cost - 1, "credit_type": "generation_credits",
    }
    assert stub.calls == 0
    assert ledger_size() == before


@pytest.mark.parametrize("path, body, field", [
    ("/api/generate", {}, "prompt"),
    ("/api/generate", {"prompt": ""}, "prompt"),
    ("/api/generate", {"prompt": "x" * 2001}, "prompt"),
    ("/api/generate", {"prompt": 5}, "prompt"),
    ("/api/generate", {"prompt": "ok", "extra": 1}, "extra"),
    ("/api/generate/professional-photo", {"image_url": "not a url"}, "image_url"),
    ("/api/generate/professional-photo", {"image_url": "ftp://example.com/a.png"}, "image_url"),
    ("/api/generate/hairstyle", {"image_url": IMAGE}, "hairstyle"),
    ("/api/generate/upscale", {"image_url": IMAGE, "scale": 3}, "scale"),
    ("/api/generate/upscale", {"image_url": IMAGE, "scale": "2"}, "scale"),
    ("/api/generate/upscale", {"image_url": IMAGE, "scale": 2.0}, "scale"),
    ("/api/generate/upscale", {"image_url": IMAGE, "scale": True}, "scale"),
    ("/api/ai/complete", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/api/ai/complete", {"prompt": "hi", "max_tokens": 4097}, "max_tokens"),
    ("/api/ai/complete", {"prompt": "hi"}, "max_tokens"),
])
def test_invalid_input_is_422_before_any_hold(client, make_user, stub, path, body, field):
    user = make_user(credits=5, tokens=5000)
    before = ledger_size()
    response = client.post(path, json=body, headers=user.headers)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    assert field in response.json["errors"]
    assert (stub.calls, hold_count(), ledger_size()) == (0, 0, before)


@pytest.mark.parametrize("data, content_type, status", [
    ("{not json", "application/json", 400),
    ('["a", "list"]', "application/json", 422),
    ("prompt=hi", "application/x-www-form-urlencoded", 422),
])
def test_unparseable_bodies_reserve_nothing(client, make_user, stub, data, content_type, status):
    user = make_user(credits=5)
    response = client.post("/api/generate", data=data, content_type=content_type, headers=user.headers)
    assert response.status_code == status
    assert {"error", "message"} <= set(response.json)
    assert (stub.calls, hold_count()) == (0, 0)


def test_authentication_comes_before_validation(client, stub):
    response = client.post("/api/generate", json={})
    assert response.status_code == 401
    assert response.json["error"] == "authorization_required"


def test_failed_generation_is_502_and_free(client, make_user, stub):
    user = make_user(credits=2)
    stub.failure_rate = 1.0
    response = client.post("/api/generate", json={"prompt": "a cat"}, headers=user.headers)
    assert response.status_code == 502
    assert response.json["error"] == "generation_failed"
    assert stub.calls == 1
    assert credit_service.get_credit_balance(user.id).generation_credits == 2
    assert credit_service.verify() == []


def test_ai_complete_reserves_the_worst_case_and_charges_usage(client, make_user, stub):
    user = make_user(tokens=100)
    prompt = "Write a haiku about credits, please."  # 8 tokens for the stub's tokenizer
    response = client.post("/api/ai/complete", json={"prompt": prompt, "max_tokens": 50}, headers=user.headers)
    assert response.status_code == 200, response.json
    usage = response.json["usage"]
    assert usage["prompt_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 50
    assert response.json["charged"] == {"credit_type": "ai_tokens", "amount": usage["total_tokens"]}
    assert response.json["balance"]["ai_tokens"] == 100 - usage["total_tokens"]
    history = client.get("/api/credits/transactions?limit=3", headers=user.headers).json["items"]
    assert [(i["kind"], i["amount"], i["held_change"]) for i in history] == [
        ("release", 58 - usage["total_tokens"], -(58 - usage["total_tokens"])),
        ("settle", 0, -usage["total_tokens"]),
        ("hold", -58, 58),
    ]
    assert credit_service.verify() == []


def test_ai_complete_needs_tokens_for_the_worst_case(client, make_user, stub):
    user = make_user(tokens=20)
    response = client.post("/api/ai/complete", json={"prompt": "hello", "max_tokens": 50}, headers=user.headers)
    assert response.status_code == 403
    assert response.json["required"] == 51
    assert response.json["credit_type"] == "ai_tokens"
    assert stub.calls == 0


def test_spending_until_empty(client, make_user, stub):
    user = make_user(credits=3)
    statuses = [client.post("/api/generate", json={"prompt": "p"}, headers=user.headers).status_code
                for _ in range(5)]
    assert statuses == [200, 200, 200, 403, 403]
    assert stub.calls == 3
    assert client.get("/api/credits/balance", headers=user.headers).json == {
        "generation_credits": 0, "ai_tokens": 0, "expiring": [],
        "debt": {"generation_credits": 0, "ai_tokens": 0}}
