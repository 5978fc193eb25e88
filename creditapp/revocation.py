"""Revoked login sessions, shared by every worker and host.

A login starts a session (the `sid` claim of its access and refresh tokens); logout revokes the
session, which kills every token of it at once. The list lives in the database, or in Redis
when TOKEN_BLOCKLIST_URL is set; an entry is kept until the session's last token has expired.

A token is also refused when its account is disabled (`users.disabled`, always in the
database): `refusal` reads both in the one statement that checks the session, so disabling an
account costs no round trip. With the list in Redis that read is a statement of its own.
"""
from datetime import datetime, timedelta

import redis
from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from .redis_pools import blocking_pool
from .ledger.clock import utcnow
from .ledger.transactions import atomic, read
from .models import RevokedSession, User

REVOKED = RevokedSession.__table__
USERS = User.__table__
PRUNE_BATCH = 100


class DatabaseBlocklist:
    def revoke(self, sid: str, user_id: int, until: datetime) -> None:
        with atomic() as session:
            now = utcnow()
            expired = select(REVOKED.c.sid).where(REVOKED.c.expires_at <= now).limit(PRUNE_BATCH)
            session.execute(delete(REVOKED).where(REVOKED.c.sid.in_(expired.scalar_subquery())))
            # Two logouts of one session at once must both succeed: the second inserts nothing.
            dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            session.execute(
                dialect_insert(REVOKED).values(sid=sid, user_id=user_id, revoked_at=now, expires_at=until)
                .on_conflict_do_nothing(index_elements=["sid"])
            )

    def is_revoked(self, sid: str) -> bool:
        return bool(read(select(REVOKED.c.sid).where(REVOKED.c.sid == sid)))

    def refusal(self, sid: str | None, user_id: int) -> str | None:
        revoked = select(REVOKED.c.sid).where(REVOKED.c.sid == sid).scalar_subquery()
        row = read(select(revoked.label("revoked"), _disabled(user_id).label("disabled")))[0]
        return "revoked" if sid is not None and row.revoked is not None else "disabled" if row.disabled else None


def _disabled(user_id: int):
    return select(USERS.c.disabled).where(USERS.c.id == user_id).scalar_subquery()


class RedisBlocklist:
    def __init__(self, url: str):
        self.redis = redis.Redis(connection_pool=blocking_pool(url, socket_timeout=2, socket_connect_timeout=2))

    def revoke(self, sid: str, user_id: int, until: datetime) -> None:
        seconds = max(1, int((until - utcnow()).total_seconds()))
        self.redis.set(f"creditapp:revoked:{sid}", user_id, ex=seconds)

    def is_revoked(self, sid: str) -> bool:
        return bool(self.redis.exists(f"creditapp:revoked:{sid}"))

    def refusal(self, sid: str | None, user_id: int) -> str | None:
        if sid is not None and self.is_revoked(sid):
            return "revoked"
        return "disabled" if read(select(_disabled(user_id)))[0][0] else None


def init_app(app: Flask) -> None:
    url = app.config.get("TOKEN_BLOCKLIST_URL")
    blocklist = RedisBlocklist(url) if url else DatabaseBlocklist()
    app.extensions["creditapp.blocklist"] = blocklist


def kept_in_database(app: Flask) -> bool:
    """Whether revoked sessions are in the ledger's database (not Redis), where a ledger call can
    check them in passing."""
    return isinstance(app.extensions["creditapp.blocklist"], DatabaseBlocklist)


def is_revoked(app: Flask, sid: str) -> bool:
    return app.extensions["creditapp.blocklist"].is_revoked(sid)


def refusal(app: Flask, sid: str | None, user_id: int) -> str | None:
    """Why a token of `user_id`'s session `sid` must be refused now: "revoked", "disabled" or None."""
    return app.extensions["creditapp.blocklist"].refusal(sid, user_id)


def revoke_session(app: Flask, sid: str, user_id: int) -> None:
    until = utcnow() + _as_timedelta(app.config["JWT_REFRESH_TOKEN_EXPIRES"])
    app.extensions["creditapp.blocklist"].revoke(sid, user_id, until)


def _as_timedelta(value) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=int(value))
