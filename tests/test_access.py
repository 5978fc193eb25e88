"""API keys with exact budgets, and team wallets with exact member caps: the routes, the roles,
and budgets that hold under real parallel requests."""
import threading

import pytest
import requests

from creditapp.ledger import credit_service, team_wallet
from creditapp.testing import ledger_is_clean
from creditapp.testing.servers import fire_together

GEN = "/api/generate"


def make_key(client, user, **body):
    response = client.post("/api/keys", json={"name": "server", **body}, headers=user.headers)
    assert response.status_code == 201, response.json
    return response.json


def key_headers(key, header="bearer"):
    return {"Authorization": f"Bearer {key['key']}"} if header == "bearer" else {"X-API-Key": key["key"]}


def generate(client, headers):
    return client.post(GEN, json={"prompt": "a fox"}, headers=headers)


def credits(wallet_id):
    return credit_service.get_credit_balance(wallet_id).generation_credits


def test_a_key_spends_its_users_credits_within_its_budget(client, make_user):
    user = make_user(credits=10)
    key = make_key(client, user, budget={"generation_credits": 3}, budget_period="day")
    assert key["key"].startswith("ck_") and len(key["key"]) >= 40 and key["prefix"] == key["key"][:11]
    assert (key["budget"], key["spent"], key["budget_period"]) == ({"generation_credits": 3}, {}, "day")
    for header in ("bearer", "x-api-key", "bearer"):
        assert generate(client, key_headers(key, header)).status_code == 200
    refused = generate(client, key_headers(key))
    assert refused.status_code == 403 and refused.json["error"] == "key_budget_exceeded"
    assert (refused.json["budget"], refused.json["spent"], refused.json["required"]) == (3, 3, 1)
    assert generate(client, user.headers).status_code == 200  # the user's own token has no budget
    assert credits(user.id) == 6
    shown = client.get(f"/api/keys/{key['id']}", headers=user.headers).json
    assert shown["spent"] == {"generation_credits": 3} and "key" not in shown and shown["last_used_at"]
    assert client.get("/api/credits/balance", headers=key_headers(key)).json["generation_credits"] == 6
    ledger_is_clean()


def test_a_revoked_or_expired_key_is_refused_and_keys_cannot_manage_keys(client, make_user, manual_clock):
    user = make_user(credits=10)
    key = make_key(client, user)
    assert client.post("/api/keys", json={"name": "more"}, headers=key_headers(key)).json["error"] == \
        "login_token_required"
    assert client.get("/api/teams", headers=key_headers(key)).status_code == 403
    assert client.delete(f"/api/keys/{key['id']}", headers=user.headers).status_code == 200
    refused = generate(client, key_headers(key))
    assert (refused.status_code, refused.json["error"]) == (401, "key_revoked")
    assert [k["id"] for k in client.get("/api/keys", headers=user.headers).json["items"]] == []
    soon = (manual_clock.now() if hasattr(manual_clock, "now") else manual_clock.current)
    from datetime import timedelta
    brief = make_key(client, user, expires_at=(soon + timedelta(seconds=60)).isoformat())
    assert generate(client, key_headers(brief)).status_code == 200
    manual_clock.advance(61)
    expired = generate(client, key_headers(brief))
    assert (expired.status_code, expired.json["error"]) == (401, "key_expired")
    forged = generate(client, {"Authorization": "Bearer ck_not-a-key"})
    assert (forged.status_code, forged.json["error"]) == (401, "invalid_key")
    assert credits(user.id) == 9
    ledger_is_clean()


def test_a_key_outside_its_features_is_refused(client, make_user):
    user = make_user(credits=5)
    key = make_key(client, user, features=["upscale"])
    refused = generate(client, key_headers(key))
    assert (refused.status_code, refused.json["error"]) == (403, "feature_not_allowed")
    changed = client.patch(f"/api/keys/{key['id']}", json={"features": None, "budget": {"generation_credits": 1}},
                           headers=user.headers)
    assert changed.status_code == 200 and changed.json["features"] is None
    assert generate(client, key_headers(key)).status_code == 200
    assert generate(client, key_headers(key)).json["error"] == "key_budget_exceeded"


