"""require_credits on blueprints a developer would write, including the issue's example verbatim."""
from datetime import timedelta

import pytest
from flask import Blueprint, abort, g, jsonify, request
from marshmallow import Schema, fields
from sqlalchemy import select

from creditapp.ai import ai_service
from creditapp.credits import CreditType, InsufficientCredits, credit_service, require_credits
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.ledger.tables import CreditHold


class GenerateSchema(Schema):
    prompt = fields.String(required=True)


generate_schema = GenerateSchema()


def example_blueprint():
    bp = Blueprint("example", __name__, url_prefix="/example")

    # The original design's view, as written in the issue.
    @bp.post("/generate")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def generate_image():
        dto = generate_schema.load(request.get_json())
        result = ai_service.generate_image(dto)            # stubbed AI call
        credit_service.deduct_credits(g.credit_info.user_id, 1, CreditType.GENERATION_CREDITS)
        return result

    @bp.post("/info")
    @require_credits(2, CreditType.GENERATION_CREDITS)
    def info():
        credit_service.deduct_credits(g.credit_info.user_id, 2, CreditType.GENERATION_CREDITS)
        i = g.credit_info
        return {"user_id": i.user_id, "credit_type": i.credit_type.value, "required": i.required,
                "available": i.available}

    @bp.post("/raises")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def raises():
        raise RuntimeError("the view broke")

    @bp.post("/aborts")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def aborts():
        abort(409)

    @bp.post("/error-status")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def error_status():
        return jsonify(error="upstream_busy", message="try later"), 503

    @bp.post("/never-deducts")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def never_deducts():
        return {"free": True}

    @bp.post("/deducts-then-fails")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def deducts_then_fails():
        credit_service.deduct_credits(g.credit_info.user_id, 1, CreditType.GENERATION_CREDITS)
        return jsonify(error="post_processing_failed", message="no image"), 500

    @bp.post("/deducts-more/<int:amount>")
    @require_credits(10, CreditType.AI_TOKENS)
    def deducts_more(amount):
        balance = credit_service.deduct_credits(g.credit_info.user_id, amount, CreditType.AI_TOKENS)
        return {"ai_tokens": balance.ai_tokens}

    @bp.post("/outlives-its-hold")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def outlives_its_hold():
        with atomic() as session:  # as if CREDIT_HOLD_TTL_SECONDS passed during the AI call
            session.execute(CreditHold.__table__.update()
                            .where(CreditHold.id == g.credit_info.hold_id)
                            .values(expires_at=utcnow() - timedelta(seconds=1)))
        credit_service.release_expired()
        credit_service.deduct_credits(g.credit_info.user_id, 1, CreditType.GENERATION_CREDITS)
        return {"image_url": "https://example.com/too-late.png"}

    @bp.post("/priced-by-body")
    @require_credits(lambda: request.get_json()["cost"], CreditType.AI_TOKENS)
    def priced_by_body():
        credit_service.deduct_credits(g.credit_info.user_id, g.credit_info.required, CreditType.AI_TOKENS)
        return {"charged": g.credit_info.required}

    return bp


@pytest.fixture
def app(app):
    app.register_blueprint(example_blueprint())
    return app


def balance(user):
    return credit_service.get_credit_balance(user.id)


def hold_statuses(user):
    with atomic(write=False) as session:
        return session.execute(
            select(CreditHold.status).where(CreditHold.wallet_id == user.id).order_by(CreditHold.id)
        ).scalars().all()


def test_issue_example_charges_exactly_once(client, make_user, stub):
    user = make_user(credits=3)
    response = client.post("/example/generate", json={"prompt": "a cat"}, headers=user.headers)
    assert response.status_code == 200, response.json
    assert response.json["image_url"].startswith("https://")
    assert stub.calls == 1
    assert balance(user).generation_credits == 2
    assert hold_statuses(user) == ["settled"]
    assert credit_service.verify() == []


def test_issue_example_bad_body_is_422_and_free(client, make_user, stub):
    user = make_user(credits=3)
    response = client.post("/example/generate", json={"nope": 1}, headers=user.headers)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    assert response.json["errors"] == {"prompt": ["Missing data for required field."],
                                       "nope": ["Unknown field."]}
    assert stub.calls == 0
    assert balance(user).generation_credits == 3


