"""What administrators did: one row per action (a grant, a refund, a void, an account disabled...),
written in the transaction of the action itself, so that a row exists exactly when the action
committed. Not the ledger's audit (`flask credits verify`): this says who did what, and when.

Action names are `noun.verb` or a single verb: `grant`, `team.grant`, `refund`, `void`,
`plan.assign`, `user.disabled`, `user.enabled`, `user.admin_granted`, `user.admin_revoked`,
`webhook.created`, `webhook.changed`, `webhook.deleted`, `webhook.retried`.
"""
import json
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, column, insert, select, table
from sqlalchemy.orm import Mapped, Session, mapped_column

from .ledger.clock import utcnow
from .ledger.tables import Base, UTCDateTime
from .ledger.transactions import atomic


class AdminAction(Base):
    """What an administrator did, written in the action's transaction."""

    __tablename__ = "admin_actions"
    __table_args__ = (Index("ix_admin_actions_target_user_id_id", "target_user_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_user_id: Mapped[int] = mapped_column(ForeignKey("users.id", name="fk_admin_actions_actor_user_id_users"))
    action: Mapped[str] = mapped_column(String(64))
    target_user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    details: Mapped[str] = mapped_column(Text)


ACTIONS = AdminAction.__table__
USERS = table("users", column("id"), column("username"))  # the app's (creditapp.models), read here only


def record(session: Session, *, actor_user_id: int, action: str, target_user_id: int | None = None,
           details: dict | None = None) -> int:
    """Write the row in `session`'s transaction (the action's); its id."""
    return session.execute(insert(ACTIONS).values(
        at=utcnow(), actor_user_id=actor_user_id, action=action, target_user_id=target_user_id,
        details=json.dumps(details or {}, sort_keys=True, default=str),
    ).returning(ACTIONS.c.id)).scalar_one()


def recent(limit: int = 50, before: int | datetime | None = None, *,
           target_user_id: int | None = None) -> list[dict]:
    """The latest actions, newest first: {id, at, actor_user_id, actor_username, action,
    target_user_id, details}. `before` is an action id (the last one of the previous page) or a
    time; `target_user_id` keeps one account's."""
    query = (select(ACTIONS, USERS.c.username.label("actor_username"))
             .join(USERS, USERS.c.id == ACTIONS.c.actor_user_id)
             .order_by(ACTIONS.c.id.desc()).limit(limit))
    if isinstance(before, datetime):
        query = query.where(ACTIONS.c.at < before)
    elif before is not None:
        query = query.where(ACTIONS.c.id < before)
    if target_user_id is not None:
        query = query.where(ACTIONS.c.target_user_id == target_user_id)
    with atomic(write=False) as session:
        rows = session.execute(query).mappings().all()
    return [{**row, "details": json.loads(row["details"])} for row in rows]
