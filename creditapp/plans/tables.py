"""Subscriptions to a plan and the invoices a provider billed for them. The allowance itself is the ledger's (recurring grants and their lots)."""
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ..ledger.tables import Base, BigId, UTCDateTime

STATUSES = ("incomplete", "active", "past_due", "canceled", "expired")
CURRENT = ("active", "past_due")


class Subscription(Base):
    """A wallet on a plan. `incomplete` while its first invoice is unpaid (a checkout is open),
    then `active` (or `past_due` when a renewal failed) until `canceled`; `expired` when its
    checkout lapsed unpaid. At most one current (active or past_due) per wallet. With no
    `provider` it was chosen free of charge (a free plan, or set by staff)."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status_known"),
        Index("uq_subscriptions_current_wallet", "wallet_id", unique=True,
              postgresql_where=text("status IN ('active', 'past_due')"),
              sqlite_where=text("status IN ('active', 'past_due')")),
        Index("ix_subscriptions_user_id_id", "user_id", "id"),
        Index("ix_subscriptions_checkout_id", "checkout_id", unique=True,
              postgresql_where=text("checkout_id IS NOT NULL"), sqlite_where=text("checkout_id IS NOT NULL")),
        Index("ix_subscriptions_provider_subscription", "provider_subscription", unique=True,
              postgresql_where=text("provider_subscription IS NOT NULL"),
              sqlite_where=text("provider_subscription IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    plan: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(String(16), nullable=True)
    checkout_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    checkout_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider_subscription: Mapped[str | None] = mapped_column(String(255), nullable=True)
    anchor: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A paid plan's period is its last paid invoice's; a free one's is the ledger's (it moves by itself).
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The provider's time of the last subscription event applied: an older one changes nothing.
    provider_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PlanInvoice(Base):
    """An invoice the provider billed for a subscription, as it last said: paid invoices grant
    their period once (the invoice id is unique), failed ones leave the subscription past due."""

    __tablename__ = "plan_invoices"
    __table_args__ = (
        CheckConstraint("status IN ('paid', 'failed')", name="status_known"),
        Index("uq_plan_invoices_provider_invoice_id", "provider", "invoice_id", unique=True),
        Index("ix_plan_invoices_subscription_id", "subscription_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    invoice_id: Mapped[str] = mapped_column(String(255))
    subscription_id: Mapped[int] = mapped_column(BigInteger)
    plan: Mapped[str] = mapped_column(String(64))
    billing_reason: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    granted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
