"""Teams and their wallet: `/api/teams`, members with caps, the team's balance and history."""
from .. import users
from ..access import keys, teams
from ..access.errors import NotAllowed
from ..auth import current_user_id, require_csrf, require_login, require_login_token
from ..ledger import credit_service, team_wallet
from .access_schemas import KeyListSchema, KeySchema, MemberAddSchema, MemberChangeSchema, MemberSchema, TeamCreateSchema, TeamListSchema, TeamSchema
from .bodies import Blueprint
from .openapi import INVALID, UNAUTHORIZED, document
from .schemas import (
    BalanceReadSchema, ErrorSchema, LotPageSchema, LotQuerySchema, TransactionPageSchema, TransactionQuerySchema,
)

blp = Blueprint("teams", __name__, url_prefix="/api/teams", description="Team wallets, members and their caps.")
blp.before_request(require_login())
NOT_IN = (404, ErrorSchema, "unknown_team: no such team, or not yours")


def _caller(writes: bool = False) -> int:
    require_login_token()
    if writes:
        require_csrf()
    return current_user_id()


def _named(team: dict) -> dict:
    names = users.usernames(member["user_id"] for member in team["members"])
    return {**team, "members": [{**m, "username": names.get(m["user_id"])} for m in team["members"]]}


@blp.post("")
@blp.arguments(TeamCreateSchema)
@blp.response(201, TeamSchema)
@document(responses=[UNAUTHORIZED, INVALID])
def create_team(body):
    """Make a team, with a wallet of its own; you are its owner."""
    return _named(teams.create(_caller(writes=True), body["name"])), 201


@blp.get("")
@blp.response(200, TeamListSchema)
@document(responses=[UNAUTHORIZED])
def list_teams():
    """The teams you are in, with your role."""
    return {"items": teams.mine(_caller())}


@blp.get("/<id:team_id>")
@blp.response(200, TeamSchema)
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED])
def get_team(team_id):
    """A team's members: role, cap and what each spent this period."""
    return _named(teams.describe(team_id, _caller()))


@blp.post("/<id:team_id>/members")
@blp.arguments(MemberAddSchema)
@blp.response(201, MemberSchema)
@blp.alt_response(403, schema=ErrorSchema, description="forbidden: owners add anyone, admins add members")
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2] + "; unknown_user")
@blp.alt_response(409, schema=ErrorSchema, description="already_member")
@document(responses=[UNAUTHORIZED, INVALID])
def add_member(body, team_id):
    """Add a user by name, as admin or member, with a cap on what they spend from the team's wallet."""
    actor = _caller(writes=True)
    teams.may_add(team_id, actor)  # 404 or 403 before the name is looked up: no probing of names
    user_id = users.user_id_by_name(body["username"])
    added = teams.add(team_id, actor, user_id, role=body["role"], cap=body["cap"], period=body["cap_period"],
                      period_seconds=body["cap_period_seconds"])
    return {**added, "username": users.usernames([user_id]).get(user_id)}, 201


@blp.patch("/<id:team_id>/members/<id:user_id>")
@blp.arguments(MemberChangeSchema)
@blp.response(200, MemberSchema)
@blp.alt_response(403, schema=ErrorSchema, description="forbidden: admins may only lower members' caps")
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2] + "; unknown_member")
@document(responses=[UNAUTHORIZED, INVALID])
def change_member(body, team_id, user_id):
    """Change a member's role (the owner) or cap (the owner; admins only lower)."""
    changed = teams.change(team_id, _caller(writes=True), user_id, role=body.get("role"), cap=body.get("cap"))
    return {**changed, "username": users.usernames([user_id]).get(user_id)}


@blp.delete("/<id:team_id>/members/<id:user_id>")
@blp.response(204)
@blp.alt_response(403, schema=ErrorSchema, description="forbidden")
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2] + "; unknown_member")
@document(responses=[UNAUTHORIZED])
def remove_member(team_id, user_id):
    """Remove a member (or leave): from now on they cannot spend from the team's wallet."""
    teams.remove(team_id, _caller(writes=True), user_id)
    return "", 204


@blp.get("/<id:team_id>/keys")
@blp.response(200, KeyListSchema)
@blp.alt_response(403, schema=ErrorSchema, description="forbidden: owners and admins only")
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED])
def team_keys(team_id):
    """The team's keys not revoked, whoever made them (owners and admins)."""
    _team_manager(team_id)
    return {"items": [keys.describe(key) for key in keys.of_team(team_id)]}


@blp.delete("/<id:team_id>/keys/<id:key_id>")
@blp.response(200, KeySchema)
@blp.alt_response(403, schema=ErrorSchema, description="forbidden: the owner revokes any, an admin their own")
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2] + "; unknown_key")
@document(responses=[UNAUTHORIZED])
def revoke_team_key(team_id, key_id):
    """Revoke a team key: refused from now on, by every worker and host."""
    role, actor = _team_manager(team_id, writes=True)
    key = keys.find(key_id, None, team_id)
    if role != "owner" and key.user_id != actor:
        raise NotAllowed("the owner revokes any team key; an admin the ones they made")
    return keys.revoke(key_id, None)


def _team_manager(team_id: int, writes: bool = False) -> tuple[str, int]:
    actor = _caller(writes)
    role = teams.must_be_in(team_id, actor).role
    if role == "member":
        raise NotAllowed("owners and admins only")
    return role, actor


def _member_wallet(team_id: int) -> int:
    teams.must_be_in(team_id, current_user_id())
    return team_wallet(team_id)


@blp.get("/<id:team_id>/balance")
@blp.response(200, BalanceReadSchema)
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED])
def team_balance(team_id):
    """What the team's wallet can spend now (members; an API key of the team too)."""
    found = credit_service.overview(_member_wallet(team_id))
    return {**found.balance.as_dict(), "expiring": found.expiring, "debt": found.debt}


@blp.get("/<id:team_id>/lots")
@blp.arguments(LotQuerySchema, location="query", as_kwargs=True)
@blp.response(200, LotPageSchema)
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED, INVALID])
def team_lots(team_id, credit_type, include_spent, limit, cursor):
    page = credit_service.list_lots(_member_wallet(team_id), credit_type=credit_type, include_spent=include_spent,
                                    offset=int(cursor) if cursor else 0, limit=limit)
    return {"items": page.items, "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None}


@blp.get("/<id:team_id>/transactions")
@blp.arguments(TransactionQuerySchema, location="query", as_kwargs=True)
@blp.response(200, TransactionPageSchema)
@blp.alt_response(NOT_IN[0], schema=NOT_IN[1], description=NOT_IN[2])
@document(responses=[UNAUTHORIZED, INVALID])
def team_transactions(team_id, limit, cursor, credit_type):
    page = credit_service.list_transactions(_member_wallet(team_id), limit=limit,
                                            before_id=int(cursor) if cursor else None, credit_type=credit_type)
    return {"items": page.items, "next_cursor": str(page.next_cursor) if page.next_cursor is not None else None}