def test_a_budget_period_ends_exactly_at_its_time(client, make_user, manual_clock):
    user = make_user(credits=10)
    key = make_key(client, user, budget={"generation_credits": 2}, budget_period_seconds=60)
    assert [generate(client, key_headers(key)).status_code for _ in range(3)] == [200, 200, 403]
    manual_clock.advance(59.9)
    assert generate(client, key_headers(key)).status_code == 403
    manual_clock.advance(0.1)
    assert [generate(client, key_headers(key)).status_code for _ in range(3)] == [200, 200, 403]
    ledger_is_clean()


def test_bad_key_requests_change_nothing(client, make_user):
    user, other = make_user(), make_user()
    for body in ({}, {"name": ""}, {"name": "x", "budget": {"gold": 1}}, {"name": "x", "budget": {"ai_tokens": -1}},
                 {"name": "x", "budget_period": "hour"}, {"name": "x", "budget_period": "day", "budget_period_seconds": 5},
                 {"name": "x", "expires_at": "2000-01-01T00:00:00Z"}, {"name": "x", "team": 99}):
        response = client.post("/api/keys", json=body, headers=user.headers)
        assert response.status_code in (404, 422), (body, response.json)
    key = make_key(client, user)
    for path in (f"/api/keys/{key['id']}", "/api/keys/99999"):
        assert client.get(path, headers=other.headers).json["error"] == "unknown_key"
        assert client.delete(path, headers=other.headers).status_code == 404
    assert client.post("/api/keys", json={"name": "x"}).status_code == 401


def test_a_team_wallet_shared_by_members_within_their_caps(client, make_user, app):
    owner, admin, member, stranger = (make_user() for _ in range(4))
    team = client.post("/api/teams", json={"name": "Acme"}, headers=owner.headers).json
    assert [m["role"] for m in team["members"]] == ["owner"]
    wallet = team_wallet(team["id"])
    credit_service.grant(wallet, 10, "generation_credits", reason="test", reference="team-grant")
    add = lambda who, body, by=owner: client.post(f"/api/teams/{team['id']}/members",  # noqa: E731
                                                  json={"username": who.username, **body}, headers=by.headers)
    assert add(admin, {"role": "admin"}).status_code == 201
    assert add(member, {"cap": {"generation_credits": 2}, "cap_period": "month"}, by=admin).status_code == 201
    assert add(stranger, {"role": "admin"}, by=admin).json["error"] == "forbidden"
    assert add(member, {}).json["error"] == "already_member"
    team_headers = {**member.headers, "X-Team": str(team["id"])}
    assert [generate(client, team_headers).status_code for _ in range(3)] == [200, 200, 403]
    capped = generate(client, team_headers).json
    assert (capped["error"], capped["budget"], capped["spent"]) == ("member_cap_exceeded", 2, 2)
    assert credits(wallet) == 8 and credits(member.id) == 0
    # Admins may lower a cap, never raise it; the owner may.
    url = f"/api/teams/{team['id']}/members/{member.id}"
    assert client.patch(url, json={"cap": {"generation_credits": 5}}, headers=admin.headers).status_code == 403
    assert client.patch(url, json={"cap": {"generation_credits": 1}}, headers=admin.headers).status_code == 200
    assert client.patch(url, json={"cap": {"generation_credits": 4}}, headers=owner.headers).status_code == 200
    assert generate(client, team_headers).status_code == 200
    shown = client.get(f"/api/teams/{team['id']}", headers=member.headers).json
    row = next(m for m in shown["members"] if m["user_id"] == member.id)
    assert (row["username"], row["cap"], row["spent"]) == (member.username, {"generation_credits": 4},
                                                           {"generation_credits": 3})
    assert client.get(f"/api/teams/{team['id']}/balance", headers=member.headers).json["generation_credits"] == 7
    assert client.get(f"/api/teams/{team['id']}", headers=stranger.headers).json["error"] == "unknown_team"
    assert generate(client, {**stranger.headers, "X-Team": str(team["id"])}).json["error"] == "unknown_team"
    # Removed: the next request from the team wallet is refused.
    assert client.delete(url, headers=admin.headers).status_code == 204
    assert generate(client, team_headers).status_code == 404
    # A team key: only its own budget.
    key = make_key(client, owner, team=team["id"], budget={"generation_credits": 1})
    assert generate(client, key_headers(key)).status_code == 200
    assert generate(client, key_headers(key)).json["error"] == "key_budget_exceeded"
    assert credits(wallet) == 6
    assert make_key.__name__ and client.post("/api/keys", json={"name": "k", "team": team["id"]},
                                             headers=member.headers).status_code in (403, 404)
    admin_user = make_user(admin=True)
    granted = client.post(f"/api/admin/teams/{team['id']}/credits", json={"amount": 4}, headers=admin_user.headers)
    assert granted.status_code == 201 and credits(wallet) == 10
    ledger_is_clean()


