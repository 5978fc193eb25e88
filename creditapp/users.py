"""Accounts of people: registration, login, admin rights. One transaction per call."""
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from . import admin_actions
from .exceptions import InvalidCredentials, NotAdmin, OwnAccess, UsernameTaken
from .ledger import AccountDisabled, Balance, UnknownUser
from .ledger.clock import utcnow
from .ledger.service import open_accounts
from .ledger.transactions import atomic, read
from .models import User

USERS = User.__table__


def _named(username: str):
    """Names are one whatever their case (usernames are ASCII, so both sides fold alike)."""
    return func.lower(USERS.c.username) == username.lower()


def create_user(
    username: str, password: str, *, is_admin: bool = False, signup_grant: Balance = Balance(),
    hash_method: str = "scrypt", signup_expires_in_days: int | None = None,
) -> dict:
    """A new user with both balances opened and the signup grant in the ledger."""
    password_hash = generate_password_hash(password, method=hash_method)
    try:
        with atomic() as session:
            if session.execute(select(USERS.c.id).where(_named(username))).first():
                raise UsernameTaken(f"username {username!r} is taken")
            user_id = session.execute(
                insert(USERS)
                .values(username=username, password_hash=password_hash, is_admin=is_admin,
                        created_at=utcnow())
                .returning(USERS.c.id)
            ).scalar_one()
            expires_at = utcnow() + timedelta(days=signup_expires_in_days) if signup_expires_in_days else None
            open_accounts(session, user_id, signup_grant, reason="signup grant", expires_at=expires_at)
    except IntegrityError:
        # Two registrations of one name at once: the unique index decides. Anything else is a bug.
        if _username_exists(username):
            raise UsernameTaken(f"username {username!r} is taken") from None
        raise
    return {"id": user_id, "username": username, "is_admin": is_admin}


def authenticate(username: str, password: str) -> int:
    """The user's id, or InvalidCredentials; as slow for an unknown name as for a wrong password."""
    if "\x00" in username:  # no name has one, and PostgreSQL refuses NUL in text (a 500, not a 401)
        username = ""
    with atomic(write=False) as session:
        row = session.execute(
            select(USERS.c.id, USERS.c.password_hash, USERS.c.disabled).where(_named(username))
        ).first()
    if row is None:
        check_password_hash(_dummy_hash(), password)
        raise InvalidCredentials("invalid username or password")
    if not check_password_hash(row.password_hash, password):
        raise InvalidCredentials("invalid username or password")
    if row.disabled:  # told only to whoever knows the password
        raise AccountDisabled("this account is disabled")
    return row.id


def user_id_by_name(username: str) -> int:
    with atomic(write=False) as session:
        user_id = session.execute(select(USERS.c.id).where(_named(username))).scalar()
    if user_id is None:
        raise UnknownUser(f"no user named {username!r}")
    return user_id


def require_admin(user_id: int) -> None:
    """Admin rights are read from the database on every call, so a demotion takes effect at once."""
    rows = read(select(USERS.c.is_admin).where(USERS.c.id == user_id))
    if not rows:
        raise UnknownUser(f"no user with id {user_id}")
    if not rows[0].is_admin:
        raise NotAdmin("administrator rights required")


def profile(user_id: int) -> dict:
    """id, username, is_admin, disabled, created_at; UnknownUser."""
    rows = read(select(USERS.c.id, USERS.c.username, USERS.c.is_admin, USERS.c.disabled, USERS.c.created_at)
                .where(USERS.c.id == user_id))
    if not rows:
        raise UnknownUser(f"no user with id {user_id}")
    return dict(rows[0]._mapping)


def search(query: str | None, *, limit: int, after_id: int | None = None) -> tuple[list[dict], int | None]:
    """Users whose name contains `query` (any case) or whose id it is, by id, `limit` at a time
    after `after_id`; and the last id when more may follow."""
    statement = select(USERS.c.id, USERS.c.username, USERS.c.is_admin, USERS.c.disabled, USERS.c.created_at)
    if query:
        named = func.lower(USERS.c.username).contains(query.lower(), autoescape=True)
        # An id as ids are written everywhere else: ASCII decimal, no leading zero ("²", "٣", "03" are names).
        is_id = query.isascii() and query.isdigit() and len(query) < 10 and str(int(query)) == query
        statement = statement.where(or_(named, USERS.c.id == int(query)) if is_id else named)
    if after_id is not None:
        statement = statement.where(USERS.c.id > after_id)
    with atomic(write=False) as session:
        rows = session.execute(statement.order_by(USERS.c.id).limit(limit + 1)).mappings().all()
    found = [dict(row) for row in rows[:limit]]
    return found, (found[-1]["id"] if len(rows) > limit else None)


def set_access(actor_id: int, user_id: int, *, disabled: bool | None = None, is_admin: bool | None = None) -> dict:
    """Disable or enable an account, grant or revoke its admin right, with an admin action row
    for each change, in one transaction. The actor's row is locked with the target's (in id
    order) and must still be an enabled administrator's: two admins demoting each other at once
    cannot leave nobody in charge. OwnAccess for the actor's own disabling or demotion."""
    if user_id == actor_id and (disabled is True or is_admin is False):
        raise OwnAccess("an administrator cannot disable their own account or drop their own admin right")
    with atomic() as session:
        rows = {row.id: row for row in session.execute(
            select(USERS.c.id, USERS.c.is_admin, USERS.c.disabled).where(USERS.c.id.in_({actor_id, user_id}))
            .order_by(USERS.c.id).with_for_update()).all()}
        actor = rows.get(actor_id)
        if actor is None or not actor.is_admin or actor.disabled:
            raise NotAdmin("administrator rights required")
        if user_id not in rows:
            raise UnknownUser(f"no user with id {user_id}")
        target, changes = rows[user_id], {}
        if disabled is not None and disabled != target.disabled:
            changes["disabled"] = disabled
            admin_actions.record(session, actor_user_id=actor_id, target_user_id=user_id,
                                 action="user.disabled" if disabled else "user.enabled")
        if is_admin is not None and is_admin != target.is_admin:
            changes["is_admin"] = is_admin
            admin_actions.record(session, actor_user_id=actor_id, target_user_id=user_id,
                                 action="user.admin_granted" if is_admin else "user.admin_revoked")
        if changes:
            session.execute(update(USERS).where(USERS.c.id == user_id).values(**changes))
    return profile(user_id)


def require_user(user_id: int) -> None:
    """UnknownUser unless the user exists."""
    if not read(select(USERS.c.id).where(USERS.c.id == user_id)):
        raise UnknownUser(f"no user with id {user_id}")


def _username_exists(username: str) -> bool:
    with atomic(write=False) as session:
        return session.execute(select(USERS.c.id).where(_named(username))).first() is not None


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return generate_password_hash("not-a-real-password")


def usernames(user_ids) -> dict[int, str]:
    with atomic(write=False) as session:
        return dict(session.execute(select(USERS.c.id, USERS.c.username).where(USERS.c.id.in_(list(user_ids)))).all())
