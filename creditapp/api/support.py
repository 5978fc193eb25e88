"""The support view: administrators find an account, read all of it and act on it; and every
caller reads who they are (`GET /api/users/me`)."""
import base64
import binascii

from marshmallow import ValidationError

from .. import admin_actions, users
from ..access import teams
from ..auth import caller_must_exist, current_key, current_user_id, require_login
from ..jobs import store as jobs
from ..access.errors import UnknownTeam
from ..ledger import CreditType, UnknownUser, UnknownWallet, credit_service, team_wallet
from ..ledger.tables import MAX_USER_ID
from ..payments.errors import PaymentsUnavailable
from . import purchases
from .admin import _administrator as administrator
from .bodies import Blueprint
from .jobs import described as described_job
from .openapi import INVALID, UNAUTHORIZED, document
from .schemas import ErrorSchema, TransactionPageSchema, TransactionQuerySchema
from .support_schemas import (
    AccessSchema, AccountSchema, AccountUserSchema, ActionPageSchema, ActionQuerySchema, ChargePageSchema,
    ChargeQuerySchema, MeSchema, UserPageSchema, UserQuerySchema,
)

blp = Blueprint("support", __name__, url_prefix="/api/admin", description="Support: accounts, charges, actions.")
blp.before_request(require_login())
me = Blueprint("users", __name__, url_prefix="/api/users", description="The caller's account.")
me.before_request(require_login())
RECENT = 20  # of each kind in an account's page


@me.get("/me")
@me.response(200, MeSchema)
@document(responses=[UNAUTHORIZED])
def whoami():
    """The caller's account and team memberships; with an API key, its maker's, and the key."""
    with caller_must_exist():
        found = users.profile(current_user_id())
    key = current_key()
    return {**found, "teams": teams.mine(found["id"]),
            "api_key": None if key is None else {"id": key.id, "team_id": key.team_id, "wallet_id": key.wallet_id}}


@blp.get("/users")
@blp.arguments(UserQuerySchema, location="query", as_kwargs=True)
@blp.response(200, UserPageSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@document(responses=[UNAUTHORIZED, INVALID])
def list_users(query, limit, cursor):
    """Accounts whose name contains `query` or whose id it is, by id (administrators only)."""
    administrator()
    found, last = users.search(query, limit=limit, after_id=_after(cursor))
    return {"items": found, "next_cursor": None if last is None else _cursor(last)}


@blp.get("/users/<id:user_id>")
@blp.response(200, AccountSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_user")
@document(responses=[UNAUTHORIZED])
def account(user_id):
    """All of an account: balance (spendable, held, debt), lots, open holds, recent ledger rows,
    jobs, purchases and the admin actions about it (administrators only)."""
    administrator()
    found = users.profile(_user(user_id))
    spendable = credit_service.overview(user_id, expiring=0)
    held = credit_service.held_and_debt(user_id)
    balance = {t.value: {"spendable": getattr(spendable.balance, t.value),
                         "held": held.get(t.value, {}).get("held", 0), "debt": spendable.debt.get(t.value, 0)}
               for t in CreditType}
    try:
        bought = purchases.payments().list(user_id=user_id, limit=RECENT)
    except PaymentsUnavailable:
        bought = []
    return {
        "user": {**found, "teams": teams.mine(user_id), "api_key": None},
        "balance": balance,
        "lots": credit_service.list_lots(user_id, limit=RECENT).items,
        "holds": credit_service.list_holds(user_id, open_only=True, limit=RECENT).items,
        "transactions": credit_service.list_transactions(user_id, limit=RECENT).items,
        "jobs": [described_job(job) for job in jobs.page(user_id, status=None, limit=RECENT, before=None)],
        "purchases": bought,
        "actions": admin_actions.recent(RECENT, target_user_id=user_id),
    }


@blp.get("/users/<id:user_id>/transactions")
@blp.arguments(TransactionQuerySchema, location="query", as_kwargs=True)
@blp.response(200, TransactionPageSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_user")
@document(responses=[UNAUTHORIZED, INVALID])
def transactions(user_id, limit, cursor, credit_type):
    """A user's ledger as they see it in /api/credits/transactions (administrators only)."""
    administrator()
    page = credit_service.list_transactions(_user(user_id), limit=limit, before_id=int(cursor) if cursor else None,
                                            credit_type=credit_type)
    return {"items": page.items, "next_cursor": _str(page.next_cursor)}


@blp.patch("/users/<id:user_id>")
@blp.arguments(AccessSchema)
@blp.response(200, AccountUserSchema, description="The account now")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_user")
@blp.alt_response(409, schema=ErrorSchema, description="cannot_change_own_access: an administrator cannot "
                  "disable their own account or drop their own admin right")
@document(responses=[UNAUTHORIZED, INVALID])
def change_access(body, user_id):
    """Disable or enable an account (its tokens and keys are refused from the next request on),
    grant or revoke its admin right (administrators only)."""
    admin_id = administrator()
    return users.set_access(admin_id, _user(user_id), disabled=body["disabled"], is_admin=body["is_admin"])


@blp.get("/charges")
@blp.arguments(ChargeQuerySchema, location="query", as_kwargs=True)
@blp.response(200, ChargePageSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_user, unknown_team")
@document(responses=[UNAUTHORIZED, INVALID])
def charges(user_id, team_id, limit, cursor):
    """A user's or a team's charges, newest first: each `id` is what the refund endpoint takes
    (administrators only)."""
    administrator()
    wallet_id = user_id if team_id is None else team_wallet(team_id)
    try:
        page = credit_service.list_holds(wallet_id, charges=True, limit=limit,
                                         before_id=int(cursor) if cursor else None)
    except UnknownWallet:  # UnknownUser is one too: a missing user stays unknown_user
        if team_id is None:
            raise
        raise UnknownTeam(f"no team {team_id}") from None
    return {"items": page.items, "next_cursor": _str(page.next_cursor)}


@blp.get("/actions")
@blp.arguments(ActionQuerySchema, location="query", as_kwargs=True)
@blp.response(200, ActionPageSchema)
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@document(responses=[UNAUTHORIZED, INVALID])
def actions(user_id, limit, cursor):
    """What administrators did, newest first; `user_id`: about one account (administrators only)."""
    administrator()
    found = admin_actions.recent(limit, int(cursor) if cursor else None, target_user_id=user_id)
    return {"items": found, "next_cursor": str(found[-1]["id"]) if len(found) == limit else None}


def _user(user_id: int) -> int:
    if user_id > MAX_USER_ID:
        raise UnknownUser(f"no user with id {user_id}")  # no such id can exist; spare the database
    return user_id


def _str(cursor: int | None) -> str | None:
    return None if cursor is None else str(cursor)


def _cursor(last_id: int) -> str:
    """Opaque, so that the order (by id today) can change without breaking clients."""
    return base64.urlsafe_b64encode(f"u{last_id}".encode()).decode().rstrip("=")


def _after(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not (text[:1] == "u" and text[1:].isdigit() and text[1:2] != "0" and len(text) <= 19):
        raise ValidationError({"cursor": ["Not a cursor this list gave."]})
    return int(text[1:])