def test_issue_example_without_credits_is_403_and_calls_no_ai(client, make_user, stub):
    user = make_user(credits=0)
    response = client.post("/example/generate", json={"prompt": "a cat"}, headers=user.headers)
    assert response.status_code == 403
    assert response.json == {
        "error": "insufficient_credits", "message": response.json["message"],
        "required": 1, "available": 0, "credit_type": "generation_credits",
    }
    assert stub.calls == 0
    assert hold_statuses(user) == []


def test_decorator_verifies_the_token_itself(client, stub):
    response = client.post("/example/generate", json={"prompt": "a cat"})
    assert response.status_code == 401
    assert response.json["error"] == "authorization_required"
    assert stub.calls == 0


def test_credit_info(client, make_user):
    user = make_user(credits=5)
    response = client.post("/example/info", headers=user.headers)
    assert response.json == {"user_id": user.id, "credit_type": "generation_credits", "required": 2,
                             "available": 5}


@pytest.mark.parametrize("path, status", [
    ("/example/raises", 500),
    ("/example/aborts", 409),
    ("/example/error-status", 503),
    ("/example/never-deducts", 200),
])
def test_unsettled_hold_is_given_back(client, make_user, path, status):
    user = make_user(credits=1)
    response = client.post(path, headers=user.headers)
    assert response.status_code == status
    assert response.json is not None
    assert balance(user).generation_credits == 1
    assert hold_statuses(user) == ["released"]
    assert credit_service.verify() == []


def test_charge_is_not_committed_when_the_response_is_an_error(client, make_user):
    user = make_user(credits=1)
    response = client.post("/example/deducts-then-fails", headers=user.headers)
    assert response.status_code == 500
    assert balance(user).generation_credits == 1
    assert hold_statuses(user) == ["released"]
    assert credit_service.verify() == []


def test_work_that_outlived_its_hold_is_not_charged_and_its_result_withheld(client, make_user):
    user = make_user(credits=1)
    headers = {**user.headers, "Idempotency-Key": "slow-1"}
    response = client.post("/example/outlives-its-hold", headers=headers)
    assert (response.status_code, response.json["error"]) == (503, "reservation_expired")
    assert "image_url" not in response.json
    assert balance(user).generation_credits == 1
    assert hold_statuses(user) == ["expired"]
    again = client.post("/example/outlives-its-hold", headers=headers)  # the key is free again
    assert "Idempotent-Replayed" not in again.headers
    assert credit_service.verify() == []


def test_deducting_more_than_reserved_takes_the_difference(client, make_user):
    user = make_user(tokens=100)
    response = client.post("/example/deducts-more/25", headers=user.headers)
    assert response.json == {"ai_tokens": 75}
    assert balance(user).ai_tokens == 75
    assert credit_service.verify() == []


def test_deducting_more_than_can_be_paid_is_403_and_free(client, make_user):
    user = make_user(tokens=20)
    response = client.post("/example/deducts-more/25", headers=user.headers)
    assert response.status_code == 403
    assert (response.json["required"], response.json["available"]) == (25, 20)
    assert balance(user).ai_tokens == 20
    assert hold_statuses(user) == ["released"]


def test_deducting_less_than_reserved_gives_back_the_rest(client, make_user):
    user = make_user(tokens=100)
    response = client.post("/example/deducts-more/4", headers=user.headers)
    assert response.json == {"ai_tokens": 96}
    assert credit_service.verify() == []


def test_amount_can_be_computed_from_the_request(client, make_user):
    user = make_user(tokens=10)
    assert client.post("/example/priced-by-body", json={"cost": 7}, headers=user.headers).json == {"charged": 7}
    response = client.post("/example/priced-by-body", json={"cost": 7}, headers=user.headers)
    assert response.status_code == 403
    assert balance(user).ai_tokens == 3


def test_deduct_outside_a_request_still_refuses_overdraft(app, make_user):
    user = make_user(credits=1)
    with pytest.raises(InsufficientCredits):
        credit_service.deduct_credits(user.id, 2, CreditType.GENERATION_CREDITS)
