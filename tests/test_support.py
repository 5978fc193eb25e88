"""The support view: administrators find accounts, read them whole, find a charge and refund it,
disable an account (its tokens and keys refused at the next request), and every action they take
is logged in its own transaction. Through the test client, on both databases."""
from creditapp import admin_actions, users
from creditapp.exceptions import NotAdmin
from creditapp.ledger import credit_service, team_wallet
from creditapp.testing import ledger_is_clean, make_app
from creditapp.testing.servers import fire_together
from .test_tokens import bearer, blocklist_app, login  # noqa: F401  (a fixture)

GENERATE = "/api/generate"


def key_of(client, user, **body) -> str:
    response = client.post("/api/keys", json={"name": "k", **body}, headers=user.headers)
    assert response.status_code == 201, response.json
    return response.json["key"]


def patch(client, admin, user_id, **body):
    return client.patch(f"/api/admin/users/{user_id}", json=body, headers=admin.headers)


def test_users_are_found_by_a_part_of_their_name_or_their_id_a_stable_page_at_a_time(client, make_user):
    admin = make_user(admin=True, username="boss")  # no digit in any name: a number finds only its id
    found = [make_user(username=f"Findme{letter}") for letter in "abcde"]
    make_user(username="someoneelse")
    seen, cursor = [], None
    for _ in range(4):
        query = {"query": "FINDME", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/admin/users", query_string=query, headers=admin.headers).json
        seen += [item["username"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [u.username for u in found]
    by_id = client.get("/api/admin/users", query_string={"query": str(found[3].id)}, headers=admin.headers).json
    assert [item["id"] for item in by_id["items"]] == [found[3].id]
    assert by_id["items"][0] == {"id": found[3].id, "username": "Findmed", "is_admin": False, "disabled": False,
                                 "created_at": by_id["items"][0]["created_at"]}
    # A LIKE wildcard is a plain character, not "anything".
    assert client.get("/api/admin/users", query_string={"query": "%"}, headers=admin.headers).json["items"] == []
    # An id is ASCII decimal as everywhere else: these are (absent) names, not the id.
    for odd in ("²", "０" + str(found[3].id), "0" + str(found[3].id), chr(0x0660 + found[3].id % 10)):
        answer = client.get("/api/admin/users", query_string={"query": odd}, headers=admin.headers)
        assert answer.status_code == 200 and answer.json["items"] == [], (odd, answer.json)
    for bad in ({"cursor": "not-ours"}, {"cursor": "MTI"}, {"limit": 0}, {"query": "x" * 65}, {"query": "a\x00"},
                {"query": "\n"}):
        response = client.get("/api/admin/users", query_string=bad, headers=admin.headers)
        assert (response.status_code, response.json["error"]) == (422, "validation_error"), bad
    response = client.get("/api/admin/users", headers=found[0].headers)
    assert (response.status_code, response.json["error"]) == (403, "forbidden")


def test_an_account_page_shows_balance_held_and_debt_lots_holds_ledger_and_jobs(client, make_user, stub, job_queue):
    admin, user = make_user(admin=True), make_user(credits=5, tokens=100)
    assert client.post(GENERATE, json={"prompt": "a"}, headers=user.headers).status_code == 200
    queued = client.post(GENERATE, json={"prompt": "b"}, headers={**user.headers, "Prefer": "respond-async"})
    assert queued.status_code == 202
    hold = credit_service.reserve(user.id, 2, "generation_credits")
    account = client.get(f"/api/admin/users/{user.id}", headers=admin.headers).json
    assert account["user"]["username"] == user.username and account["user"]["teams"] == []
    # 5 granted, 1 charged, 1 held by the queued job, 2 by the open hold.
    assert account["balance"]["generation_credits"] == {"spendable": 1, "held": 3, "debt": 0}
    assert account["balance"]["ai_tokens"] == {"spendable": 100, "held": 0, "debt": 0}
    assert sorted(h["held"] for h in account["holds"]) == [1, 2] and hold.hold_id in [h["id"] for h in account["holds"]]
    assert sorted(lot["granted"] for lot in account["lots"]) == [5, 100]
    own = client.get("/api/credits/transactions", headers=user.headers).json["items"]
    assert account["transactions"] == own
    assert [job["job_id"] for job in account["jobs"]] == [queued.json["job_id"]]
    # As the user's own listing shows it, times in ISO 8601 included.
    assert account["jobs"] == client.get("/api/jobs", headers=user.headers).json["items"]
    assert account["purchases"] == [] and account["actions"] == []
    missing = client.get("/api/admin/users/999999", headers=admin.headers)
    assert (missing.status_code, missing.json["error"]) == (404, "unknown_user")
    credit_service.close(hold, succeeded=False)
    job_queue.drain()
    ledger_is_clean()


def test_a_users_transactions_read_by_an_admin_are_the_users_own_page_for_page(client, make_user, stub):
    admin, user = make_user(admin=True), make_user(credits=4)
    for prompt in "abc":
        assert client.post(GENERATE, json={"prompt": prompt}, headers=user.headers).status_code == 200
    cursor, mine = None, []
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        own = client.get("/api/credits/transactions", query_string=query, headers=user.headers).json
        seen = client.get(f"/api/admin/users/{user.id}/transactions", query_string=query, headers=admin.headers).json
        assert seen == own
        mine += own["items"]
        cursor = own["next_cursor"]
        if cursor is None:
            break
    assert len(mine) == 7  # the grant, and a hold and its settle per charge
    response = client.get(f"/api/admin/users/{user.id}/transactions", headers=user.headers)
    assert response.status_code == 403


def test_a_charge_found_by_user_is_refunded_with_its_id_and_the_refund_is_logged(client, make_user, stub):
    admin, user, other = make_user(admin=True), make_user(credits=5), make_user(credits=5)
    for prompt in "abc":
        assert client.post(GENERATE, json={"prompt": prompt}, headers=user.headers).status_code == 200
    assert client.post(GENERATE, json={"prompt": "x"}, headers=other.headers).status_code == 200
    first = client.get("/api/admin/charges", query_string={"user_id": user.id, "limit": 2}, headers=admin.headers).json
    rest = client.get("/api/admin/charges", query_string={"user_id": user.id, "cursor": first["next_cursor"]},
                      headers=admin.headers).json
    charges = first["items"] + rest["items"]
    assert rest["next_cursor"] is None and len(charges) == 3
    assert [c["id"] for c in charges] == sorted((c["id"] for c in charges), reverse=True)  # newest first
    assert {(c["status"], c["charged"], c["refundable"], c["feature"]) for c in charges} == {("settled", 1, 1, "basic_generation")}
    refund = client.post(f"/api/admin/charges/{charges[1]['id']}/refund", json={"reason": "complaint"},
                         headers=admin.headers)
    assert refund.status_code == 200, refund.json
    again = client.get("/api/admin/charges", query_string={"user_id": user.id}, headers=admin.headers).json["items"]
    assert [(c["refunded"], c["refundable"]) for c in again] == [(0, 1), (1, 0), (0, 1)]
    logged = client.get("/api/admin/actions", headers=admin.headers).json["items"]
    assert [(a["action"], a["actor_user_id"], a["actor_username"], a["target_user_id"]) for a in logged] == [
        ("refund", admin.id, admin.username, user.id)]
    assert logged[0]["details"]["charge_id"] == charges[1]["id"] and logged[0]["details"]["amount"] == 1
    for bad in ({}, {"user_id": "x"}, {"user_id": user.id, "cursor": "0"}):
        assert client.get("/api/admin/charges", query_string=bad, headers=admin.headers).status_code == 422, bad
    assert client.get("/api/admin/charges", query_string={"user_id": 999999},
                      headers=admin.headers).json["error"] == "unknown_user"
    ledger_is_clean()


def test_a_disabled_account_is_refused_everywhere_at_once_and_enabled_again(client, make_user, stub):
    admin, user = make_user(admin=True), make_user(credits=10)
    tokens = login(client, user)
    team = client.post("/api/teams", json={"name": "Acme"}, headers=user.headers).json
    credit_service.grant(team_wallet(team["id"]), 5, "generation_credits", reason="team credits")
    personal, team_key = key_of(client, user), key_of(client, user, team=team["id"])
    assert client.post(GENERATE, json={"prompt": "before"}, headers=bearer(personal)).status_code == 200

    changed = patch(client, admin, user.id, disabled=True)
    assert changed.status_code == 200 and changed.json["disabled"] is True
    refused = [
        client.post(GENERATE, json={"prompt": "x"}, headers=user.headers),
        client.post(GENERATE, json={"prompt": "x"}, headers={**user.headers, "Idempotency-Key": "k"}),
        client.get("/api/credits/balance", headers=user.headers),  # PostgreSQL: the check is in the balance call
        client.get("/api/credits/lots", headers=user.headers),
        client.get("/api/users/me", headers=user.headers),
        client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])),
        client.post(GENERATE, json={"prompt": "x"}, headers=bearer(personal)),
        client.get("/api/credits/balance", headers={"X-API-Key": personal}),
        client.post(GENERATE, json={"prompt": "x"}, headers=bearer(team_key)),  # a team key acts as its maker
        client.post("/api/auth/login", json={"username": user.username, "password": user.password}),
        client.post(GENERATE, json={}, headers=user.headers),  # refused before its body is read
    ]
    assert [(r.status_code, r.json["error"]) for r in refused] == [(403, "account_disabled")] * len(refused)
    wrong = client.post("/api/auth/login", json={"username": user.username, "password": "not-the-password-at-all"})
    assert wrong.json["error"] == "invalid_credentials"  # the state is told only to who knows the password
    assert stub.calls == 1
    assert credit_service.get_credit_balance(user.id).generation_credits == 9

    assert patch(client, admin, user.id, disabled=False).json["disabled"] is False
    assert client.post(GENERATE, json={"prompt": "after"}, headers=user.headers).status_code == 200
    assert client.post(GENERATE, json={"prompt": "after"}, headers=bearer(team_key)).status_code == 200
    assert client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])).status_code == 200
    actions = [a["action"] for a in admin_actions.recent(target_user_id=user.id)]
    assert actions == ["user.enabled", "user.disabled"]
    ledger_is_clean()


