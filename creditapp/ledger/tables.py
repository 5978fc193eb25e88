"""The ledger's tables. Models hold no behaviour and never commit: the service does.

They are declared on a plain SQLAlchemy base (no Flask); the app's own tables (users, revoked
sessions) share its metadata through Flask-SQLAlchemy (`SQLAlchemy(model_class=Base)`), so one
set of migrations covers both.
"""
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, MetaData, String, Text,
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
# A user's wallet has the user's id and a team's wallet TEAM_WALLETS + the team's id, so that a
# request knows its wallet without asking the database (the wallets CHECK keeps it so).
TEAM_WALLETS = 2**31
MAX_AMOUNT = 10**12  # per grant or charge: far below BigInteger's limit, so sums cannot overflow
# The migrations spell the list out: a new credit type needs one that changes these CHECKs.
CREDIT_TYPE_CHECK = f"credit_type IN ({', '.join(repr(name) for name in CREDIT_TYPES)})"
KINDS = ("grant", "hold", "settle", "release", "expire", "charge", "refund", "void",
         "take_back", "debt", "repay", "freeze", "unfreeze")
KIND_CHECK = f"kind IN ({', '.join(repr(kind) for kind in KINDS)})"
SOURCES = ("signup", "admin", "migration", "purchase", "plan", "rollover")
SOURCE_CHECK = f"source IN ({', '.join(repr(source) for source in SOURCES)})"
PERIODS = ("day", "week", "month", "year", "seconds")
PERIOD_CHECK = f"period IN ({', '.join(repr(period) for period in PERIODS)})"


class Wallet(Base):
    """What owns balances: a user's (id = the user's id) or a team's (id = TEAM_WALLETS + team id).

    `refill_due_at` is when a recurring grant of the wallet next needs a write (a plan's new
    period); the hold reads it with the wallet and refills first when it is due."""

    __tablename__ = "wallets"
    __table_args__ = (
        CheckConstraint(
            f"(kind = 'user' AND user_id IS NOT NULL AND team_id IS NULL AND id = user_id) OR "
            f"(kind = 'team' AND team_id IS NOT NULL AND user_id IS NULL AND id = {TEAM_WALLETS} + team_id)",
            name="owner_matches_kind"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(8))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, unique=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refill_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CreditAccount(Base):
    """One balance of one wallet: `available` can be spent now, `held` is reserved by requests,
    `debt` is what refunds took back that had been spent (later grants pay it first).
    `alert_threshold` (None: the configured default) and `alert_below` are the low-balance alert's
    state, kept on the row every balance change already locks."""

    __tablename__ = "credit_accounts"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
        CheckConstraint("debt >= 0", name="debt_not_negative"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
    )

    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), primary_key=True)
    credit_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    available: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    debt: Mapped[int] = mapped_column(BigInteger, default=0)
    alert_threshold: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    alert_below: Mapped[bool] = mapped_column(Boolean, default=False)


