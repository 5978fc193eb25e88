"""The ledger's tables. Models hold no behaviour and never commit: the service does.

They are declared on a plain SQLAlchemy base (no Flask); the app's own tables (users, revoked
sessions) share its metadata through Flask-SQLAlchemy (`SQLAlchemy(model_class=Base)`), so one
set of migrations covers both.
"""
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, MetaData, String, Text,
    UniqueConstraint, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .types import CreditType

# Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every dialect (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given where UTC is required")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer, "sqlite")

CREDIT_TYPES = tuple(credit_type.value for credit_type in CreditType)
MAX_USER_ID = 2**31 - 1  # users.id is a 32-bit INTEGER
MAX_AMOUNT = 10**12  # per grant or charge: far below BigInteger's limit, so sums cannot overflow
# The migrations spell the list out: a new credit type needs one that changes these CHECKs.
CREDIT_TYPE_CHECK = f"credit_type IN ({', '.join(repr(name) for name in CREDIT_TYPES)})"


class CreditAccount(Base):
    """One balance of one user: `available` can be spent now, `held` is reserved by requests."""

    __tablename__ = "credit_accounts"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    credit_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    available: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)

class CreditHold(Base):
    """Credits reserved for one request until it settles, is released, or expires."""

    __tablename__ = "credit_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("settled_amount >= 0", name="settled_not_negative"),
        CheckConstraint(
            "status IN ('open', 'settled', 'released', 'expired')", name="status_known"
        ),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        # Open holds are what new holds (their sweep) and the expiry sweep look for.
        Index(
            "ix_credit_holds_open",
            "user_id",
            "credit_type",
            "expires_at",
            postgresql_where=text("status = 'open'"),
            sqlite_where=text("status = 'open'"),
        ),
        Index(
            "ix_credit_holds_open_expiry",
            "expires_at",
            postgresql_where=text("status = 'open'"),
            sqlite_where=text("status = 'open'"),
        ),
        Index(
            "uq_credit_holds_request_ref", "request_ref", unique=True,
            postgresql_where=text("request_ref IS NOT NULL"),
            sqlite_where=text("request_ref IS NOT NULL"),
        ),
        Index(
            "ix_credit_holds_user_id_idempotency_key",
            "user_id",
            "idempotency_key",
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    credit_type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    settled_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_amount: Mapped[int] = mapped_column(
        BigInteger, CheckConstraint("refunded_amount >= 0 AND refunded_amount <= settled_amount",
                                    name="refunded_amount_in_range"), default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The Idempotency-Key the hold was taken for: `credits verify` reports one key charged twice.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Set by the PostgreSQL hold call: its retry after a lost connection finds this hold.
    request_ref: Mapped[str | None] = mapped_column(String(32), nullable=True)

class LedgerEntry(Base):
    """Append-only record of every balance change; database triggers refuse UPDATE and DELETE.

    `amount` is the change of the spendable balance, `held_change` the change of the reserved
    credits: a hold moves credits from one to the other, a settle consumes held credits.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0 OR held_change <> 0", name="changes_something"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        CheckConstraint("held_after >= 0", name="held_after_not_negative"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint(
            "kind IN ('grant', 'hold', 'settle', 'release', 'expire', 'charge', 'refund', 'void')",
            name="kind_known",
        ),
        # Keyset pagination of a user's history, newest first.
        Index("ix_ledger_entries_user_id_id", "user_id", "id"),
        Index("uq_ledger_entries_user_id_reference", "user_id", "reference", unique=True,
              postgresql_where=text("reference IS NOT NULL"), sqlite_where=text("reference IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    credit_type: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    held_change: Mapped[int] = mapped_column(BigInteger, default=0)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    held_after: Mapped[int] = mapped_column(BigInteger)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("credit_holds.id"), nullable=True)
    # The lot the row moved credits of (None for rows written before lots existed).
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("credit_lots.id"), nullable=True, index=True)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # A grant's outside reference (a payment provider's event id): one grant per reference.
    reference: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

class IdempotencyKey(Base):
    """A client's Idempotency-Key and the answer its first request got."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_id_key"),
        CheckConstraint("status IN ('in_flight', 'completed')", name="status_known"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("credit_holds.id"), nullable=True)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CreditLot(Base):
    """Credits of one grant: spent in a fixed order (priority, then the earliest expiry, then
    the oldest), never spendable from `expires_at` on. `remaining` is what is neither spent,
    expired nor voided (held credits included); `held` is the part open holds set aside."""

    __tablename__ = "credit_lots"
    __table_args__ = (
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
        CheckConstraint("held >= 0 AND held <= remaining", name="held_in_range"),
        CheckConstraint("priority >= 0 AND priority <= 100", name="priority_in_range"),
        CheckConstraint("source IN ('signup', 'admin', 'migration', 'purchase', 'plan')", name="source_known"),
        # The spending order, over the lots that still have something to spend.
        Index("ix_credit_lots_spending", "user_id", "credit_type", "priority", "expires_at", "created_at", "id",
              postgresql_where=text("remaining > held"), sqlite_where=text("remaining > held")),
        Index("ix_credit_lots_expiry", "user_id", "expires_at",
              postgresql_where=text("remaining > held AND expires_at IS NOT NULL"),
              sqlite_where=text("remaining > held AND expires_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    credit_type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CreditHoldLot(Base):
    """A hold's receipt: how much it drew from one lot, and how much of that was settled."""

    __tablename__ = "credit_hold_lots"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("settled >= 0 AND settled <= amount", name="settled_in_range"),
    )

    hold_id: Mapped[int] = mapped_column(ForeignKey("credit_holds.id"), primary_key=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("credit_lots.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    settled: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded: Mapped[int] = mapped_column(
        BigInteger, CheckConstraint("refunded >= 0 AND refunded <= settled", name="refunded_in_range"), default=0)
