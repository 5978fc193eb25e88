"""The administrators' dashboard through the test client, on both databases: its figures against
the requests the test made (and the ledger), its login, refusals, CSRF and verify button. The
browser drives it in tests/test_dashboard_browser.py."""
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from creditapp.dashboard import figures, verify_runs
from creditapp.dashboard.chart import line_chart
from creditapp.ledger import credit_service
from creditapp.ledger.statements import LEDGER
from creditapp.ledger.transactions import atomic
from creditapp.testing import PASSWORD

GEN, TOKENS = "generation_credits", "ai_tokens"


def paid(client, user, path="/api/generate", body=None, status=200):
    response = client.post(path, json=body or {"prompt": "a lighthouse at dusk"}, headers=user.headers)
    assert response.status_code == status, response.json
    return response


def buy_starter(client, user):
    purchase = client.post("/api/purchases", json={"pack": "starter"}, headers=user.headers).json
    page = re.sub(r"^https?://[^/]+", "", purchase["checkout_url"])
    assert client.post(page, data={"action": "pay"}).status_code == 303
    return purchase


def activity(client, make_user, fake_ai, manual_clock):
    """Two days of use: yesterday's is in the 7-day tile, not today's. Returns who did it."""
    admin = make_user(admin=True)
    alice, bob = make_user(credits=10), make_user(credits=5, tokens=100)
    paid(client, alice)  # yesterday: 1 credit
    manual_clock.advance(24 * 3600)
    grant = client.post(f"/api/admin/users/{alice.id}/credits", headers=admin.headers,
                        json={"amount": 7, "expires_at": (manual_clock.current + timedelta(days=3)).isoformat()})
    assert grant.status_code == 201, grant.json
    for _ in range(2):
        paid(client, alice)
    paid(client, alice, "/api/generate/upscale", {"image_url": "https://example.com/a.png", "scale": 4})  # 2
    fake_ai.fail_next(1)
    paid(client, bob, status=502)  # failed: free
    paid(client, bob)
    buy_starter(client, bob)  # 20 credits for 5.00 USD
    hold = credit_service.reserve(bob.id, 3, GEN, feature="basic_generation")  # still open
    return admin, alice, bob, hold


def ledger_granted_since(start) -> dict[str, int]:
    with atomic(write=False) as session:
        rows = session.execute(select(LEDGER.c.credit_type, func.sum(LEDGER.c.amount)).where(
            LEDGER.c.kind == "grant", LEDGER.c.created_at >= start).group_by(LEDGER.c.credit_type)).all()
    return {GEN: 0, TOKENS: 0, **{t: int(n) for t, n in rows}}


def test_the_figures_are_the_requests_the_test_made(client, make_user, fake_ai, manual_clock):
    _admin, alice, bob, _hold = activity(client, make_user, fake_ai, manual_clock)
    now = manual_clock.current
    today, week, month = figures.tiles(now)

    assert (today.label, week.label, month.label) == ("today", "7 days", "30 days")
    assert today.charged == {GEN: 4 + 1, TOKENS: 0} and week.charged == {GEN: 6, TOKENS: 0}
    assert (today.requests, today.failed, week.requests) == (5, 1, 6)
    assert today.failure_rate == pytest.approx(1 / 5)
    assert (today.purchases, today.revenue) == (1, {"usd": 500})
    # Today: the admin's 7 and the purchase's 20; yesterday the signup grants (10, 5 and 100 tokens).
    assert today.granted == {GEN: 27, TOKENS: 0} == ledger_granted_since(today.start)
    assert week.granted == {GEN: 42, TOKENS: 100} == ledger_granted_since(week.start)

    chart = figures.charges_by_feature(now)
    assert len(chart.days) == 30 and chart.days[-1] == figures.midnight(now)
    by_feature = {s.feature: s.points for s in chart.series}
    assert by_feature["basic_generation"][-2:] == [1, 3] and sum(by_feature["basic_generation"]) == 4
    assert by_feature["upscale"][-1] == 2 and sum(by_feature["upscale"]) == 2
    assert line_chart(chart.days, chart.series).lines[0].feature == "basic_generation"

    spenders = figures.top_spenders(now)
    assert [(s.username, s.spent, s.requests) for s in spenders] == [(alice.username, 5, 4), (bob.username, 1, 2)]
    assert [s.balance for s in spenders] == [10 + 7 - 5, 5 - 1 + 20 - 3]

    health = figures.health(now)
    assert (health.open_holds, health.held) == ({GEN: 1, TOKENS: 0}, {GEN: 3, TOKENS: 0})
    assert health.oldest_hold_at == now
    # Alice spent 4 after the grant, from the lot that lapses first.
    assert (health.expiring_lots, health.expiring) == (1, {GEN: 7 - 4, TOKENS: 0})
    assert (health.debt, health.wallets_in_debt, health.last_verify) == ({GEN: 0, TOKENS: 0}, 0, None)

    page = figures.user_page(alice.id)
    assert page.username == alice.username and page.balance == {GEN: 12, TOKENS: 0}
    assert sorted(lot["granted"] for lot in page.lots) == [7, 10]
    assert [row["kind"] for row in page.ledger][:1] == ["settle"] and len(page.ledger) >= 6