class CreditHold(Base):
    """Credits reserved for one request until it settles, is released, or expires. `user_id` is
    who spends (None for a team key used by nobody in particular), `key_id` the API key it came
    with, `feature` what it pays for."""

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
            "wallet_id",
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
        # A wallet's holds newest first: its charges, for support (GET /api/admin/charges).
        Index("ix_credit_holds_wallet_id_id", "wallet_id", "id"),
        Index(
            "ix_credit_holds_wallet_id_idempotency_key",
            "wallet_id",
            "idempotency_key",
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
        # A usage report reads the closes of the parts of hours it cuts (reports.py).
        Index("ix_credit_holds_closed_at", "closed_at", postgresql_where=text("closed_at IS NOT NULL"),
              sqlite_where=text("closed_at IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
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
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    feature: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LedgerEntry(Base):
    """Append-only record of every balance change; database triggers refuse UPDATE and DELETE.

    `amount` is the change of the spendable balance, `held_change` the change of the reserved
    credits, `debt_change` the change of the debt: a hold moves credits from available to held, a
    settle consumes held credits, a take-back that finds nothing left to take records debt.
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("amount <> 0 OR held_change <> 0 OR debt_change <> 0", name="changes_something"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        CheckConstraint("held_after >= 0", name="held_after_not_negative"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint(KIND_CHECK, name="kind_known"),
        # Keyset pagination of a wallet's history, newest first.
        Index("ix_ledger_entries_wallet_id_id", "wallet_id", "id"),
        Index("uq_ledger_entries_wallet_id_reference", "wallet_id", "reference", unique=True,
              postgresql_where=text("reference IS NOT NULL"), sqlite_where=text("reference IS NOT NULL")),
        # ... and the refunds of those parts of hours.
        Index("ix_ledger_entries_refund_created_at", "created_at", postgresql_where=text("kind = 'refund'"),
              sqlite_where=text("kind = 'refund'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    credit_type: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    held_change: Mapped[int] = mapped_column(BigInteger, default=0)
    debt_change: Mapped[int] = mapped_column(BigInteger, default=0)
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
    """A client's Idempotency-Key and the answer its first request got (scoped to the user)."""

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
    expired nor voided (held credits included); `held` is the part open holds set aside. A lot
    with `frozen_at` (its payment is disputed) is not spendable and not in the balance; what holds
    give back to it stays frozen in it."""

    __tablename__ = "credit_lots"
    __table_args__ = (
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
        CheckConstraint("held >= 0 AND held <= remaining", name="held_in_range"),
        CheckConstraint("priority >= 0 AND priority <= 100", name="priority_in_range"),
        CheckConstraint(SOURCE_CHECK, name="source_known"),
        # The spending order, over the lots that still have something to spend.
        Index("ix_credit_lots_spending", "wallet_id", "credit_type", "priority", "expires_at", "created_at", "id",
              postgresql_where=text("remaining > held"), sqlite_where=text("remaining > held")),
        Index("ix_credit_lots_expiry", "wallet_id", "expires_at",
              postgresql_where=text("remaining > held AND expires_at IS NOT NULL"),
              sqlite_where=text("remaining > held AND expires_at IS NOT NULL")),
        Index("ix_credit_lots_reference", "reference",
              postgresql_where=text("reference IS NOT NULL"), sqlite_where=text("reference IS NOT NULL")),
        # The lots whose lot.expiring event is still to come, by expiry.
        Index("ix_credit_lots_expiring_notice", "expires_at",
              postgresql_where=text("expires_at IS NOT NULL AND expiring_notice_at IS NULL"),
              sqlite_where=text("expires_at IS NOT NULL AND expiring_notice_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
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
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When its lot.expiring event was written: once per lot.
    expiring_notice_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


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


class CreditCap(Base):
    """A limit on what one spender (an API key, a team member) may take from a wallet per period.

    Periods run back to back from `anchor` (`period` None: one period that never ends). A hold
    counts its amount against every cap that applies in the same transaction, or is refused; its
    close and any refund correct the count. A closed cap (a revoked key, a removed member) or one
    past `expires_at` refuses every hold; `features` (a JSON list, None for all) limits what it
    may pay for."""

    __tablename__ = "credit_caps"
    __table_args__ = (
        CheckConstraint(f"period IS NULL OR {PERIOD_CHECK}", name="period_known"),
        CheckConstraint("(period = 'seconds') = (period_seconds IS NOT NULL)", name="seconds_with_period"),
        CheckConstraint("period_seconds IS NULL OR period_seconds >= 1", name="period_seconds_positive"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    period: Mapped[str | None] = mapped_column(String(8), nullable=True)
    period_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    anchor: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    features: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Written by holds at most once a minute: when a key was last used, without a write per request.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CreditCapLimit(Base):
    """How much of one credit type a cap allows per period (no row: no limit on that type)."""

    __tablename__ = "credit_cap_limits"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
    )

    cap_id: Mapped[int] = mapped_column(ForeignKey("credit_caps.id"), primary_key=True)
    credit_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class CreditCapSpend(Base):
    """A cap's spend in one period: held + charged − refunded, by holds taken in it."""

    __tablename__ = "credit_cap_spend"
    __table_args__ = (
        CheckConstraint("spent >= 0", name="spent_not_negative"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
    )

    cap_id: Mapped[int] = mapped_column(ForeignKey("credit_caps.id"), primary_key=True)
    credit_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)


class CreditHoldCap(Base):
    """A cap a hold counts against, and the period it counts in."""

    __tablename__ = "credit_hold_caps"

    hold_id: Mapped[int] = mapped_column(ForeignKey("credit_holds.id"), primary_key=True)
    cap_id: Mapped[int] = mapped_column(ForeignKey("credit_caps.id"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)


class CreditRecurringGrant(Base):
    """A grant that comes back every period (a plan's allowance): each period's credits are a lot
    that expires at the period's end, granted once per period by the first write or read that
    needs it; what is left of a period (allowance and rollover, not held) carries into the next as
    a rollover lot, up to `rollover_max`.

    Periods run back to back from `anchor`, between `starts_at` and `ends_at`. With `explicit`,
    periods are granted only when told (a paid plan's invoice), never by the clock. A row with no
    `wallet_id` is the template every user wallet without a grant of its own follows (the
    default plan), anchored at the wallet's creation or the end of its last own grant."""

    __tablename__ = "credit_recurring_grants"
    __table_args__ = (
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint("rollover_max >= 0", name="rollover_max_not_negative"),
        CheckConstraint("priority >= 0 AND priority <= 100", name="priority_in_range"),
        CheckConstraint(PERIOD_CHECK, name="period_known"),
        CheckConstraint("(period = 'seconds') = (period_seconds IS NOT NULL)", name="seconds_with_period"),
        Index("ix_credit_recurring_grants_wallet_id", "wallet_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int | None] = mapped_column(ForeignKey("wallets.id"), nullable=True)
    credit_type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    rollover_max: Mapped[int] = mapped_column(BigInteger, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=10)
    period: Mapped[str] = mapped_column(String(8))
    period_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    anchor: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    explicit: Mapped[bool] = mapped_column(Boolean, default=False)
    # Who set it up ("plan:pro", "subscription:12"): lot references are built from it.
    reference: Mapped[str] = mapped_column(String(128))
    # The last period granted, and its lots (allowance, rollover).
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CreditUsage(Base):
    """Paid requests per hour, wallet, spender, key, feature and credit type: kept in the
    transactions that close holds and refund charges, so a report over a year reads one row per
    group and hour instead of the ledger. 0 and '' stand for "none" (they are in the key)."""

    __tablename__ = "credit_usage"
    __table_args__ = (
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        Index("ix_credit_usage_hour", "hour"),
        Index("ix_credit_usage_wallet_id_hour", "wallet_id", "hour"),
    )

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    credit_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    charged: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