def test_a_disabled_accounts_cookies_are_refused(database_url, make_user):
    admin, user = make_user(admin=True), make_user(credits=2)
    app = make_app(database_url, JWT_TOKEN_LOCATION=["cookies"])
    with app.app_context():
        browser = app.test_client()
        browser.post("/api/auth/login", json={"username": user.username, "password": user.password})
        assert browser.get("/api/credits/balance").status_code == 200
        users.set_access(admin.id, user.id, disabled=True)
        csrf = browser.get_cookie("csrf_refresh_token").value
        refused = [browser.get("/api/credits/balance"),
                   browser.post("/api/auth/refresh", headers={"X-CSRF-TOKEN": csrf})]
        assert [(r.status_code, r.json["error"]) for r in refused] == [(403, "account_disabled")] * 2


def test_a_disabled_account_is_refused_by_another_host_whichever_blocklist(blocklist_app, client, make_user):
    """The flag is in the database even when logouts are kept in Redis: another app (host) on
    the same database refuses the account at its next request."""
    admin, user = make_user(admin=True), make_user(credits=2)
    other_host = blocklist_app.test_client()
    assert other_host.get("/api/credits/balance", headers=user.headers).status_code == 200
    assert patch(client, admin, user.id, disabled=True).status_code == 200
    for response in (other_host.get("/api/credits/balance", headers=user.headers),
                     other_host.post(GENERATE, json={"prompt": "x"}, headers=user.headers)):
        assert (response.status_code, response.json["error"]) == (403, "account_disabled")


