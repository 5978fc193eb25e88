"""Teams: a wallet many users spend from, each member within a cap of their own.

Owners add and remove anyone and set any cap; admins add and remove members (not the owner or
other admins) and may lower caps, never raise them; members only read. Removing a member closes
their cap in the same transaction: their next hold from the team's wallet is refused.
"""
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..ledger import Balance, credit_service, procedures, team_wallet
from ..ledger.clock import utcnow
from ..ledger.transactions import atomic
from .errors import AlreadyMember, NotAllowed, UnknownMember, UnknownTeam
from .tables import ApiKey, Team, TeamMember

KEYS = ApiKey.__table__
TEAMS = Team.__table__
MEMBERS = TeamMember.__table__
MAX_ID = 2**31 - 1  # teams and users have 32-bit ids: a larger one names nobody (and no query is sent)


def create(owner_id: int, name: str) -> dict:
    now = utcnow()
    with atomic() as session:
        team_id = session.execute(insert(TEAMS).values(name=name, created_at=now).returning(TEAMS.c.id)).scalar_one()
        wallet_id = team_wallet(team_id)
        credit_service.open_wallet(session, wallet_id, Balance(0, 0))
        cap_id = credit_service.create_cap(wallet_id, {}, session=session)
        session.execute(insert(MEMBERS).values(team_id=team_id, user_id=owner_id, role="owner", cap_id=cap_id,
                                               created_at=now))
    return describe(team_id, owner_id)


def role_of(team_id: int, user_id: int) -> str | None:
    member = member_of(team_id, user_id)
    return member.role if member is not None else None


MEMBER = "SELECT team_id, user_id, role, cap_id FROM team_members WHERE team_id = %(team)s AND user_id = %(user)s"


def member_of(team_id: int, user_id: int):
    if team_id > MAX_ID or user_id > MAX_ID:
        return None
    if procedures.available():  # one statement in autocommit: it is on a paid request's path (X-Team)
        return procedures.call(MEMBER, {"team": team_id, "user": user_id})
    with atomic(write=False) as session:
        return session.execute(select(MEMBERS).where(MEMBERS.c.team_id == team_id,
                                                     MEMBERS.c.user_id == user_id)).one_or_none()


def must_be_in(team_id: int, user_id: int):
    member = member_of(team_id, user_id)
    if member is None:
        raise UnknownTeam(f"no team {team_id} of yours")
    return member


def mine(user_id: int) -> list[dict]:
    with atomic(write=False) as session:
        rows = session.execute(select(TEAMS.c.id, TEAMS.c.name, MEMBERS.c.role).join(
            MEMBERS, MEMBERS.c.team_id == TEAMS.c.id).where(MEMBERS.c.user_id == user_id).order_by(TEAMS.c.id)).all()
    return [{"id": row.id, "name": row.name, "role": row.role} for row in rows]


def describe(team_id: int, user_id: int) -> dict:
    caller = must_be_in(team_id, user_id)
    with atomic(write=False) as session:
        team = session.execute(select(TEAMS).where(TEAMS.c.id == team_id)).one()
        members = session.execute(select(MEMBERS).where(MEMBERS.c.team_id == team_id)
                                  .order_by(MEMBERS.c.created_at, MEMBERS.c.user_id)).all()
    return {"id": team.id, "name": team.name, "role": caller.role, "created_at": team.created_at,
            "wallet_id": team_wallet(team.id),
            "members": [_member(row) for row in members]}


def _member(row) -> dict:
    cap = credit_service.describe_cap(row.cap_id)
    return {"user_id": row.user_id, "role": row.role, "cap": cap["limits"],
            "spent": cap["spent"], "period_resets_at": cap["period_end"]}


def may_add(team_id: int, actor_id: int) -> str:
    """The actor's role, if it may add members at all (checked before a name is looked up)."""
    actor = must_be_in(team_id, actor_id).role
    if actor == "member":
        raise NotAllowed("owners add anyone; admins add members")
    return actor


def may_budget(team_id: int, actor_id: int, limits: dict[str, int], session=None) -> None:
    """An owner may give a team key or a member any budget; an admin none beyond their own cap
    (a key of theirs, or a member they add, would otherwise spend past it). In `session`, under
    the actor's member row's lock."""
    if session is None:
        member = must_be_in(team_id, actor_id)
    else:
        member = session.execute(select(MEMBERS).where(MEMBERS.c.team_id == team_id, MEMBERS.c.user_id == actor_id)
                                 .with_for_update()).one_or_none()
        if member is None:
            raise UnknownTeam(f"no team {team_id} of yours")
    if member.role == "member":
        raise NotAllowed("only the team's owner and admins do that")
    if member.role == "admin":
        own = credit_service.describe_cap(member.cap_id, session=session)["limits"]
        if not all(credit_type in limits and limits[credit_type] <= amount for credit_type, amount in own.items()):
            raise NotAllowed(f"an admin gives no more than their own cap: {own}")


def revoke_keys_in(session, found) -> None:
    """Revoke keys inside the caller's transaction: their caps close with them."""
    now = utcnow()
    for key in found:
        session.execute(update(KEYS).where(KEYS.c.id == key.id, KEYS.c.revoked_at.is_(None)).values(revoked_at=now))
        credit_service.close_cap(key.cap_id, session=session)