def test_nothing_happened_yet_shows_zeros(app):
    today = figures.tiles()[0]
    assert today.charged == {GEN: 0, TOKENS: 0} and today.requests == 0 and today.failure_rate is None
    assert figures.charges_by_feature().series == [] and figures.top_spenders() == []
    assert figures.health().open_holds == {GEN: 0, TOKENS: 0}
    assert figures.admin_actions() == []


def log_in(client, user, next_page="/admin/", password=PASSWORD):
    form = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="login_csrf" value="([^"]+)"', form).group(1)
    return client.post("/admin/login", data={"username": getattr(user, "username", user), "password": password,
                                             "next": next_page, "login_csrf": token})


def csrf(client) -> str:
    return client.get_cookie("csrf_access_token").value


def figure(html: str, name: str, window: str = "today") -> str:
    tile = re.search(rf'<section class="tile" id="tile-{window}".*?</section>', html, re.S).group(0)
    return re.search(rf'data-figure="{name}">([^<]*)', tile).group(1).strip()


def test_an_administrator_logs_in_and_sees_the_figures(client, make_user, fake_ai, manual_clock):
    admin, alice, bob, _hold = activity(client, make_user, fake_ai, manual_clock)
    login = log_in(client, admin)
    assert login.status_code == 303 and login.headers["Location"] == "/admin/"
    page = client.get("/admin/")
    html = page.get_data(as_text=True)

    assert page.status_code == 200 and page.content_type.startswith("text/html")
    assert "script" not in page.headers["Content-Security-Policy"] and "<script" not in html
    assert figure(html, f"charged-{GEN}") == "5" and figure(html, f"charged-{GEN}", "7-days") == "6"
    assert figure(html, "requests") == "5" and figure(html, "failure-rate").startswith("20.0 %")
    assert figure(html, "purchases") == "1" and figure(html, "revenue") == "5.00 USD"
    assert figure(html, f"granted-{GEN}") == "27"
    assert re.search(r'<g class="series" data-feature="basic_generation" data-credit-type="generation_credits" '
                     r'data-total="4">', html)
    assert f'<a href="/admin/users/{alice.id}">{alice.username}</a>' in html
    assert re.search(r'id="open-holds" data-count="1"', html) and 'id="expiring-lots" data-count="1"' in html
    assert 'id="verify-result">never run' in html and 'id="run-verify"' in html

    user_page = client.get(f"/admin/users/{bob.id}").get_data(as_text=True)
    assert re.search(r'data-figure="balance-generation_credits">21<', user_page)
    assert "starter" in user_page and 'data-kind="hold"' in user_page


