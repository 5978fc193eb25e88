"""Accounts of people: registration, login, admin rights. One transaction per call."""
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .exceptions import InvalidCredentials, NotAdmin, UsernameTaken
from .ledger import Balance, UnknownUser
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
    with atomic(write=False) as session:
        row = session.execute(
            select(USERS.c.id, USERS.c.password_hash).where(_named(username))
        ).first()
    if row is None:
        check_password_hash(_dummy_hash(), password)
        raise InvalidCredentials("invalid username or password")
    if not check_password_hash(row.password_hash, password):
        raise InvalidCredentials("invalid username or password")
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