def test_access_changes_are_checked_and_take_effect_at_once(client, make_user):
    admin, other, user = make_user(admin=True), make_user(admin=True), make_user()
    for body in ({"disabled": True}, {"is_admin": False}, {"disabled": True, "is_admin": True}):
        response = patch(client, admin, admin.id, **body)
        assert (response.status_code, response.json["error"]) == (409, "cannot_change_own_access"), body
    assert patch(client, admin, admin.id, is_admin=True, disabled=False).status_code == 200  # no change: allowed
    for body in ({}, {"disabled": "yes"}, {"disabled": 1}, {"is_admin": None}, {"disabled": True, "extra": 1}):
        response = patch(client, admin, user.id, **body)
        assert (response.status_code, response.json["error"]) == (422, "validation_error"), body
    assert patch(client, user, other.id, is_admin=False).json["error"] == "forbidden"
    assert patch(client, admin, 999999, disabled=True).json["error"] == "unknown_user"

    assert patch(client, admin, other.id, is_admin=False).json["is_admin"] is False
    demoted = client.get("/api/admin/users", headers=other.headers)
    assert (demoted.status_code, demoted.json["error"]) == (403, "forbidden")
    assert patch(client, admin, user.id, is_admin=True).json["is_admin"] is True
    assert client.get("/api/admin/users", headers=user.headers).status_code == 200
    key = key_of(client, admin)
    response = client.patch(f"/api/admin/users/{user.id}", json={"disabled": True}, headers=bearer(key))
    assert response.json["error"] == "login_token_required"  # a leaked key cannot lock people out
    assert [a["action"] for a in admin_actions.recent()] == ["user.admin_granted", "user.admin_revoked"]


