"""An app chooses the built-in paid features it serves (FEATURES, `create_app(features=...)`): one
it leaves out has no route, no entry in the OpenAPI document or the price list, no job run."""
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from creditapp.api import running
from creditapp.api.generate import features as built_in
from creditapp.extensions import db
from creditapp.testing import ledger_is_clean, make_app
from creditapp.testing.servers import ROOT

HAIRSTYLE = {"image_url": "https://example.com/a.png", "hairstyle": "bob"}
ROUTES = {"basic_generation": "/api/generate", "professional_photo": "/api/generate/professional-photo",
          "change_hairstyle": "/api/generate/hairstyle", "upscale": "/api/generate/upscale",
          "ai_complete": "/api/ai/complete"}


@contextmanager
def made(database_url, **settings):
    app = make_app(database_url, **settings)
    try:
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()


def served(app) -> tuple[set, set, list]:
    """What `app` answers for: its paid routes in the URL map, in its document, in its price list."""
    client = app.test_client()
    rules = {rule.rule for rule in app.url_map.iter_rules()} & set(ROUTES.values())
    documented = set(client.get("/api/openapi.json").json["paths"]) & set(ROUTES.values())
    listed = [cost["feature"] for cost in client.get("/api/credits/costs").json["costs"]]
    return rules, documented, listed


def test_the_default_is_every_built_in_feature(app):
    assert app.config["FEATURES"] == list(ROUTES) == built_in.names
    assert served(app) == (set(ROUTES.values()), set(ROUTES.values()), list(ROUTES))


def test_an_app_with_no_built_in_feature_serves_none(database_url, make_user):
    user = make_user(credits=3)
    with made(database_url, FEATURES=[]) as app:
        assert served(app) == (set(), set(), [])
        client = app.test_client()
        assert client.post("/api/generate/hairstyle", json=HAIRSTYLE, headers=user.headers).status_code == 404
        tags = [tag["name"] for tag in client.get("/api/openapi.json").json["tags"]]
        assert "generate" not in tags and "credits" in tags
        assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 3


def test_apps_made_one_after_another_keep_their_own_features(database_url, make_user):
    user = make_user(credits=5)
    with made(database_url) as every, made(database_url, FEATURES="none") as none, \
            made(database_url, FEATURES=["ai_complete", "basic_generation"]) as two:
        # Each asked after all three were made: the last one made changes nothing of the others.
        assert served(every) == (set(ROUTES.values()), set(ROUTES.values()), list(ROUTES))
        assert served(none) == (set(), set(), [])
        assert served(two) == ({"/api/generate", "/api/ai/complete"}, {"/api/generate", "/api/ai/complete"},
                               ["basic_generation", "ai_complete"])  # in their declared order
        assert every.test_client().post("/api/generate/hairstyle", json=HAIRSTYLE,
                                        headers=user.headers).status_code == 200
        assert two.test_client().post("/api/generate/hairstyle", json=HAIRSTYLE, headers=user.headers).status_code == 404
        assert two.test_client().post("/api/generate", json={"prompt": "a fox"}, headers=user.headers).status_code == 200


def test_create_apps_features_argument_wins_over_the_setting(database_url):
    from creditapp import create_app
    from config import TestingConfig

    app = create_app(TestingConfig, {"SQLALCHEMY_DATABASE_URI": database_url, "JOBS_BROKER_URL": "stub://",
                                     "FEATURES": ["upscale"]}, features=["change_hairstyle"])
    try:
        assert app.config["FEATURES"] == ["change_hairstyle"]
        assert served(app)[2] == ["change_hairstyle"]
    finally:
        with app.app_context():
            db.engine.dispose()


@pytest.mark.parametrize("features, unknown", [(["teleport"], "teleport"), (["upscale", "sketch"], "sketch"),
                                               (["all", "upscale"], "all")])  # "all" and "none" stand alone
def test_an_unknown_feature_stops_the_app_from_starting_with_its_name(database_url, features, unknown):
    with pytest.raises(RuntimeError) as refused:
        make_app(database_url, FEATURES=features)
    message = str(refused.value)
    assert message.startswith(f"FEATURES: {unknown!r} is not a built-in feature") and "\n" not in message


def test_a_price_for_a_feature_not_served_stops_the_app_from_starting(database_url):
    with pytest.raises(RuntimeError, match=r"CREDIT_COSTS: features this app does not serve \['upscale'\]"):
        make_app(database_url, FEATURES=["basic_generation"], CREDIT_COSTS={"upscale": 3})
    with made(database_url, FEATURES=["upscale"], CREDIT_COSTS={"upscale": 3}) as app:
        assert app.config["CREDIT_COSTS"] == {"upscale": 3}


def test_features_from_the_environment_are_a_comma_separated_list():
    env = {**os.environ, "FEATURES": " basic_generation, ai_complete ", "PYTHONPATH": str(ROOT)}
    script = "import config; print(config.Config.FEATURES, config.TestingConfig.FEATURES)"
    printed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert printed.stdout.split() == ["['basic_generation',", "'ai_complete']"] * 2


def test_a_worker_does_not_run_a_job_of_a_feature_its_app_does_not_serve(client, make_user, job_queue):
    user = make_user(credits=3)
    submitted = client.post("/api/generate/hairstyle", json=HAIRSTYLE,
                            headers={**user.headers, "Prefer": "respond-async"})
    assert submitted.status_code == 202
    job_id = submitted.json["job_id"]
    with made(client.application.config["SQLALCHEMY_DATABASE_URI"], FEATURES=["basic_generation"]) as worker_app:
        with worker_app.app_context():
            assert running.run(job_id) is None  # done with: not tried again
    job = client.get(submitted.headers["Location"], headers=user.headers).json
    assert (job["status"], job["error"]["error"]) == ("failed", "feature_not_served"), job
    assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 3
    ledger_is_clean()


def test_an_api_key_can_be_limited_only_to_features_the_app_serves(database_url, make_user):
    user = make_user()
    with made(database_url, FEATURES=["basic_generation"]) as app:
        client = app.test_client()
        for features, status in ((["upscale"], 422), (["basic_generation"], 201)):
            made_key = client.post("/api/keys", json={"name": "k", "features": features}, headers=user.headers)
            assert made_key.status_code == status, made_key.json
