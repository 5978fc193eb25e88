"""Start-up checks: production refuses a guessable secret, and the price table is validated and used."""
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from creditapp import settings as config
from creditapp.settings import environment
from creditapp.settings import MIN_SECRET_LENGTH, ProductionConfig, config_from_env
from creditapp.api.generate import features as built_in
from creditapp.features import default_costs
from creditapp import create_app
from creditapp.ai import StubAIProvider, set_provider
from creditapp.extensions import db

from creditapp.testing import make_app
from creditapp.testing.servers import ROOT


@contextmanager
def started(app):
    """Yield an app that create_app returned, and close its pool afterwards."""
    try:
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()


def production_app(database_url: str, secret):
    return create_app(ProductionConfig, {"SQLALCHEMY_DATABASE_URI": database_url, "JWT_SECRET_KEY": secret})


# --- production secrets ---------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "short", "x" * (MIN_SECRET_LENGTH - 1)],
                         ids=["unset", "empty", "short", "one-too-short"])
def test_production_refuses_to_start_without_a_long_secret(database_url, secret):
    with pytest.raises(RuntimeError, match="JWT_SECRET_KEY"):
        production_app(database_url, secret)


def test_production_starts_with_a_long_enough_secret(database_url):
    with started(production_app(database_url, "s" * MIN_SECRET_LENGTH)) as app:
        assert app.config["CREDITAPP_ENV"] == "production"
        assert app.test_client().get("/healthz").status_code == 200


# --- CREDITAPP_ENV --------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("development", config.DevelopmentConfig),
    ("production", ProductionConfig),
    ("testing", config.TestingConfig),
])
def test_config_from_env_picks_the_class(monkeypatch, name, expected):
    monkeypatch.setenv("CREDITAPP_ENV", name)
    assert config_from_env() is expected


def test_config_from_env_defaults_to_development(monkeypatch):
    monkeypatch.delenv("CREDITAPP_ENV", raising=False)
    assert config_from_env() is config.DevelopmentConfig


@pytest.mark.parametrize("name", ["bogus", "Production", ""])
def test_config_from_env_refuses_an_unknown_environment(monkeypatch, name):
    monkeypatch.setenv("CREDITAPP_ENV", name)
    with pytest.raises(RuntimeError, match="CREDITAPP_ENV"):
        config_from_env()


# --- CREDIT_COSTS ---------------------------------------------------------------------------


def costs_with(**changes) -> dict:
    # The built-in features' (the app below serves): other tests in this process declare more.
    costs = {**default_costs(built_in.names), **changes}
    return {name: cost for name, cost in costs.items() if cost is not None}


@pytest.mark.parametrize("costs", [
    pytest.param(costs_with(teleport=1), id="unknown-feature"),
    pytest.param(costs_with(upscale=0), id="zero"),
    pytest.param(costs_with(upscale=-2), id="negative"),
    pytest.param(costs_with(upscale=True), id="bool"),
    pytest.param(costs_with(upscale=1.5), id="fraction"),
    pytest.param(costs_with(upscale="3"), id="string"),
    pytest.param(costs_with(ai_complete=10**6 + 1), id="too-high"),
])
def test_a_bad_price_table_stops_the_app_from_starting(database_url, costs):
    with pytest.raises(RuntimeError, match="CREDIT_COSTS"):
        make_app(database_url, CREDIT_COSTS=costs)


@pytest.mark.parametrize("setting", ["CREDITS_SIGNUP_GRANT", "AI_TOKENS_SIGNUP_GRANT"])
def test_a_negative_signup_grant_stops_the_app_from_starting(database_url, setting):
    with pytest.raises(RuntimeError, match=setting):
        make_app(database_url, **{setting: -1})


def test_credit_costs_environment_variable_overrides_single_prices(monkeypatch):
    monkeypatch.setenv("CREDIT_COSTS", '{"upscale": 3}')
    assert environment._credit_costs() == {"upscale": 3}


