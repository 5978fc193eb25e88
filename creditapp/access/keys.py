"""API keys: made, listed, changed and revoked by their user; found by the hash of their secret.

A key's secret (`ck_` and 32 random bytes, URL-safe) is shown once; only its SHA-256 is kept, in a
unique index, so finding a key costs one index probe whatever their number. What a key may spend
is a cap in the ledger, which its holds count against in their own transaction: its budget is
exact under any concurrency. Revoking closes the cap, so from that commit on no hold is taken
with it, on any worker or host.
"""
import hashlib
import json
import secrets
from datetime import datetime

from sqlalchemy import column, insert, select, table, update

from ..ledger import credit_service, procedures, team_wallet, user_wallet
from ..ledger.clock import utcnow
from ..ledger.transactions import atomic
from . import teams
from .errors import InvalidKey, KeyAlreadyRevoked, KeyExpired, KeyRevoked, UnknownKey
from .tables import ApiKey

KEYS = ApiKey.__table__
PREFIX = "ck_"
SHOWN = 11  # "ck_" and 8 characters: enough to tell keys apart, nothing to guess the rest from


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_key(token: str | None) -> bool:
    return bool(token) and token.startswith(PREFIX)


def create(user_id: int, *, name: str, budget: dict[str, int], period: str | None, period_seconds: int | None,
           features: list[str] | None, expires_at: datetime | None, team_id: int | None) -> tuple[dict, str]:
    """A new key and its secret (shown this once). A team key spends from the team's wallet and
    is made by its owner or an admin."""
    if team_id is not None:
        teams.may_budget(team_id, user_id, budget)  # the answer for a caller who may not (404, 403)
    wallet_id = team_wallet(team_id) if team_id is not None else user_wallet(user_id)
    secret = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    with atomic() as session:
        if team_id is not None:
            # Again under the member row's lock, in the key's own transaction: a removal or a
            # demotion committing meanwhile would otherwise miss the key it should revoke.
            teams.may_budget(team_id, user_id, budget, session=session)
        cap_id = credit_service.create_cap(wallet_id, budget, period=period, period_seconds=period_seconds,
                                           expires_at=expires_at, features=features, session=session)
        key_id = session.execute(insert(KEYS).values(
            user_id=user_id, team_id=team_id, wallet_id=wallet_id, cap_id=cap_id, name=name, prefix=secret[:SHOWN],
            secret_hash=digest(secret), budget_period=period if period_seconds is None else "seconds",
            features=None if features is None else json.dumps(sorted(set(features))), created_at=now,
            expires_at=expires_at,
        ).returning(KEYS.c.id)).scalar_one()
    return describe(find(key_id, user_id)), secret


# With whether its maker's account is disabled, in the same statement (no round trip of its own).
FIND = ("SELECT k.id, k.user_id, k.team_id, k.wallet_id, k.cap_id, k.revoked_at, k.expires_at, u.disabled "
        "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.secret_hash = %(hash)s")
USERS = table("users", column("id"), column("disabled"))


def authenticate(secret: str):
    """The key with this secret, if it may be used now (and `disabled`: whether its maker's account
    is); InvalidKey, KeyRevoked or KeyExpired.
    On PostgreSQL one statement in autocommit: a key's request costs the round trips of a login
    token's (the key instead of the session check, the hold, the close)."""
    if procedures.available():
        key = procedures.call(FIND, {"hash": digest(secret)})
    else:
        with atomic(write=False) as session:
            key = session.execute(select(KEYS, USERS.c.disabled).join(USERS, USERS.c.id == KEYS.c.user_id)
                                  .where(KEYS.c.secret_hash == digest(secret))).one_or_none()
    if key is None:
        raise InvalidKey("no such API key")
    if key.revoked_at is not None:
        raise KeyRevoked("this API key was revoked")
    if key.expires_at is not None and key.expires_at <= utcnow():
        raise KeyExpired("this API key has expired")
    return key


def find(key_id: int, user_id: int | None, team_id: int | None = None):
    query = select(KEYS).where(KEYS.c.id == key_id)
    if user_id is not None:
        query = query.where(KEYS.c.user_id == user_id)
    if team_id is not None:
        query = query.where(KEYS.c.team_id == team_id)
    with atomic(write=False) as session:
        key = session.execute(query).one_or_none()
    if key is None:
        raise UnknownKey(f"no key {key_id}")
    return key


def mine(user_id: int) -> list:
    with atomic(write=False) as session:
        return session.execute(select(KEYS).where(KEYS.c.user_id == user_id, KEYS.c.revoked_at.is_(None))
                               .order_by(KEYS.c.id)).all()


def change(key_id: int, user_id: int, *, name: str | None = None, budget: dict[str, int] | None = None,
           features: list[str] | None = ...) -> dict:
    key = find(key_id, user_id)
    if key.revoked_at is not None:
        raise KeyAlreadyRevoked("this API key was revoked")
    with atomic() as session:
        if key.team_id is not None:  # its maker must still be the team's owner or an admin
            teams.may_budget(key.team_id, user_id, budget if budget is not None else
                             credit_service.describe_cap(key.cap_id, session=session)["limits"], session=session)
        values = {}
        if name is not None:
            values["name"] = name
        if features is not ...:
            values["features"] = None if features is None else json.dumps(sorted(set(features)))
        if values:
            session.execute(update(KEYS).where(KEYS.c.id == key_id).values(**values))
        credit_service.change_cap(key.cap_id, limits=budget, features=features, session=session)
    return describe(find(key_id, user_id))


def revoke(key_id: int, user_id: int | None) -> dict:
    """Revoke the key (the user's own; any, for `user_id` None: a team's owner or admin, checked
    by the caller)."""
    key = find(key_id, user_id)
    with atomic() as session:
        revoke_in(session, [key])
    return describe(find(key_id, user_id))


revoke_in = teams.revoke_keys_in


def of_team(team_id: int, made_by: int | None = None) -> list:
    """A team's keys not revoked (of one maker's, when given)."""
    query = select(KEYS).where(KEYS.c.team_id == team_id, KEYS.c.revoked_at.is_(None))
    if made_by is not None:
        query = query.where(KEYS.c.user_id == made_by)
    with atomic(write=False) as session:
        return session.execute(query.order_by(KEYS.c.id)).all()


def describe(key) -> dict:
    cap = credit_service.describe_cap(key.cap_id)
    return {
        "id": key.id, "name": key.name, "prefix": key.prefix, "budget": cap["limits"], "spent": cap["spent"],
        "budget_period": key.budget_period, "period_resets_at": cap["period_end"],
        "features": None if key.features is None else json.loads(key.features), "team": key.team_id,
        "created_at": key.created_at, "last_used_at": cap["last_used_at"], "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }
