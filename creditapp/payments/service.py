"""Purchases: open one (a checkout at the provider), read them, bring them up to date.

Opening one is three short steps, none holding a transaction across the provider's call: the
purchase row (everything frozen from the catalogue), the checkout (the provider's idempotency
key is derived from the purchase, so a retried call answers the same session), the checkout's id
and URL. If the provider fails the row is deleted: nothing is left half-made.
"""
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..ledger import UnknownUser, user_wallet
from ..ledger.clock import utcnow
from ..ledger.transactions import atomic
from . import inbox
from .catalogue import Pack
from .errors import PaymentsUnavailable, UnknownPack, UnknownPurchase
from .facts import of_checkout
from .providers import CheckoutOrder, PaymentProvider, ProviderUnavailable
from .tables import Purchase

PURCHASES = Purchase.__table__
UNSETTLED = ("open", "processing")


@dataclass(frozen=True)
class CheckoutPages:
    success_url: str  # may hold {PURCHASE_ID} and {PUBLIC_URL}
    cancel_url: str
    expires_minutes: int
    public_url: Callable[[], str]

    def url(self, template: str, purchase_id: int) -> str:
        return template.replace("{PURCHASE_ID}", str(purchase_id)).replace("{PUBLIC_URL}", self.public_url())

    def checkout_expires_at(self) -> datetime:
        # Counted from the call, a minute inside Stripe's bounds (30 minutes to 24 hours after it
        # makes the session), so that neither the time spent here nor a skewed clock crosses one.
        return utcnow() + min(max(timedelta(minutes=self.expires_minutes), timedelta(minutes=31)),
                              timedelta(hours=24) - timedelta(minutes=1))


class Payments:
    def __init__(self, provider: PaymentProvider, packs: dict[str, Pack], pages: CheckoutPages, *, logger=None):
        self.provider = provider
        self.packs = packs
        self.pages = pages
        self.inbox = inbox.Inbox(provider, logger=logger)
        self._logger = logger

    def create(self, user_id: int, pack_id: str, wallet_id: int | None = None):
        """Open a purchase of `pack_id` by `user_id`, for their own wallet or `wallet_id` (a team's,
        which the caller has checked they may buy for)."""
        pack = self.packs.get(pack_id)
        if pack is None:
            raise UnknownPack(f"no pack {pack_id!r}; see GET /api/purchases/packs")
        now = utcnow()
        try:
            purchase_id = self._insert(user_id, wallet_id or user_wallet(user_id), pack, now,
                                       now + timedelta(minutes=self.pages.expires_minutes))
        except IntegrityError:
            raise UnknownUser(f"no user with id {user_id}") from None  # its wallet is gone
        expires_at = self.pages.checkout_expires_at()
        order = CheckoutOrder(
            reference=f"purchase:{purchase_id}", name=pack.name, amount=pack.price, currency=pack.currency,
            success_url=self.pages.url(self.pages.success_url, purchase_id),
            cancel_url=self.pages.url(self.pages.cancel_url, purchase_id),
            # The id and its creation time: SQLite gives a deleted row's id again, and a key used
            # with other parameters is refused by Stripe for a day.
            expires_at=expires_at, idempotency_key=f"creditapp-purchase-{purchase_id}-{int(now.timestamp() * 1e6)}",
            metadata={"purchase_id": str(purchase_id)},
        )
        try:
            checkout = self.provider.create_checkout(order)
        except ProviderUnavailable as exc:
            with atomic() as session:
                session.execute(delete(PURCHASES).where(PURCHASES.c.id == purchase_id))
            raise PaymentsUnavailable(str(exc)) from exc
        with atomic() as session:
            session.execute(update(PURCHASES).where(PURCHASES.c.id == purchase_id).values(
                checkout_id=checkout.id, checkout_url=checkout.url, expires_at=checkout.expires_at))
        return self.find(purchase_id)

    def _insert(self, user_id: int, wallet_id: int, pack: Pack, now: datetime, expires_at: datetime) -> int:
        with atomic() as session:
            return session.execute(insert(PURCHASES).values(
                wallet_id=wallet_id, user_id=user_id, pack=pack.id, name=pack.name,
                credit_type=pack.credit_type, credits=pack.credits, price=pack.price, currency=pack.currency,
                priority=pack.priority, expires_in_days=pack.expires_in_days, status="open",
                provider=self.provider.name, created_at=now, expires_at=expires_at, updated_at=now,
                refunded=0, credits_taken_back=0,
            ).returning(PURCHASES.c.id)).scalar_one()

    def find(self, purchase_id: int, user_id: int | None = None):
        """The purchase (the buyer's own when `user_id` is given), or UnknownPurchase."""
        query = select(PURCHASES).where(PURCHASES.c.id == purchase_id)
        if user_id is not None:
            query = query.where(PURCHASES.c.user_id == user_id)
        with atomic(write=False) as session:
            row = session.execute(query).first()
        if row is None:
            raise UnknownPurchase(f"no purchase {purchase_id}")
        return row

    def refresh(self, purchase_id: int, user_id: int | None = None):
        """The purchase, after asking the provider about its checkout while it is unsettled: the
        page a buyer returns to shows the credits even when the webhook is late. A provider that
        does not answer leaves it as it was (the webhook, or reconcile, will tell)."""
        row = self.find(purchase_id, user_id)
        if row.status not in UNSETTLED or row.checkout_id is None:
            return row
        try:
            state = self.provider.retrieve_checkout(row.checkout_id)
        except ProviderUnavailable as exc:
            if self._logger:
                self._logger.warning("purchase %s: %s", purchase_id, exc)
            return row
        facts = of_checkout(state)
        if facts.move != "ignore":
            self.inbox.apply_facts(row.id, facts)
        return self.find(purchase_id, user_id)

    def list(self, *, user_id: int | None = None, status: str | None = None, limit: int = 20,
             before: int | None = None) -> list:
        query = select(PURCHASES).order_by(PURCHASES.c.id.desc()).limit(limit)
        if user_id is not None:
            query = query.where(PURCHASES.c.user_id == user_id)
        if status is not None:
            query = query.where(PURCHASES.c.status == status)
        if before is not None:
            query = query.where(PURCHASES.c.id < before)
        with atomic(write=False) as session:
            return session.execute(query).all()

    def reconcile(self, older_than: timedelta = timedelta(minutes=10), now: datetime | None = None) -> dict:
        """For webhooks that never came: ask the provider about every purchase still unsettled
        and created before `older_than` ago, and apply what it says; then apply the inbox's events
        that were stored but never applied (a worker that died between the two)."""
        now = now or utcnow()
        cutoff = now - older_than
        with atomic() as session:
            # Made, but the process died before the checkout's id was kept: no buyer has its
            # page, and by now it has lapsed at the provider too.
            session.execute(update(PURCHASES).where(
                PURCHASES.c.status == "open", PURCHASES.c.checkout_id.is_(None), PURCHASES.c.expires_at <= now,
            ).values(status="expired", updated_at=now))
        with atomic(write=False) as session:
            ids = session.execute(select(PURCHASES.c.id).where(
                PURCHASES.c.status.in_(UNSETTLED), PURCHASES.c.created_at <= cutoff)
                .order_by(PURCHASES.c.id)).scalars().all()
        asked, changed = 0, 0
        for purchase_id in ids:
            try:
                before = self.find(purchase_id).status
                after = self.refresh(purchase_id).status
            except Exception:  # one purchase must not stop the others, nor the inbox's turn
                if self._logger:
                    self._logger.exception("reconcile: purchase %s", purchase_id)
                continue
            asked += 1
            changed += after != before
        return {"asked": asked, "changed": changed, "events_applied": self.inbox.apply_stored(cutoff)}