def test_the_verify_button_needs_the_csrf_token_and_stores_the_run(client, make_user, manual_clock):
    admin = make_user(admin=True)
    log_in(client, admin)
    for forged in ({}, {"csrf_token": "not-the-token"}):
        refused = client.post("/admin/verify", data=forged)
        assert refused.status_code == 403 and "Nothing was changed" in refused.get_data(as_text=True)
    assert client.post("/admin/verify", headers={"Accept": "application/json"}).status_code == 401
    assert verify_runs.last() is None
    ran = client.post("/admin/verify", data={"csrf_token": csrf(client)})
    assert ran.status_code == 303 and ran.headers["Location"] == "/admin/#health"
    run = verify_runs.last()
    assert (run.ok, run.discrepancies, run.via, run.actor_user_id, run.finished_at) == (
        True, 0, "dashboard", admin.id, manual_clock.current)
    assert 'id="verify-result" class="ok">ok<' in client.get("/admin/").get_data(as_text=True)


def test_the_cli_verify_is_stored_with_its_discrepancies(app, make_user, manual_clock):
    user = make_user(credits=5)
    with atomic() as session:
        session.execute(text("UPDATE credit_accounts SET available = available + 100 "
                             "WHERE wallet_id = :id AND credit_type = 'generation_credits'"), {"id": user.id})
    result = app.test_cli_runner().invoke(args=["credits", "verify"])
    assert result.exit_code == 1
    run = verify_runs.last()
    assert (run.ok, run.via, run.discrepancies) == (False, "cli", len(credit_service.verify()))
    assert run.discrepancies >= 1 and f"user {user.id} " in run.details


def test_an_anonymous_visitor_is_sent_to_the_login_form_and_a_json_client_gets_the_envelope(client):
    page = client.get("/admin/users/3")
    assert page.status_code == 303 and page.headers["Location"] == "/admin/login?next=%2Fadmin%2Fusers%2F3"
    assert 'name="password"' in client.get(page.headers["Location"]).get_data(as_text=True)
    answer = client.get("/admin/", headers={"Accept": "application/json"})
    assert answer.status_code == 401 and answer.json["error"] == "authorization_required"
    assert client.post("/admin/verify").status_code == 303 and verify_runs.last() is None


def test_a_non_administrator_is_refused(client, make_user, app):
    user = make_user(credits=1)
    refused = log_in(client, user)
    assert refused.status_code == 403 and "not an administrator" in refused.get_data(as_text=True)
    assert client.get_cookie("access_token_cookie") is None
    # An administrator demoted while logged in is refused at the next page.
    admin = make_user(admin=True)
    log_in(client, admin)
    assert client.get("/admin/").status_code == 200
    with atomic() as session:
        session.execute(text("UPDATE users SET is_admin = false WHERE id = :id"), {"id": admin.id})
    page = client.get("/admin/")
    assert page.status_code == 403 and 'id="refused"' in page.get_data(as_text=True)
    assert client.get("/admin/", headers={"Accept": "application/json"}).json["error"] == "forbidden"
    assert client.post("/admin/logout", data={"csrf_token": csrf(client)}).status_code == 303


def test_logout_ends_the_session_even_for_a_kept_cookie(client, make_user):
    admin = make_user(admin=True)
    log_in(client, admin)
    kept = client.get_cookie("access_token_cookie").value
    out = client.post("/admin/logout", data={"csrf_token": csrf(client)})
    assert out.status_code == 303 and out.headers["Location"] == "/admin/login"
    assert client.get("/admin/").status_code == 303
    client.set_cookie("access_token_cookie", kept)
    assert client.get("/admin/").status_code == 303  # revoked, not merely forgotten


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/admin/", "/admin//evil", "/api/x",
                                    "/admin/\r\nX-Injected: 1", "/admin/\n", "/admin/\x00", "/admin/é"])
def test_the_login_sends_only_to_a_dashboard_page(client, make_user, target):
    admin = make_user(admin=True)
    assert log_in(client, admin, target).headers["Location"] == "/admin/"