@pytest.mark.slow
def test_a_hundred_requests_at_once_on_a_budget_of_seven_give_seven(database_url, make_user, live_server, client):
    user = make_user(credits=100)
    owner, member = make_user(), make_user()
    key = make_key(client, user, budget={"generation_credits": 7})
    team = client.post("/api/teams", json={"name": "Burst"}, headers=owner.headers).json
    credit_service.grant(team_wallet(team["id"]), 100, "generation_credits", reason="test", reference="burst")
    client.post(f"/api/teams/{team['id']}/members", json={"username": member.username,
                                                          "cap": {"generation_credits": 5}}, headers=owner.headers)
    team_key = make_key(client, owner, team=team["id"], budget={"generation_credits": 4})
    with live_server(AI_STUB_LATENCY_MS=20) as server:
        def send(i):
            if i < 100:
                headers = key_headers(key)
            elif i < 150:
                headers = {**member.headers, "X-Team": str(team["id"])}
            else:
                headers = key_headers(team_key)
            return requests.post(f"{server.url}{GEN}", json={"prompt": "x"}, headers=headers, timeout=60).status_code

        statuses = fire_together(200, send)
    assert sorted(statuses[:100]) == [200] * 7 + [403] * 93
    assert sorted(statuses[100:150]) == [200] * 5 + [403] * 45
    assert sorted(statuses[150:]) == [200] * 4 + [403] * 46
    assert credits(user.id) == 93 and credits(team_wallet(team["id"])) == 91
    ledger_is_clean()


def test_a_key_revoked_between_its_check_and_its_hold_takes_nothing(client, make_user, monkeypatch):
    """Revoking closes the key's cap in the same transaction: a request that passed the key check
    just before is refused at the hold, on any worker or host."""
    from creditapp.access import keys as access_keys

    user = make_user(credits=5)
    key = make_key(client, user)
    real = access_keys.authenticate

    def then_revoked(secret):
        found = real(secret)
        assert client.delete(f"/api/keys/{key['id']}", headers=user.headers).status_code == 200
        return found

    monkeypatch.setattr(access_keys, "authenticate", then_revoked)
    refused = generate(client, key_headers(key))
    assert (refused.status_code, refused.json["error"]) == (401, "key_revoked")
    assert credits(user.id) == 5
    ledger_is_clean()


