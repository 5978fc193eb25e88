"""paid_feature for features an app adds: the order of its checks, its prices, its documented
answers, and the edges an adversarial review found (dates in a job's arguments, holds larger
than any balance, a charge of nothing, GET features and HEAD, query strings under an
Idempotency-Key, features that collide)."""
import uuid

import pytest
from marshmallow import Schema, fields, validate

from creditapp import features
from creditapp.ai import ai_service
from creditapp.api.bodies import Blueprint
from creditapp.api.errors import error_response
from creditapp.api.schemas import GenerationResponseSchema
from creditapp.credits import CreditType, charge_and_answer, paid_feature
from creditapp.jobs.queue import job_queue
from creditapp.testing import ledger_is_clean

from .test_jobs import credits


class DatedSchema(Schema):
    prompt = fields.String(required=True, validate=validate.Length(min=1, max=100))
    day = fields.Date(required=True)


class BulkSchema(Schema):
    prompt = fields.String(required=True)
    n = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class CachedSchema(Schema):
    prompt = fields.String(required=True)
    cached = fields.Boolean(load_default=False)


class TopicSchema(Schema):
    topic = fields.String(load_default="news", validate=validate.Length(min=1, max=50))


PREFIX = "/api/extra"


@pytest.fixture
def creditapp_blueprints():
    """The kit's app gets a blueprint of features declared for this test only (the price list is
    restored afterwards)."""
    saved = (dict(features.FEATURES), dict(features._BY_ENDPOINT), dict(features._VIEWS))
    blp = Blueprint(f"extra{uuid.uuid4().hex[:8]}", __name__, url_prefix=PREFIX)
    common = {"credit_type": CreditType.GENERATION_CREDITS, "response": GenerationResponseSchema}

    @paid_feature(blp, "/dated", name="dated", price=1, request=DatedSchema, **common)
    def dated(params):
        assert type(params["day"]).__name__ == "date"  # as the schema made it, in a job too
        return charge_and_answer(ai_service.generate_image({"prompt": params["prompt"]}, feature="dated"))

    @paid_feature(blp, "/bulk", name="bulk", price=10_000, hold=lambda params, price: params["n"] * price,
                  request=BulkSchema, **common)
    def bulk(params):
        return charge_and_answer(ai_service.generate_image(params, feature="bulk"))

    @paid_feature(blp, "/cached", name="cached", price=1, request=CachedSchema, **common)
    def cached(params):
        return charge_and_answer({"feature": "cached", "image_url": "https://cache.invalid/1.png"},
                                 0 if params["cached"] else None)

    @paid_feature(blp, "/picky", name="picky", price=1, request=TopicSchema, **common)
    def picky(params):
        answer = charge_and_answer(ai_service.generate_image(params, feature="picky"))
        if params["topic"] == "nope":  # an error answer, after the AI call and a deduct
            return error_response(422, "unsuitable", "Not this topic.")
        return answer

    @paid_feature(blp, "/peek", name="peek", price=1, method="GET", request=TopicSchema, **common)
    def peek(params):
        return charge_and_answer(ai_service.generate_image(params, feature=params["topic"]))

    try:
        yield [blp]
    finally:
        for registry, items in zip((features.FEATURES, features._BY_ENDPOINT, features._VIEWS), saved):
            registry.clear()
            registry.update(items)


def test_a_job_gets_its_arguments_with_the_types_the_schema_made(client, make_user, fake_ai):
    user = make_user(credits=5)
    response = client.post(f"{PREFIX}/dated", json={"prompt": "a fox", "day": "2030-01-02"},
                           headers={**user.headers, "Prefer": "respond-async"})
    assert response.status_code == 202, response.json
    job_queue().drain()
    assert client.get(response.headers["Location"], headers=user.headers).json["status"] == "succeeded"
    assert (credits(user), fake_ai.calls) == (4, 1)


def test_a_hold_larger_than_any_balance_is_a_403_not_a_500(client, make_user):
    response = client.post(f"{PREFIX}/bulk", json={"prompt": "x", "n": 10**9}, headers=make_user(credits=5).headers)
    assert response.status_code == 403 and response.json["error"] == "insufficient_credits"
    assert (response.json["required"], response.json["available"]) == (10**13, 5)


def test_a_charge_of_nothing_answers_and_gives_the_hold_back(client, make_user):
    user = make_user(credits=5)
    response = client.post(f"{PREFIX}/cached", json={"prompt": "x", "cached": True}, headers=user.headers)
    assert response.status_code == 200, response.json
    assert response.json["charged"]["amount"] == 0 and response.json["balance"]["generation_credits"] == 5
    assert credits(user) == 5
    ledger_is_clean()


