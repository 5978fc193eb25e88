"""Purchases and the inbox of provider events. The money side of a purchase (its lot) is the
ledger's; these rows say what was bought, for how much, and what the provider said."""
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ..ledger.tables import CREDIT_TYPE_CHECK, Base, BigId, UTCDateTime

STATUSES = ("open", "processing", "paid", "failed", "expired", "partially_refunded", "refunded", "disputed",
            "dispute_lost")
INBOX_STATUSES = ("received", "applied", "deferred", "unmatched", "ignored")


class Purchase(Base):
    """A pack bought by a user for a wallet; what it costs and gives is frozen when it is made."""

    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status_known"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("price > 0", name="price_positive"),
        CheckConstraint("refunded >= 0 AND refunded <= price", name="refunded_in_range"),
        CheckConstraint("credits_taken_back >= 0 AND credits_taken_back <= credits", name="taken_back_in_range"),
        Index("ix_purchases_user_id_id", "user_id", "id"),
        Index("ix_purchases_status_created_at", "status", "created_at"),
        Index("ix_purchases_payment_intent", "payment_intent", unique=True,
              postgresql_where=text("payment_intent IS NOT NULL"), sqlite_where=text("payment_intent IS NOT NULL")),
        Index("ix_purchases_checkout_id", "checkout_id", unique=True,
              postgresql_where=text("checkout_id IS NOT NULL"), sqlite_where=text("checkout_id IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # who bought it
    pack: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    credit_type: Mapped[str] = mapped_column(String(32))
    credits: Mapped[int] = mapped_column(BigInteger)
    price: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    priority: Mapped[int] = mapped_column(Integer)
    expires_in_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    provider: Mapped[str] = mapped_column(String(16))
    checkout_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    checkout_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    payment_intent: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the checkout lapses
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lot_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)  # money, minor units, cumulative
    credits_taken_back: Mapped[int] = mapped_column(BigInteger, default=0)
    failure_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)


class PaymentEvent(Base):
    """The inbox: every verified provider event, stored before it is applied (unique per provider
    and event id), and what applying it did. `facts` is what creditapp read from it (JSON)."""

    __tablename__ = "payment_events"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in INBOX_STATUSES)})", name="status_known"),
        Index("uq_payment_events_provider_event_id", "provider", "event_id", unique=True),
        Index("ix_payment_events_purchase_id_status", "purchase_id", "status"),
        Index("ix_payment_events_payment_intent", "payment_intent",
              postgresql_where=text("status = 'unmatched'"), sqlite_where=text("status = 'unmatched'")),
        Index("ix_payment_events_status_received_at", "status", "received_at"),
        Index("ix_payment_events_subscription_id_status", "subscription_id", "status"),
        Index("ix_payment_events_provider_subscription", "provider_subscription",
              postgresql_where=text("status = 'unmatched'"), sqlite_where=text("status = 'unmatched'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64))
    livemode: Mapped[bool] = mapped_column(Boolean)
    created: Mapped[datetime] = mapped_column(UTCDateTime)  # the provider's time
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(64), nullable=True)
    purchase_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    payment_intent: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subscription_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # ours (plans)
    provider_subscription: Mapped[str | None] = mapped_column(String(255), nullable=True)
    facts: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)


class TestCheckout(Base):
    """The built-in test provider's checkouts: what Stripe would keep of a Checkout Session."""

    __tablename__ = "test_checkouts"
    __test__ = False  # not a test class, whatever its name

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    reference: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # open, complete, expired
    payment_status: Mapped[str] = mapped_column(String(16))  # unpaid, paid
    payment_intent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    success_url: Mapped[str] = mapped_column(Text)
    cancel_url: Mapped[str] = mapped_column(Text)
    metadata_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    mode: Mapped[str] = mapped_column(String(16), default="payment", server_default="payment")
    subscription_json: Mapped[str | None] = mapped_column(Text, nullable=True)  # a plan's terms (mode subscription)


class TestSubscription(Base):
    """The built-in test provider's subscriptions: what Stripe keeps of one, and what the test
    page has told it to do at the next renewal."""

    __tablename__ = "test_subscriptions"
    __test__ = False

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkout_id: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str] = mapped_column(String(64))
    metadata_json: Mapped[str] = mapped_column(Text)
    plan: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(8))
    period_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # active, past_due, canceled
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    fail_renewals: Mapped[bool] = mapped_column(Boolean, default=False)
    open_invoice: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a renewal not paid yet
    # The highest price paid for the period under way (an upgrade's proration is charged above it).
    period_paid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