def test_a_price_left_out_of_credit_costs_is_the_declared_one(database_url):
    app = make_app(database_url, CREDIT_COSTS={"upscale": 5})
    assert app.config["CREDIT_COSTS"] == {**default_costs(built_in.names), "upscale": 5}
    assert app.config["CREDIT_COSTS"]["basic_generation"] == 1


@pytest.mark.parametrize("raw", ["{upscale: 3}", "[3]", '"upscale"'])
def test_credit_costs_environment_variable_must_be_a_json_object(monkeypatch, raw):
    monkeypatch.setenv("CREDIT_COSTS", raw)
    with pytest.raises(RuntimeError, match="CREDIT_COSTS"):
        environment._credit_costs()


def test_a_changed_price_is_listed_and_charged(database_url, make_user):
    user = make_user(credits=10)  # same database and JWT secret as the app below
    with started(make_app(database_url, CREDIT_COSTS=costs_with(upscale=3))) as app:
        provider = StubAIProvider()
        set_provider(app, provider)
        client = app.test_client()

        listed = {cost["feature"]: cost["cost"] for cost in client.get("/api/credits/costs").json["costs"]}
        response = client.post(
            "/api/generate/upscale", json={"image_url": "https://example.com/a.png", "scale": 2},
            headers=user.headers,
        )

        assert listed["upscale"] == 3
        assert response.status_code == 200, response.json
        assert response.json["charged"] == {"credit_type": "generation_credits", "amount": 3}
        assert response.json["balance"]["generation_credits"] == 7
        assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 7
        assert provider.calls == 1


@pytest.mark.parametrize("hold_ttl, key_ttl", [(600, 600), (600, 300), (3600, 60)])
def test_a_stored_answer_that_could_expire_before_its_request_stops_the_app(database_url, hold_ttl, key_ttl):
    with pytest.raises(RuntimeError, match="IDEMPOTENCY_TTL_SECONDS .* must be longer than CREDIT_HOLD_TTL_SECONDS"):
        make_app(database_url, CREDIT_HOLD_TTL_SECONDS=hold_ttl, IDEMPOTENCY_TTL_SECONDS=key_ttl)


def test_the_key_ttl_check_is_what_the_flask_cli_reports(tmp_path):
    env = {**os.environ, "CREDITAPP_ENV": "testing", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
           "CREDIT_HOLD_TTL_SECONDS": "120", "IDEMPOTENCY_TTL_SECONDS": "60"}
    env.pop("FLASK_APP", None)
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "credits", "verify"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "IDEMPOTENCY_TTL_SECONDS (60) must be longer than CREDIT_HOLD_TTL_SECONDS (120)" in result.stderr


@pytest.mark.parametrize("setting, value", [
    ("CREDIT_HOLD_TTL_SECONDS", 0), ("CREDIT_HOLD_TTL_SECONDS", 300_000_000_000),
    ("IDEMPOTENCY_TTL_SECONDS", 300_000_000_000),
])
def test_a_time_to_live_no_date_can_hold_stops_the_app(database_url, setting, value):
    with pytest.raises(RuntimeError, match=setting):
        make_app(database_url, **{setting: value})


@pytest.mark.parametrize("setting, value", [
    ("JWT_TOKEN_LOCATION", ["foo"]), ("JWT_TOKEN_LOCATION", []),
    ("PAID_RATE_LIMIT", "nonsense"), ("AUTH_RATE_LIMIT", "xx"),  # would switch the limit off, silently
    ("RATELIMIT_STORAGE_URI", "nonsense://x"), ("RATELIMIT_STORAGE_URI", "redis"),
    ("TOKEN_BLOCKLIST_URL", "nonsense"),
])
def test_a_setting_that_would_switch_a_protection_off_stops_the_app(database_url, setting, value):
    with pytest.raises(RuntimeError, match=setting):
        make_app(database_url, **{setting: value})


def test_rate_limits_and_token_places_that_are_right_start(database_url):
    make_app(database_url, JWT_TOKEN_LOCATION=["headers", "cookies"], PAID_RATE_LIMIT="5/minute;100 per hour",
             AUTH_RATE_LIMIT="10 per minute", RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/14",
             TOKEN_BLOCKLIST_URL="redis://127.0.0.1:6379/15")
