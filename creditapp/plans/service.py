"""Plans: which one an account is on, choosing another, canceling, and the default plan every
account without a subscription follows (the ledger's recurring-grant templates).

No provider call is made inside a transaction: a paid plan's checkout is opened like a purchase's
(the row, the checkout, its id and URL), and changes at the provider (cancel, another plan) are
asked first and recorded after; their events, when they come, change nothing more.
"""
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..ledger import credit_service, user_wallet
from ..ledger.clock import utcnow
from ..ledger.recurring import GRANTS, WALLETS
from ..ledger.transactions import atomic, retry_conflicts
from ..payments.errors import PaymentsUnavailable
from ..payments.providers import CheckoutOrder, PaymentDeclined, ProviderUnavailable, Recurring
from . import machine as machines
from .catalogue import Plan
from .errors import NoSubscription, PlanChangeDeclined, SubscriptionAtProvider, UnknownPlan
from .events import SubscriptionEvents
from .machine import SUBSCRIPTIONS, Machine, current_of, ended

TEMPLATE_LOCK = 0x63726564  # the default plan's templates are replaced by one process at a time


class Plans:
    def __init__(self, plans: dict[str, Plan], default_plan: str | None, payments=None, *, logger=None):
        self.plans = plans
        self.default_plan = plans[default_plan] if default_plan else None
        self.payments = payments  # creditapp.payments.service.Payments, or None: free plans only
        self.machine = Machine(plans, payments.provider.name if payments else "none")
        self.events = SubscriptionEvents(self.machine, payments.provider if payments else None, logger=logger)
        if payments is not None:
            payments.inbox.subscriptions = self.events
        self._logger = logger
        self._templates_synced = False

    # --- the default plan --------------------------------------------------------------------
    def sync_default(self) -> bool:
        """Make the ledger's templates DEFAULT_PLAN's (once per process; a no-op when they are).
        True when they changed."""
        if self._templates_synced:
            return False
        changed = self._sync_templates()
        self._templates_synced = True
        return changed

    @retry_conflicts
    def _sync_templates(self) -> bool:
        plan = self.default_plan
        with credit_service.writing() as writes:
            session = writes.session
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": TEMPLATE_LOCK})
            have = {(r.reference, r.credit_type, r.amount, r.rollover_max, r.priority, r.period, r.period_seconds)
                    for r in session.execute(select(GRANTS).where(GRANTS.c.wallet_id.is_(None))).all()}
            want = set()
            if plan is not None:
                period, seconds = plan.period
                want = {(f"plan:{plan.id}", t, amount, rollover, plan.priority, period, seconds)
                        for t, (amount, rollover) in plan.terms().items()}
            if have == want:
                return False
            if plan is None:
                writes.clear_templates()
                return True
            period, seconds = plan.period
            writes.set_recurring(None, f"plan:{plan.id}", plan.terms(), period=period, period_seconds=seconds,
                                 priority=plan.priority)
            return True

    # --- reading -------------------------------------------------------------------------------
    def describe(self, user_id: int) -> dict:
        """The account's plan now (GET /api/subscription); a test provider's renewal that is due
        happens first, as Stripe's would have by itself."""
        wallet = user_wallet(user_id)
        self.sync_default()
        self._advance(wallet)
        credit_service.refill_if_due(wallet)
        now = utcnow()
        with atomic(write=False) as session:
            sub = current_of(session, wallet)
            pending = session.execute(select(SUBSCRIPTIONS).where(
                SUBSCRIPTIONS.c.wallet_id == wallet, SUBSCRIPTIONS.c.status == "incomplete")
                .order_by(SUBSCRIPTIONS.c.id.desc()).limit(1)).first()
        grants = credit_service.recurring_of(wallet)
        remaining: dict[str, int] = {}
        for grant in grants:
            remaining[grant["credit_type"]] = remaining.get(grant["credit_type"], 0) + grant["remaining"]
        started = min((g["period_start"] for g in grants if g["period_start"]), default=None)
        ends = min((g["period_end"] for g in grants if g["period_end"]), default=None)
        if sub is not None and not ended(sub, now):
            plan, status, cancel = self.plans.get(sub.plan), sub.status, sub.cancel_at_period_end
            if sub.provider is not None:
                started, ends = sub.period_start, sub.period_end
        elif self.default_plan is not None:
            plan, status, cancel = self.default_plan, "active", False
        else:  # no plan: "canceled" once one has ended, "none" if there never was one
            with atomic(write=False) as session:
                had = session.execute(select(SUBSCRIPTIONS.c.id).where(
                    SUBSCRIPTIONS.c.wallet_id == wallet, SUBSCRIPTIONS.c.status.in_(("active", "past_due", "canceled")))
                    .limit(1)).first()
            plan, status, cancel = None, "canceled" if had else "none", False
        return {
            "id": sub.id if sub is not None and not ended(sub, now) else None,
            "plan": plan.id if plan else None, "name": plan.name if plan else None, "status": status,
            "provider": sub.provider if sub is not None and not ended(sub, now) else None,
            "period_start": started if plan else None, "period_end": ends if plan else None,
            "cancel_at_period_end": cancel, "allowance": dict(plan.allowance) if plan else {},
            "rollover_max": dict(plan.rollover_max) if plan else {},
            "remaining": {t: remaining.get(t, 0) for t in (plan.allowance if plan else {})} | {
                t: n for t, n in remaining.items() if n},
            "pending": {"id": pending.id, "plan": pending.plan, "checkout_url": pending.checkout_url}
            if pending is not None and pending.checkout_url else None,
        }

    # --- choosing ------------------------------------------------------------------------------
    def choose(self, user_id: int, plan_id: str) -> tuple[dict, int]:
        """Move the account to `plan_id`: a free plan at once (200), a paid one through a checkout
        (201, its `checkout_url`), another paid one at the provider (200)."""
        plan = self._plan(plan_id)
        wallet = user_wallet(user_id)
        self.sync_default()
        self._advance(wallet)
        self._close_ended(wallet)
        with atomic(write=False) as session:
            sub = current_of(session, wallet)
        if sub is not None and sub.provider is not None:
            return self._change_paid(user_id, sub, plan)
        if plan.free:
            self.assign(user_id, plan_id)
            return self.describe(user_id), 200
        return self._open_checkout(user_id, wallet, plan), 201

    def assign(self, user_id: int, plan_id: str, also: Callable[[Session], None] | None = None) -> dict:
        """Put the account on `plan_id` without payment (a free plan, or staff's choice): an
        upgrade's difference now, the plan's terms from the next period. Refused while a paid
        subscription runs at the provider. `also(session)` runs in the transaction of a change."""
        plan = self._plan(plan_id)
        wallet = user_wallet(user_id)
        self.sync_default()
        self._close_ended(wallet)
        for attempt in (1, 2):
            try:
                self._assign(user_id, wallet, plan, also)
                break
            except IntegrityError:  # two first choices at once: the other made the row; use it
                if attempt == 2:
                    raise
        return self.describe(user_id)

    @retry_conflicts
    def _assign(self, user_id: int, wallet: int, plan: Plan, also: Callable[[Session], None] | None) -> None:
        with credit_service.writing() as writes:
            session = writes.session
            now = utcnow()
            sub = current_of(session, wallet, for_update=True)
            if sub is not None and sub.provider is not None:
                raise SubscriptionAtProvider(
                    f"a paid subscription ({sub.plan}) runs at the provider: cancel it (DELETE /api/subscription) "
                    "and it ends with its period")
            if sub is None:
                sub_id = session.execute(insert(SUBSCRIPTIONS).values(
                    wallet_id=wallet, user_id=user_id, plan=plan.id, status="active", provider=None,
                    cancel_at_period_end=False, created_at=now, updated_at=now,
                ).returning(SUBSCRIPTIONS.c.id)).scalar_one()
                sub = machines.lock(session, sub_id)
            elif sub.plan == plan.id and not sub.cancel_at_period_end:
                return
            self.machine.choose(writes, sub, plan, now)
            if also is not None:
                also(session)

    def cancel(self, user_id: int) -> dict:
        """Cancel at the period's end; the allowance stays until then, the default plan follows."""
        wallet = user_wallet(user_id)
        self._advance(wallet)
        self._close_ended(wallet)
        with atomic(write=False) as session:
            sub = current_of(session, wallet)
        if sub is None:
            raise NoSubscription("no subscription to cancel: the account is on the default plan")
        if not sub.cancel_at_period_end:
            if sub.provider is not None:
                self._provider_call(lambda provider: provider.cancel_subscription(
                    sub.provider_subscription, at_period_end=True))
            self._locked(sub.id, lambda writes, locked: locked.cancel_at_period_end
                         or self.machine.cancel(writes, locked, utcnow()))
        return self.describe(user_id)

    # --- helpers ---------------------------------------------------------------------------------
    def _plan(self, plan_id: str) -> Plan:
        plan = self.plans.get(plan_id)
        if plan is None:
            raise UnknownPlan(f"no plan {plan_id!r}; see GET /api/plans")
        return plan

    def _change_paid(self, user_id: int, sub, plan: Plan) -> tuple[dict, int]:
        if plan.free and self.default_plan is not None and plan.id == self.default_plan.id:
            return self.cancel(user_id), 200  # the default plan follows a cancellation at the period's end
        if plan.free:
            raise SubscriptionAtProvider(
                f"the paid plan {sub.plan} runs at the provider: cancel it (DELETE /api/subscription); "
                "the default plan follows at its period's end")
        if plan.id == sub.plan:
            if sub.cancel_at_period_end:  # choosing it again takes the cancellation back
                self._provider_call(lambda provider: provider.cancel_subscription(
                    sub.provider_subscription, at_period_end=False))
                self._locked(sub.id, lambda writes, locked: locked.cancel_at_period_end
                             and self.machine.resume(writes, locked, utcnow()))
            return self.describe(user_id), 200
        self._provider_call(lambda provider: provider.change_plan(
            sub.provider_subscription, self._recurring(plan), plan.price, plan.currency))
        return self.describe(user_id), 200

    def _open_checkout(self, user_id: int, wallet: int, plan: Plan) -> dict:
        payments = self._payments()
        now = utcnow()
        with atomic() as session:
            open_one = session.execute(select(SUBSCRIPTIONS).where(
                SUBSCRIPTIONS.c.wallet_id == wallet, SUBSCRIPTIONS.c.status == "incomplete",
                SUBSCRIPTIONS.c.checkout_id.is_not(None)).order_by(SUBSCRIPTIONS.c.id.desc())).first()
        if open_one is not None:
            if open_one.plan == plan.id and open_one.updated_at > now - timedelta(minutes=payments.pages.expires_minutes):
                # The same checkout again: one subscription, not two.
                return self.describe(user_id) | {"checkout_url": open_one.checkout_url}
            try:
                payments.provider.expire_checkout(open_one.checkout_id)
            except ProviderUnavailable as exc:
                raise PaymentsUnavailable(str(exc)) from exc
            with atomic() as session:
                session.execute(update(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == open_one.id,
                                                            SUBSCRIPTIONS.c.status == "incomplete")
                                .values(status="expired", ended_at=now, updated_at=now))
        with atomic() as session:
            sub_id = session.execute(insert(SUBSCRIPTIONS).values(
                wallet_id=wallet, user_id=user_id, plan=plan.id, status="incomplete",
                provider=payments.provider.name, cancel_at_period_end=False, created_at=now, updated_at=now,
            ).returning(SUBSCRIPTIONS.c.id)).scalar_one()
        base = payments.pages.public_url()
        order = CheckoutOrder(
            reference=f"subscription:{sub_id}", name=plan.name, amount=plan.price, currency=plan.currency,
            success_url=f"{base}/checkout/return?subscription={sub_id}",
            cancel_url=f"{base}/checkout/return?subscription={sub_id}&cancelled=1",
            expires_at=payments.pages.checkout_expires_at(),
            idempotency_key=f"creditapp-subscription-{sub_id}-{int(now.timestamp() * 1e6)}",
            metadata={"creditapp_subscription": str(sub_id), "creditapp_plan": plan.id},
            recurring=self._recurring(plan),
        )
        try:
            checkout = payments.provider.create_checkout(order)
        except ProviderUnavailable as exc:
            with atomic() as session:
                session.execute(delete(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == sub_id))
            raise PaymentsUnavailable(str(exc)) from exc
        with atomic() as session:
            session.execute(update(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == sub_id).values(
                checkout_id=checkout.id, checkout_url=checkout.url))
        return self.describe(user_id) | {"checkout_url": checkout.url}

    @staticmethod
    def _recurring(plan: Plan) -> Recurring:
        return Recurring(plan.id, plan.interval, plan.interval_seconds, plan.stripe_price)

    def _payments(self):
        if self.payments is None:
            raise PaymentsUnavailable("no payment provider is configured (PAYMENTS_PROVIDER): paid plans need one")
        return self.payments

    def _provider_call(self, call) -> None:
        try:
            call(self._payments().provider)
        except PaymentDeclined as exc:
            raise PlanChangeDeclined(str(exc)) from exc
        except ProviderUnavailable as exc:
            raise PaymentsUnavailable(str(exc)) from exc

    def _advance(self, wallet: int) -> None:
        """The test provider renews when asked after a period's end (Stripe does by itself); an
        invoice that came before its period began is applied once it has."""
        provider = self.payments.provider if self.payments else None
        if provider is None:
            return
        with atomic(write=False) as session:
            sub = current_of(session, wallet)
        if sub is None or sub.provider != provider.name:
            return
        if hasattr(provider, "advance") and sub.provider_subscription \
                and sub.period_end is not None and sub.period_end <= utcnow():
            provider.advance(sub.provider_subscription)
        self.events.release(sub.id)

    def _close_ended(self, wallet: int) -> None:
        """A subscription canceled at its period's end is over once the end has come, whether or
        not the provider has said so: the next choice starts afresh."""
        with atomic(write=False) as session:
            sub = current_of(session, wallet)
        if sub is not None and ended(sub, utcnow()):
            def close(writes, locked):
                if locked.status in ("active", "past_due") and ended(locked, utcnow()):
                    # Its grants too, should the provider's events about it never come.
                    writes.end_recurring(locked.wallet_id, machines.reference(locked.id), locked.period_end)
                    machines.Machine._update(writes.session, locked.id, utcnow(), status="canceled",
                                             ended_at=locked.period_end, cancel_at_period_end=False)
            self._locked(sub.id, close)

    @retry_conflicts
    def _locked(self, subscription_id: int, change) -> None:
        with credit_service.writing() as writes:
            locked = machines.lock(writes.session, subscription_id)
            change(writes, locked)

    def refill(self, now: datetime | None = None) -> int:
        """Grant every period that is due (`flask plans refill`: for tidiness, never needed)."""
        self.sync_default()
        with atomic(write=False) as session:
            due = session.execute(select(WALLETS.c.id).where(WALLETS.c.refill_due_at <= (now or utcnow()))
                                  .order_by(WALLETS.c.id)).scalars().all()
        for wallet in due:
            credit_service.refill(wallet)
        return len(due)

