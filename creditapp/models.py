"""The app's own tables (users, revoked sessions); the ledger's are in creditapp.ledger.tables.
Models hold no behaviour and never commit."""
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from . import admin_actions  # noqa: F401  (its table: in the one metadata)
from .access import tables as access_tables  # noqa: F401  (teams, members, keys: in the one metadata)
from .dashboard import tables as dashboard_tables  # noqa: F401  (verify runs: in the one metadata)
from .extensions import db
from .payments import tables as payment_tables  # noqa: F401  (purchases, the inbox: in the one metadata)
from .plans import tables as plan_tables  # noqa: F401  (subscriptions, invoices: in the one metadata)
from .webhooks import tables as webhook_tables  # noqa: F401  (the outbox, endpoints, deliveries: in the one metadata)
from .ledger.clock import utcnow
from .ledger.tables import UTCDateTime


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Refused at the next request (tokens, keys, login): read where the caller is checked anyway.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# One name whatever its case (each user keeps the spelling they chose).
Index("uq_users_username_lower", func.lower(User.username), unique=True)


class RevokedSession(db.Model):
    """A logged-out session: its tokens are refused until they would have expired anyway."""

    __tablename__ = "revoked_sessions"
    __table_args__ = (Index("ix_revoked_sessions_expires_at", "expires_at"),)

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

