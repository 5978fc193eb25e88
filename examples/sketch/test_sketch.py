"""A complete test of a new paid feature with creditapp's pytest kit."""
from creditapp.testing import ledger_is_clean


def test_a_sketch_charges_its_price_once(client, make_user, fake_ai):
    user = make_user(credits=3)
    response = client.post("/api/generate/sketch", json={"prompt": "a fox"}, headers=user.headers)
    assert response.status_code == 200
    assert response.json["charged"] == {"credit_type": "generation_credits", "amount": 1}
    assert response.json["balance"]["generation_credits"] == 2
    assert fake_ai.calls == 1
    ledger_is_clean()


def test_a_provider_failure_charges_nothing(client, make_user, fake_ai):
    user = make_user(credits=3)
    fake_ai.fail_next()
    response = client.post("/api/generate/sketch", json={"prompt": "a fox"}, headers=user.headers)
    assert (response.status_code, response.json["error"]) == (502, "generation_failed")
    balance = client.get("/api/credits/balance", headers=user.headers).json
    assert balance["generation_credits"] == 3
    ledger_is_clean()


def test_20_parallel_sketches_with_5_credits_give_exactly_5(make_user, live_server):
    user = make_user(credits=5)
    with live_server(AI_STUB_LATENCY_MS=50) as server:
        answers = server.fire(20, "POST", "/api/generate/sketch", json={"prompt": "a fox"}, headers=user.headers)
        assert server.ai_calls() == 5
    assert sorted(answer.status for answer in answers) == [200] * 5 + [403] * 15
    ledger_is_clean()


def test_the_price_list_has_the_sketch(client):
    costs = {cost["feature"]: cost for cost in client.get("/api/credits/costs").json["costs"]}
    assert costs["sketch"] == {"feature": "sketch", "credit_type": "generation_credits", "cost": 1,
                               "unit": "request", "endpoint": "POST /api/generate/sketch"}


def test_each_sketch_is_kept_in_the_apps_own_table(client, make_user, fake_ai):
    from creditapp import db
    from sketch import sketches

    user = make_user(credits=2)
    fake_ai.fail_next()
    assert client.post("/api/generate/sketch", json={"prompt": "a failed fox"}, headers=user.headers).status_code == 502
    assert client.post("/api/generate/sketch", json={"prompt": "a fox"}, headers=user.headers).status_code == 200
    with db.engine.connect() as connection:
        kept = connection.execute(sketches.select()).all()
    assert [(row.user_id, row.prompt) for row in kept] == [(user.id, "a fox")]
    ledger_is_clean()


def test_a_sketch_only_app_serves_no_built_in_feature(client, make_user):
    user = make_user(credits=3)
    for path in ("/api/generate", "/api/generate/hairstyle", "/api/ai/complete"):
        assert client.post(path, json={"prompt": "a fox"}, headers=user.headers).status_code == 404, path
    assert [cost["feature"] for cost in client.get("/api/credits/costs").json["costs"]] == ["sketch"]
    paths = client.get("/api/openapi.json").json["paths"]
    assert "/api/generate/sketch" in paths
    assert not {"/api/generate", "/api/generate/hairstyle", "/api/ai/complete"} & set(paths)
    assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 3


def test_a_sketch_as_a_job_is_charged_when_it_runs(client, make_user, fake_ai, job_queue):
    user = make_user(credits=3)
    headers = {**user.headers, "Prefer": "respond-async"}
    submitted = client.post("/api/generate/sketch", json={"prompt": "a fox"}, headers=headers)
    assert submitted.status_code == 202
    assert job_queue.drain() == 1
    job = client.get(submitted.headers["Location"], headers=user.headers).json
    assert job["status"] == "succeeded" and fake_ai.calls == 1
    assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 2
    ledger_is_clean()