def test_an_unknown_user_page_is_a_404_page(client, make_user):
    log_in(client, make_user(admin=True))
    assert client.get("/admin/users/999999").status_code == 404
    assert client.get(f"/admin/users/{2**31 + 1}").status_code == 404


def test_a_disabled_administrator_is_refused_at_the_next_page_and_cannot_log_in(client, make_user):
    admin, other = make_user(admin=True), make_user(admin=True)
    log_in(client, admin)
    assert client.get("/admin/").status_code == 200
    disabled = client.patch(f"/api/admin/users/{admin.id}", json={"disabled": True}, headers=other.headers)
    assert disabled.status_code == 200, disabled.json
    page = client.get("/admin/")
    assert page.status_code == 403 and "This account is disabled" in page.get_data(as_text=True)
    assert client.get("/admin/", headers={"Accept": "application/json"}).json["error"] == "account_disabled"
    client.delete_cookie("access_token_cookie")
    again = log_in(client, admin)
    assert again.status_code == 403 and "disabled" in again.get_data(as_text=True)
    assert client.get_cookie("access_token_cookie") is None


def test_the_admin_actions_section_shows_who_did_what(client, make_user):
    admin, alice = make_user(admin=True), make_user(credits=1)
    granted = client.post(f"/api/admin/users/{alice.id}/credits", json={"amount": 4}, headers=admin.headers)
    assert granted.status_code == 201, granted.json
    log_in(client, admin)
    page = client.get("/admin/").get_data(as_text=True)
    section = page[page.index("Admin actions"):]
    assert "grant" in section and admin.username in section, section[:2000]


def test_revenue_shows_what_refunds_and_lost_disputes_took_back(app, client, make_user):
    user = make_user(credits=0)
    first, second = buy_starter(client, user), buy_starter(client, user)  # 5.00 USD each
    runner = app.test_cli_runner()
    assert "applied" in runner.invoke(args=["purchases", "simulate", str(first["id"]), "refund",
                                            "--amount", "100"]).output
    for step in ("refund", "dispute", "dispute-lost"):
        args = ["purchases", "simulate", str(second["id"]), step] + (["--amount", "200"] if step == "refund" else [])
        assert "applied" in runner.invoke(args=args).output, step
    (today, *_rest) = figures.tiles()
    assert (today.purchases, today.revenue, today.refunds) == (2, {"usd": 1000}, {"usd": 300})
    assert today.disputes_lost == {"usd": 300}  # the 3.00 of the second that the refund had not given back
    log_in(client, make_user(admin=True))
    html = client.get("/admin/").get_data(as_text=True)
    assert "3.00 USD lost to disputes" in html and "3.00 USD refunded" in html


def test_a_login_form_not_from_the_page_is_refused_and_logs_no_one_in(client, make_user):
    admin = make_user(admin=True)
    forged = client.post("/admin/login", data={"username": admin.username, "password": PASSWORD})
    assert forged.status_code == 403 and "expired" in forged.get_data(as_text=True)
    assert client.get_cookie("access_token_cookie") is None
    client.get("/admin/login")  # a cookie of its own, but another site cannot read it into the field
    guessed = client.post("/admin/login", data={"username": admin.username, "password": PASSWORD,
                                                "login_csrf": "guessed"})
    assert guessed.status_code == 403 and client.get_cookie("access_token_cookie") is None
    assert log_in(client, admin).status_code == 303


def test_odd_usernames_are_wrong_credentials_not_errors(client, make_user):
    for name in ("nobody\x00", "\x00", "x" * 5000):
        answer = log_in(client, name, password="whatever-it-is")
        assert answer.status_code == 401 and "Wrong username or password" in answer.get_data(as_text=True)


def test_a_json_client_gets_the_envelope_for_an_unknown_user_page(client, make_user):
    log_in(client, make_user(admin=True))
    answer = client.get("/admin/users/999999", headers={"Accept": "application/json"})
    assert answer.status_code == 404 and answer.json["error"] == "not_found"