def test_two_admins_demoting_each_other_at_once_leave_one_in_charge(app, make_user):
    first, second = make_user(admin=True), make_user(admin=True)

    def demote(i):
        actor, target = (first, second) if i % 2 == 0 else (second, first)
        with app.app_context():
            try:
                return users.set_access(actor.id, target.id, is_admin=False)["id"]
            except NotAdmin:
                return "refused"

    results = fire_together(2, demote)
    assert sorted(results, key=str) in ([first.id, "refused"], [second.id, "refused"])
    admins = [users.profile(u.id)["is_admin"] for u in (first, second)]
    assert sorted(admins) == [False, True]
    assert len(admin_actions.recent()) == 1


def test_every_admin_action_is_logged_in_its_own_transaction(client, make_user):
    admin, user = make_user(admin=True), make_user(credits=3)
    team = client.post("/api/teams", json={"name": "T"}, headers=user.headers).json
    grant = client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 4, "reference": "r-1"},
                        headers=admin.headers)
    assert grant.status_code == 201
    again = client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 4, "reference": "r-1"},
                        headers=admin.headers)
    assert again.status_code == 200  # answered by its reference: nothing granted, nothing logged
    assert client.post(f"/api/admin/teams/{team['id']}/credits", json={"amount": 2},
                       headers=admin.headers).status_code == 201
    lot = grant.json["lot"]["id"]
    assert client.post(f"/api/admin/lots/{lot}/void", json={"reason": "chargeback"},
                       headers=admin.headers).status_code == 200
    failed = client.post(f"/api/admin/lots/{lot}/void", json={"reason": "twice"}, headers=admin.headers)
    assert failed.json["error"] == "lot_voided"  # rolled back: no row
    assert client.post(f"/api/admin/users/{user.id}/subscription", json={"plan": "pro"},
                       headers=admin.headers).status_code == 200
    assert patch(client, admin, user.id, disabled=True).status_code == 200
    logged = client.get("/api/admin/actions", query_string={"limit": 2}, headers=admin.headers).json
    older = client.get("/api/admin/actions", query_string={"cursor": logged["next_cursor"]}, headers=admin.headers).json
    rows = logged["items"] + older["items"]
    assert [(r["action"], r["target_user_id"]) for r in rows] == [
        ("user.disabled", user.id), ("plan.assign", user.id), ("void", user.id), ("team.grant", None),
        ("grant", user.id)]
    assert rows[1]["details"] == {"plan": "pro"}
    assert rows[3]["details"]["team_id"] == team["id"] and rows[4]["details"]["amount"] == 4
    assert rows[2]["details"] == {"lot_id": lot, "reason": "chargeback", "voided": 4, "wallet_id": user.id}
    assert older["next_cursor"] is None
    mine = client.get("/api/admin/actions", query_string={"user_id": user.id}, headers=admin.headers).json["items"]
    assert [r["action"] for r in mine] == ["user.disabled", "plan.assign", "void", "grant"]
    # The dashboard's reading: the same rows, newest first, `before` an id or a time.
    recent = admin_actions.recent(limit=50)
    assert [r["id"] for r in recent] == [r["id"] for r in rows]
    assert [r["id"] for r in admin_actions.recent(before=rows[2]["id"])] == [r["id"] for r in rows[3:]]
    assert admin_actions.recent(before=recent[-1]["at"]) == []
    ledger_is_clean()


