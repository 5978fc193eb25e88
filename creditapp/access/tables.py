"""Teams, their members and API keys. The money side of each (its cap, the team's wallet) is the
ledger's; these rows say who is who."""
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..ledger.tables import Base, BigId, UTCDateTime

ROLES = ("owner", "admin", "member")


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TeamMember(Base):
    """A user in a team, with a role and a cap (`cap_id`) on what they spend from its wallet."""

    __tablename__ = "team_members"
    __table_args__ = (
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role_known"),
        Index("ix_team_members_user_id", "user_id"),
    )

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))
    cap_id: Mapped[int] = mapped_column(ForeignKey("credit_caps.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A key for servers and scripts. Only its SHA-256 is kept; `prefix` is shown to tell keys
    apart. It spends from `wallet_id` (its user's, or its team's) within its cap."""

    __tablename__ = "api_keys"
    __table_args__ = (
        Index("ix_api_keys_user_id", "user_id"),
        Index("ix_api_keys_team_id", "team_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # who made it
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True)
    wallet_id: Mapped[int] = mapped_column(BigInteger)
    cap_id: Mapped[int] = mapped_column(ForeignKey("credit_caps.id"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    budget_period: Mapped[str | None] = mapped_column(String(8), nullable=True)
    features: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