def test_a_teams_owner_buys_a_pack_for_the_team_wallet(client, make_user):
    import re as re_

    owner, member = make_user(credits=1), make_user()
    team = client.post("/api/teams", json={"name": "Buyers"}, headers=owner.headers).json
    client.post(f"/api/teams/{team['id']}/members", json={"username": member.username}, headers=owner.headers)
    refused = client.post("/api/purchases", json={"pack": "starter", "team": team["id"]}, headers=member.headers)
    assert (refused.status_code, refused.json["error"]) == (403, "forbidden")
    stranger = make_user()
    hidden = client.post("/api/purchases", json={"pack": "starter", "team": team["id"]}, headers=stranger.headers)
    assert (hidden.status_code, hidden.json["error"]) == (404, "unknown_team")
    purchase = client.post("/api/purchases", json={"pack": "starter", "team": team["id"]}, headers=owner.headers).json
    assert purchase["team"] == team["id"]
    client.post(re_.sub(r"^https?://[^/]+", "", purchase["checkout_url"]), data={"action": "pay"})
    assert credits(team_wallet(team["id"])) == 20 and credits(owner.id) == 1
    ledger_is_clean()


def _team_with(client, owner, *members):
    team = client.post("/api/teams", json={"name": "T"}, headers=owner.headers).json
    for user, body in members:
        response = client.post(f"/api/teams/{team['id']}/members", json={"username": user.username, **body},
                               headers=owner.headers)
        assert response.status_code == 201, response.json
    credit_service.grant(team_wallet(team["id"]), 50, "generation_credits", reason="t", reference=f"t{team['id']}")
    return team


def test_team_keys_go_with_their_makers_role_and_admins_give_no_more_than_their_own_cap(client, make_user):
    owner, admin, member = make_user(), make_user(), make_user()
    team = _team_with(client, owner, (admin, {"role": "admin", "cap": {"generation_credits": 3}}), (member, {}))
    base = f"/api/teams/{team['id']}"
    # An admin's key, or a member they add, cannot spend past the admin's own cap.
    too_much = client.post("/api/keys", json={"name": "k", "team": team["id"]}, headers=admin.headers)
    assert (too_much.status_code, too_much.json["error"]) == (403, "forbidden")
    key = make_key(client, admin, team=team["id"], budget={"generation_credits": 3})
    assert client.patch(f"/api/keys/{key['id']}", json={"budget": {}}, headers=admin.headers).status_code == 403
    newcomer = make_user()
    assert client.post(f"{base}/members", json={"username": newcomer.username}, headers=admin.headers).status_code == 403
    # Putting a cap on an uncapped member is lowering it.
    assert client.patch(f"{base}/members/{member.id}", json={"cap": {"generation_credits": 2}},
                        headers=admin.headers).status_code == 200
    assert [k["id"] for k in client.get(f"{base}/keys", headers=owner.headers).json["items"]] == [key["id"]]
    assert client.get(f"{base}/keys", headers=member.headers).status_code == 403
    assert client.get(base, headers=member.headers).json["role"] == "member"
    # Demoted: the keys the admin made are revoked with the right to make them.
    assert generate(client, key_headers(key)).status_code == 200
    assert client.patch(f"{base}/members/{admin.id}", json={"role": "member"}, headers=owner.headers).status_code == 200
    assert generate(client, key_headers(key)).json["error"] == "key_revoked"
    revoked = client.patch(f"/api/keys/{key['id']}", json={"name": "again"}, headers=admin.headers)
    assert (revoked.status_code, revoked.json["error"]) == (409, "key_revoked")
    # The owner revokes any team key.
    other = make_key(client, owner, team=team["id"])
    assert client.delete(f"{base}/keys/{other['id']}", headers=owner.headers).status_code == 200
    assert generate(client, key_headers(other)).json["error"] == "key_revoked"
    ledger_is_clean()