def test_a_get_feature_reads_the_query_and_head_never_runs_it(client, make_user, fake_ai):
    extra_user, prefix = make_user(credits=5), PREFIX
    assert client.get(f"{prefix}/peek?topic=" + "x" * 100, headers=extra_user.headers).status_code == 422
    answer = client.get(f"{prefix}/peek?topic=cats", headers=extra_user.headers)
    assert answer.status_code == 200 and answer.json["result"]["feature"] == "cats"
    head = client.head(f"{prefix}/peek?topic=cats", headers=extra_user.headers)
    assert head.status_code == 405 and head.headers["Allow"] == "GET"
    assert (fake_ai.calls, credits(extra_user)) == (1, 4)
    document = client.get("/api/openapi.json").json["paths"][f"{prefix}/peek"]["get"]
    assert "requestBody" not in document and any(p["name"] == "topic" for p in document["parameters"])


def test_one_key_with_another_query_is_another_request(client, make_user, fake_ai):
    extra_user, prefix = make_user(credits=5), PREFIX
    headers = {**extra_user.headers, "Idempotency-Key": "peek-1"}
    assert client.get(f"{prefix}/peek?topic=cats", headers=headers).status_code == 200
    again = client.get(f"{prefix}/peek?topic=cats", headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = client.get(f"{prefix}/peek?topic=dogs", headers=headers)
    assert (other.status_code, other.json["error"]) == (422, "idempotency_key_reused")
    assert fake_ai.calls == 1


def test_a_feature_on_a_route_that_sells_another_is_refused(app):
    blp = Blueprint(f"clash{uuid.uuid4().hex[:6]}", __name__, url_prefix="/api")
    with pytest.raises(ValueError, match="already sells feature 'basic_generation'"):
        @paid_feature(blp, "/generate", name="deluxe", credit_type="generation_credits", price=5,
                      request=TopicSchema, response=GenerationResponseSchema)
        def deluxe(params):
            return charge_and_answer({})


def test_one_feature_sold_by_two_views_is_refused(app):
    blp = Blueprint(f"twice{uuid.uuid4().hex[:6]}", __name__, url_prefix=f"{PREFIX}/other")
    with pytest.raises(ValueError, match="declared twice"):
        @paid_feature(blp, "/cached", name="cached", credit_type=CreditType.GENERATION_CREDITS,
                      price=1, request=CachedSchema, response=GenerationResponseSchema)
        def cached(params):
            return charge_and_answer({})


def test_an_error_answer_is_never_charged_sync_or_as_a_job(client, make_user, fake_ai):
    user = make_user(credits=5)
    refused = client.post(f"{PREFIX}/picky", json={"topic": "nope"}, headers=user.headers)
    assert (refused.status_code, refused.json["error"]) == (422, "unsuitable")
    submitted = client.post(f"{PREFIX}/picky", json={"topic": "nope"},
                            headers={**user.headers, "Prefer": "respond-async"})
    assert submitted.status_code == 202
    job_queue().drain()
    job = client.get(submitted.headers["Location"], headers=user.headers).json
    assert (job["status"], job["error"]["error"], job["attempts"]) == ("failed", "unsuitable", 1)
    assert (credits(user), fake_ai.calls) == (5, 2)  # not tried again, not charged
    ledger_is_clean()


def test_a_get_feature_needs_the_csrf_token_when_the_token_is_a_cookie(database_url, creditapp_blueprints,
                                                                      make_user):
    """A cross-site link or `<form method="get">` carries the SameSite=Lax cookies but can never
    carry the CSRF header: without it a GET feature is refused before anything is held."""
    from creditapp.testing import make_app

    browser_app = make_app(database_url, creditapp_blueprints, JWT_TOKEN_LOCATION=["headers", "cookies"])
    user = make_user(credits=5)
    browser = browser_app.test_client()
    assert browser.post("/api/auth/login", json={"username": user.username, "password": user.password}).status_code == 200
    csrf = browser.get_cookie("csrf_access_token").value

    for forged in ({}, {"X-CSRF-TOKEN": "not-the-token"}):
        refused = browser.get(f"{PREFIX}/peek?topic=cats", headers=forged)
        assert (refused.status_code, refused.json["error"]) == (401, "authorization_required"), refused.json
        assert "CSRF" in refused.json["message"]
    async_refused = browser.get(f"{PREFIX}/peek?topic=cats", headers={"Prefer": "respond-async"})
    assert async_refused.status_code == 401
    assert credits(user) == 5

    assert browser.get(f"{PREFIX}/peek?topic=cats", headers={"X-CSRF-TOKEN": csrf}).status_code == 200
    # A script or server with the token in the Authorization header has no cookie to forge.
    assert browser_app.test_client().get(f"{PREFIX}/peek?topic=cats", headers=user.headers).status_code == 200
    assert browser.get("/api/credits/balance").status_code == 200  # a read needs no CSRF token
    assert credits(user) == 3
    ledger_is_clean()