def _team_keys_of(session, team_id: int, user_id: int) -> list:
    return session.execute(select(KEYS).where(KEYS.c.team_id == team_id, KEYS.c.user_id == user_id,
                                              KEYS.c.revoked_at.is_(None))).all()


def add(team_id: int, actor_id: int, user_id: int, *, role: str, cap: dict[str, int], period: str | None,
        period_seconds: int | None) -> dict:
    actor = may_add(team_id, actor_id)
    if actor == "admin" and role != "member":
        raise NotAllowed("owners add anyone; admins add members")
    may_budget(team_id, actor_id, cap)
    if member_of(team_id, user_id) is not None:
        raise AlreadyMember(f"user {user_id} is in team {team_id} already")
    try:
        with atomic() as session:
            may_budget(team_id, actor_id, cap, session=session)
            # Someone removed and added again keeps the cap they spent under, and its spend this
            # period; only the owner may raise it.
            cap_id = credit_service.reopen_spent_cap(session, team_wallet(team_id), user_id)
            if cap_id is not None:
                before = credit_service.describe_cap(cap_id, session=session)["limits"]
                if actor == "admin" and not _lower(before, cap):
                    raise NotAllowed("admins may lower a cap, never raise it (this member's was "
                                     f"{before} before they were removed)")
                credit_service.change_cap(cap_id, limits=cap, session=session)
            else:
                cap_id = credit_service.create_cap(team_wallet(team_id), cap, period=period,
                                                   period_seconds=period_seconds, session=session)
            session.execute(insert(MEMBERS).values(team_id=team_id, user_id=user_id, role=role, cap_id=cap_id,
                                                   created_at=utcnow()))
    except IntegrityError:  # the same user added by another request at once
        raise AlreadyMember(f"user {user_id} is in team {team_id} already") from None
    return member(team_id, actor_id, user_id)


def member(team_id: int, actor_id: int, user_id: int) -> dict:
    must_be_in(team_id, actor_id)
    row = member_of(team_id, user_id)
    if row is None:
        raise UnknownMember(f"user {user_id} is not in team {team_id}")
    return _member(row)


def change(team_id: int, actor_id: int, user_id: int, *, role: str | None, cap: dict[str, int] | None) -> dict:
    actor = must_be_in(team_id, actor_id).role
    target = member_of(team_id, user_id)
    if target is None:
        raise UnknownMember(f"user {user_id} is not in team {team_id}")
    if actor == "member" or target.role == "owner" and actor != "owner":
        raise NotAllowed("owners change anyone; admins may lower members' caps")
    if actor == "admin":
        if role is not None and role != target.role:
            raise NotAllowed("only the owner changes roles")
        if target.role != "member" and target.user_id != actor_id:
            raise NotAllowed("admins change members, not other admins")
        if cap is not None and not _lower(credit_service.describe_cap(target.cap_id)["limits"], cap):
            raise NotAllowed("admins may lower a cap, never raise it")
    if role == "owner" or target.role == "owner" and role not in (None, "owner"):
        raise NotAllowed("a team has one owner")
    with atomic() as session:
        if role is not None:
            session.execute(update(MEMBERS).where(MEMBERS.c.team_id == team_id, MEMBERS.c.user_id == user_id)
                            .values(role=role))
            if role == "member":  # the team keys an admin made go with the right to make them
                revoke_keys_in(session, _team_keys_of(session, team_id, user_id))
        if cap is not None:
            credit_service.change_cap(target.cap_id, limits=cap, session=session)
    return member(team_id, actor_id, user_id)


def _lower(now: dict[str, int], asked: dict[str, int]) -> bool:
    """Every limit of `asked` at most the one it replaces (a credit type with none had no limit:
    any is lower), and no limit dropped (no limit is the most)."""
    return all(credit_type in asked for credit_type in now) and all(
        credit_type not in now or amount <= now[credit_type] for credit_type, amount in asked.items())


def remove(team_id: int, actor_id: int, user_id: int) -> None:
    actor = must_be_in(team_id, actor_id).role
    target = member_of(team_id, user_id)
    if target is None:
        raise UnknownMember(f"user {user_id} is not in team {team_id}")
    if target.role == "owner":
        raise NotAllowed("the owner cannot be removed")
    if not (actor == "owner" or (actor == "admin" and (target.role == "member" or user_id == actor_id))
            or user_id == actor_id):
        raise NotAllowed("owners remove anyone; admins remove members; anyone may leave")
    with atomic() as session:
        session.execute(delete(MEMBERS).where(MEMBERS.c.team_id == team_id, MEMBERS.c.user_id == user_id))
        credit_service.close_cap(target.cap_id, session=session)
        revoke_keys_in(session, _team_keys_of(session, team_id, user_id))


def exists(team_id: int) -> bool:
    if team_id > MAX_ID:
        return False
    with atomic(write=False) as session:
        return session.execute(select(TEAMS.c.id).where(TEAMS.c.id == team_id)).first() is not None