def test_a_key_is_not_a_login_and_its_requests_are_its_own(client, make_user, fake_ai):
    admin = make_user(admin=True, credits=5)
    key = make_key(client, admin)
    minted = client.post(f"/api/admin/users/{admin.id}/credits", json={"amount": 1000}, headers=key_headers(key))
    assert (minted.status_code, minted.json["error"]) == (403, "login_token_required")
    with_team = client.post(GEN, json={"prompt": "x"}, headers={**key_headers(key), "X-Team": "1"})
    assert with_team.status_code == 422
    # One Idempotency-Key from the token and from the key names two requests: no replay across.
    first = client.post(GEN, json={"prompt": "x"}, headers={**admin.headers, "Idempotency-Key": "same"})
    assert first.status_code == 200
    other = client.post(GEN, json={"prompt": "x"}, headers={**key_headers(key), "Idempotency-Key": "same"})
    assert (other.status_code, other.json["error"]) == (422, "idempotency_key_reused")
    unknown = client.post("/api/keys", json={"name": "k", "features": ["nope"]}, headers=admin.headers)
    assert unknown.status_code == 422 and "features" in unknown.json["errors"]
    assert credits(admin.id) == 4


def test_changes_at_once_are_one_after_the_other_never_a_500(app, client, make_user):
    """From a black-box run: ten budget changes at once collided on the limits' key, ten adds of
    one member on the members' (500s); a key made while its admin was removed outlived them."""
    owner, admin, member = make_user(), make_user(), make_user()
    team = _team_with(client, owner, (admin, {"role": "admin", "cap": {"generation_credits": 50}}))
    key = make_key(client, owner)

    def at_once(n, request):
        return fire_together(n, lambda i: request(app.test_client(), i))

    budgets = at_once(10, lambda c, i: c.patch(f"/api/keys/{key['id']}", json={"budget": {
        "generation_credits": i, **({"ai_tokens": 5} if i % 2 else {})}}, headers=owner.headers).status_code)
    assert budgets == [200] * 10
    final = client.get(f"/api/keys/{key['id']}", headers=owner.headers).json["budget"]
    assert final in [{"generation_credits": i, **({"ai_tokens": 5} if i % 2 else {})} for i in range(10)]
    adds = at_once(10, lambda c, i: c.post(f"/api/teams/{team['id']}/members", json={"username": member.username},
                                           headers=owner.headers).status_code)
    assert sorted(adds) == [201] + [409] * 9

    def race(c, i):
        if i == 0:
            return c.delete(f"/api/teams/{team['id']}/members/{admin.id}", headers=owner.headers).status_code
        return c.post("/api/keys", json={"name": f"k{i}", "team": team["id"], "budget": {"generation_credits": 5}},
                      headers=admin.headers).status_code

    assert set(at_once(6, race)) <= {201, 204, 404}
    assert client.get(f"/api/teams/{team['id']}/keys", headers=owner.headers).json["items"] == []
    assert client.get(f"/api/teams/{team['id']}/balance", headers=owner.headers).json["generation_credits"] == 50


def test_a_member_removed_and_added_again_keeps_their_cap_and_its_spend(client, make_user):
    owner, admin, member = make_user(), make_user(), make_user()
    team = _team_with(client, owner, (admin, {"role": "admin"}),
                      (member, {"cap": {"generation_credits": 2}, "cap_period": "month"}))
    headers = {**member.headers, "X-Team": str(team["id"])}
    assert [generate(client, headers).status_code for _ in range(2)] == [200, 200]
    base = f"/api/teams/{team['id']}/members"
    assert client.delete(f"{base}/{member.id}", headers=admin.headers).status_code == 204
    # The admin cannot raise it by adding them again, nor reset what they spent this period.
    raised = client.post(base, json={"username": member.username}, headers=admin.headers)
    assert (raised.status_code, raised.json["error"]) == (403, "forbidden")
    again = client.post(base, json={"username": member.username, "cap": {"generation_credits": 2}},
                        headers=admin.headers)
    assert again.status_code == 201 and again.json["spent"] == {"generation_credits": 2}
    assert generate(client, headers).json["error"] == "member_cap_exceeded"
    ledger_is_clean()