def test_me_says_who_calls_with_a_token_or_a_key(client, make_user):
    user, owner = make_user(), make_user()
    team = client.post("/api/teams", json={"name": "Crew"}, headers=owner.headers).json
    assert client.post(f"/api/teams/{team['id']}/members", json={"username": user.username},
                       headers=owner.headers).status_code == 201
    me = client.get("/api/users/me", headers=user.headers).json
    assert me == {"id": user.id, "username": user.username, "is_admin": False, "disabled": False,
                  "created_at": me["created_at"], "teams": [{"id": team["id"], "name": "Crew", "role": "member"}],
                  "api_key": None}
    key = key_of(client, user)
    with_key = client.get("/api/users/me", headers={"X-API-Key": key}).json
    assert {k: v for k, v in with_key.items() if k != "api_key"} == {k: v for k, v in me.items() if k != "api_key"}
    assert with_key["api_key"]["wallet_id"] == user.id and with_key["api_key"]["team_id"] is None
    assert client.get("/api/users/me").json["error"] == "authorization_required"


def test_a_teams_charges_are_found_by_team_and_refunded_into_its_wallet(client, make_user, stub):
    admin, owner = make_user(admin=True), make_user()
    team = client.post("/api/teams", json={"name": "Acme"}, headers=owner.headers).json
    granted = client.post(f"/api/admin/teams/{team['id']}/credits", json={"amount": 5}, headers=admin.headers)
    assert granted.status_code == 201, granted.json
    spent = client.post(GENERATE, json={"prompt": "t"}, headers={**owner.headers, "X-Team": str(team["id"])})
    assert spent.status_code == 200, spent.json
    found = client.get("/api/admin/charges", query_string={"team_id": team["id"]}, headers=admin.headers).json
    (charge,) = found["items"]
    assert (charge["charged"], charge["user_id"]) == (1, owner.id)
    assert client.get("/api/admin/charges", query_string={"user_id": owner.id}, headers=admin.headers).json[
        "items"] == []  # the owner's own wallet paid nothing
    refund = client.post(f"/api/admin/charges/{charge['id']}/refund", json={"reason": "t"}, headers=admin.headers)
    assert refund.status_code == 200, refund.json
    balance = client.get(f"/api/teams/{team['id']}/balance", headers=owner.headers).json
    assert balance["generation_credits"] == 5
    for bad in ({}, {"user_id": owner.id, "team_id": team["id"]}):
        answer = client.get("/api/admin/charges", query_string=bad, headers=admin.headers)
        assert (answer.status_code, answer.json["error"]) == (422, "validation_error"), bad
    missing = client.get("/api/admin/charges", query_string={"team_id": team["id"] + 1000}, headers=admin.headers)
    assert (missing.status_code, missing.json["error"]) == (404, "unknown_team")
