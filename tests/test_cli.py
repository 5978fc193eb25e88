"""The `users` and `credits` command groups, run through Flask's CLI test runner."""
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from creditapp import users
from creditapp.credits import CreditType, credit_service
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.exceptions import NotAdmin
from creditapp.ledger import UnknownUser
from creditapp.ledger.tables import CreditHold

PASSWORD = "long-enough-pw"


@pytest.fixture
def cli(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=list(args))

    return invoke


def assert_refused(result, *words: str) -> None:
    """A clean refusal: non-zero exit through click (no stray exception), naming the problem."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for word in words:
        assert word in result.output, result.output


def balance(user_id: int) -> tuple[int, int]:
    current = credit_service.get_credit_balance(user_id)
    return current.generation_credits, current.ai_tokens


def ledger_size(user_id: int) -> int:
    return len(credit_service.list_transactions(user_id, limit=100).items)


# --- users create ---------------------------------------------------------------------------


def test_users_create_makes_a_user_with_the_signup_grant(app, cli, client):
    result = cli("users", "create", "bob", "--password", PASSWORD)

    assert result.exit_code == 0, result.output
    assert "created user bob" in result.output
    user_id = users.user_id_by_name("bob")
    assert balance(user_id) == (app.config["CREDITS_SIGNUP_GRANT"], app.config["AI_TOKENS_SIGNUP_GRANT"])
    with pytest.raises(NotAdmin):
        users.require_admin(user_id)
    login = client.post("/api/auth/login", json={"username": "bob", "password": PASSWORD})
    assert login.status_code == 200


def test_users_create_admin(cli):
    result = cli("users", "create", "root", "--password", PASSWORD, "--admin")

    assert result.exit_code == 0, result.output
    assert "created administrator root" in result.output
    users.require_admin(users.user_id_by_name("root"))  # does not raise


def test_users_create_a_taken_name_is_refused(cli):
    assert cli("users", "create", "bob", "--password", PASSWORD).exit_code == 0
    first_id = users.user_id_by_name("bob")

    result = cli("users", "create", "bob", "--password", "another-password", "--admin")

    assert_refused(result, "bob", "taken")
    assert users.user_id_by_name("bob") == first_id
    with pytest.raises(NotAdmin):
        users.require_admin(first_id)


@pytest.mark.parametrize("name, password, field", [
    ("bob", "short", "password"),
    ("b", PASSWORD, "username"),
    ("bad name", PASSWORD, "username"),
])
def test_users_create_invalid_input_is_refused(cli, name, password, field):
    result = cli("users", "create", name, "--password", password)

    assert_refused(result, field)
    with pytest.raises(UnknownUser):
        users.user_id_by_name(name)


# --- credits grant / balance ----------------------------------------------------------------


def test_credits_grant_adds_generation_credits_by_default(cli, make_user):
    user = make_user(credits=1, tokens=10)

    result = cli("credits", "grant", user.username, "5")

    assert result.exit_code == 0, result.output
    assert balance(user.id) == (6, 10)
    assert "generation_credits=6" in result.output
    newest = credit_service.list_transactions(user.id, limit=1).items[0]
    assert (newest["kind"], newest["credit_type"], newest["amount"]) == ("grant", "generation_credits", 5)
    assert newest["reason"] == "granted from the command line"


def test_credits_grant_ai_tokens_with_a_reason(cli, make_user):
    user = make_user(credits=1, tokens=10)

    result = cli("credits", "grant", user.username, "250", "--type", "ai_tokens", "--reason", "support ticket 17")

    assert result.exit_code == 0, result.output
    assert balance(user.id) == (1, 260)
    newest = credit_service.list_transactions(user.id, limit=1, credit_type=CreditType.AI_TOKENS).items[0]
    assert (newest["kind"], newest["amount"], newest["reason"]) == ("grant", 250, "support ticket 17")
    assert credit_service.verify() == []


def test_credits_grant_to_an_unknown_user_is_refused(cli):
    assert_refused(cli("credits", "grant", "nobody", "5"), "nobody")


@pytest.mark.parametrize("args, named", [
    pytest.param(("0",), "AMOUNT", id="zero"),
    pytest.param(("-3",), "-3", id="negative"),
    pytest.param(("--", "-3"), "AMOUNT", id="negative-as-argument"),
    pytest.param(("abc",), "AMOUNT", id="not-a-number"),
    pytest.param(("1.5",), "AMOUNT", id="fraction"),
    pytest.param(("10000000000001",), "AMOUNT", id="too-large"),
    pytest.param(("5", "--type", "gold"), "--type", id="unknown-type"),
    # The API's rules: reason and reference are 1 to 255 characters.
    pytest.param(("5", "--reason", ""), "reason", id="empty-reason"),
    pytest.param(("5", "--reference", ""), "reference", id="empty-reference"),
    pytest.param(("5", "--reason", "r" * 256), "reason", id="reason-too-long"),
    pytest.param(("5", "--reference", "p" * 256), "reference", id="reference-too-long"),
    pytest.param(("5", "--reference", "nul\x00"), "reference", id="reference-with-nul"),
])
def test_credits_grant_bad_arguments_are_refused_and_change_nothing(cli, make_user, args, named):
    user = make_user(credits=2, tokens=20)
    entries = ledger_size(user.id)

    result = cli("credits", "grant", user.username, *args)

    assert_refused(result, named)
    assert "Traceback" not in result.output and len(result.output.splitlines()) <= 4
    assert balance(user.id) == (2, 20)
    assert ledger_size(user.id) == entries


def test_credits_balance_shows_both_balances(cli, make_user):
    user = make_user(credits=4, tokens=70)

    result = cli("credits", "balance", user.username)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{user.username}: generation_credits=4 ai_tokens=70"


def test_credits_balance_of_an_unknown_user_is_refused(cli):
    assert_refused(cli("credits", "balance", "nobody"), "nobody")


# --- credits release-expired / verify -------------------------------------------------------


def test_release_expired_gives_back_an_abandoned_hold(cli, make_user):
    user = make_user(credits=5)
    hold = credit_service.reserve(user.id, 3, CreditType.GENERATION_CREDITS)
    assert balance(user.id)[0] == 2
    assert "released 0 " in cli("credits", "release-expired").output  # not yet expired
    with atomic() as session:
        session.execute(
            update(CreditHold)
            .where(CreditHold.id == hold.hold_id)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )

    result = cli("credits", "release-expired")

    assert result.exit_code == 0, result.output
    assert "released 1 " in result.output
    assert balance(user.id)[0] == 5
    assert credit_service.list_transactions(user.id, limit=1).items[0]["kind"] == "expire"
    assert "released 0 " in cli("credits", "release-expired").output
    assert credit_service.verify() == []


def test_verify_passes_on_a_clean_ledger(cli, make_user):
    user = make_user(credits=5, tokens=50)
    credit_service.add_credits(user.id, 2, CreditType.GENERATION_CREDITS)

    result = cli("credits", "verify")

    assert result.exit_code == 0, result.output
    assert "ledger ok" in result.output


def test_verify_fails_and_names_the_user_when_a_balance_was_tampered_with(cli, make_user):
    honest, tampered = make_user(credits=5), make_user(credits=5)
    with atomic() as session:
        session.execute(
            text("UPDATE credit_accounts SET available = available + 100 "
                 "WHERE wallet_id = :user_id AND credit_type = 'generation_credits'"),
            {"user_id": tampered.id},
        )

    result = cli("credits", "verify")

    assert result.exit_code == 1, result.output
    assert "ledger ok" not in result.output
    assert f"user {tampered.id} " in result.output
    assert f"user {honest.id} " not in result.output


@pytest.mark.parametrize("args", [("credits", "verify"), ("users", "create", "ada", "--password", PASSWORD),
                                  ("jobs", "status"), ("credits", "balance", "ada")])
def test_a_command_on_a_database_never_migrated_says_so_in_one_line(tmp_path, args):
    """Not a traceback, and not verify's exit 1 (a difference in the ledger), which a cron that
    audits would take for one."""
    from creditapp.extensions import db
    from creditapp.testing import make_app

    app = make_app(f"sqlite:///{tmp_path}/never-migrated.db")
    result = app.test_cli_runner().invoke(args=list(args))
    with app.app_context():
        db.engine.dispose()
    assert result.exit_code == 3, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "not migrated" in result.output and "db upgrade" in result.output and "Traceback" not in result.output
