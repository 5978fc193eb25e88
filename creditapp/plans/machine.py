"""A subscription's state machine: what a provider's event (or the account's own choice of a
free plan) does to it and to the wallet's allowance, in one transaction under the subscription's
lock (taken before its wallet's).

    incomplete ──invoice paid──▶ active ──invoice failed──▶ past_due ──invoice paid──▶ active
    incomplete ──checkout expired──▶ expired        active / past_due ──deleted──▶ canceled

Money moves only through the ledger's recurring grants: a paid invoice grants its period once
(its lots' references name the subscription, the credit type and the period's start; the invoice
is kept, unique per provider); a failed one grants nothing, and nothing comes until an invoice is
paid. A plan change keeps the period under way (an upgrade's difference comes with its proration
invoice, or at once for a free plan) and the new terms grant from the next period.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select, update

from ..ledger.clock import utcnow
from ..payments.facts import Facts
from ..webhooks.outbox import emit
from .catalogue import Plan
from .errors import UnknownPlan
from .tables import CURRENT, PlanInvoice, Subscription

SUBSCRIPTIONS = Subscription.__table__
INVOICES = PlanInvoice.__table__
# Stripe's statuses, as ours: "unpaid" is a past-due subscription Stripe stopped retrying.
# How far ahead of ours the provider's clock may be for a first invoice or a proration (neither
# rolls anything over, so granting a little early counts nothing twice). A renewal's period must
# have begun here: before, what the last period left is still being spent.
CLOCK_SKEW = timedelta(minutes=5)
PROVIDER_STATUSES = {"active": "active", "trialing": "active", "past_due": "past_due", "unpaid": "past_due"}


@dataclass(frozen=True)
class Outcome:
    status: str  # applied, deferred, ignored
    detail: str
    # A paid subscription this one replaced (two checkouts paid): canceled at the provider too,
    # after the transaction, so that it bills no more.
    superseded: str | None = None


def reference(subscription_id: int) -> str:
    """The ledger's name for the subscription's recurring grants and their lots."""
    return f"subscription:{subscription_id}"


def lock(session, subscription_id: int):
    return session.execute(select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == subscription_id)
                           .with_for_update()).one_or_none()


def current_of(session, wallet_id: int, *, for_update: bool = False):
    query = select(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.wallet_id == wallet_id, SUBSCRIPTIONS.c.status.in_(CURRENT))
    return session.execute(query.with_for_update() if for_update else query).one_or_none()


def ended(sub, now: datetime) -> bool:
    """Canceled at its period's end, and the end has come (whether or not the provider said so yet)."""
    return sub.cancel_at_period_end and sub.period_end is not None and sub.period_end <= now


def _when(unix: int | None) -> datetime | None:
    return datetime.fromtimestamp(unix, timezone.utc) if unix is not None else None


class Machine:
    def __init__(self, plans: dict[str, Plan], provider: str):
        self.plans = plans
        self.provider = provider

    def plan_of(self, facts: Facts, sub) -> Plan | None:
        """The plan an event is about: its Price's (a change made in Stripe's portal keeps the
        metadata), else ours in its metadata, else the subscription's."""
        for plan in self.plans.values():
            if facts.price and plan.stripe_price == facts.price:
                return plan
        if facts.plan in self.plans:
            return self.plans[facts.plan]
        return self.plans.get(sub.plan)

    def _plan_of_row(self, sub) -> Plan:
        """The subscription's plan; one taken out of PLANS since cannot be applied (its event waits)."""
        plan = self.plans.get(sub.plan)
        if plan is None:
            raise UnknownPlan(f"plan {sub.plan!r} is no longer in PLANS")
        return plan

    def apply(self, writes, sub, facts: Facts) -> Outcome:
        handler = getattr(self, f"_{facts.move}", None)
        if handler is None:
            return Outcome("ignored", f"not a subscription move: {facts.move}")
        try:
            return handler(writes, sub, facts, utcnow())
        except UnknownPlan as exc:  # kept: applied if the plan comes back to PLANS
            return Outcome("deferred", str(exc))

    # --- the moves -----------------------------------------------------------------------
    def _subscribe(self, writes, sub, facts: Facts, now: datetime) -> Outcome:
        """The checkout completed: the subscription is known by the provider's id from now; its
        first invoice, paid, makes it active."""
        if sub.provider_subscription or not facts.provider_subscription:
            return Outcome("ignored", "checkout completed: known already")
        self._update(writes.session, sub.id, now, provider_subscription=facts.provider_subscription)
        return Outcome("applied", f"checkout completed: {facts.provider_subscription}")

    def _subscription_expire(self, writes, sub, facts: Facts, now: datetime) -> Outcome:
        if sub.status != "incomplete":
            return Outcome("ignored", f"checkout expired: the subscription is {sub.status}")
        self._update(writes.session, sub.id, now, status="expired", ended_at=now)
        return Outcome("applied", "incomplete -> expired")

    def _invoice_failed(self, writes, sub, facts: Facts, now: datetime) -> Outcome:
        plan = self.plan_of(facts, sub)
        if not self._record_invoice(writes.session, sub, facts, plan, "failed", now):
            return Outcome("ignored", f"invoice {facts.invoice_id} was paid already")
        if sub.status == "active":
            self._update(writes.session, sub.id, now, status="past_due")
            # The period the failed invoice was for, not the one paid already (the row's).
            period = {name: datetime.fromtimestamp(value, timezone.utc)
                      for name, value in (("period_start", facts.period_start), ("period_end", facts.period_end))
                      if value is not None}
            _tell(writes.session, "subscription.past_due", sub, plan, now, status="past_due",
                  invoice_id=facts.invoice_id, amount=facts.amount, currency=(facts.currency or "").lower() or None,
                  **period)
            return Outcome("applied", "active -> past_due")
        return Outcome("applied", f"invoice failed: the subscription is {sub.status}")

    def _invoice_paid(self, writes, sub, facts: Facts, now: datetime) -> Outcome:
        plan = self.plan_of(facts, sub)
        start, end = _when(facts.period_start), _when(facts.period_end)
        if not facts.invoice_id or plan is None or start is None or end is None or end <= start:
            return Outcome("ignored", "invoice without a known plan or period")
        early = timedelta(0) if facts.billing_reason == "subscription_cycle" else CLOCK_SKEW
        if start > now + early:
            # A period that has not begun: granting it now would lend its credits early and roll
            # over from a period still being spent. It waits (GET /api/subscription releases it).
            return Outcome("deferred", f"a period from {start.isoformat()}, not begun")
        if sub.status == "canceled":
            self._record_invoice(writes.session, sub, facts, plan, "paid", now, granted=False)
            return Outcome("ignored", "invoice of a canceled subscription")
        updating = facts.billing_reason == "subscription_update"
        if updating and sub.status not in CURRENT:
            return Outcome("deferred", "an update's invoice waits for the subscription's first")
        currency = (facts.currency or "").lower()
        if updating:  # a proration: some money, in the plan's currency
            wrong = currency != plan.currency or (facts.amount or 0) <= 0
        else:  # a period: the plan's price exactly (as a purchase's)
            wrong = (facts.amount, currency) != (plan.price, plan.currency)
        if wrong:
            self._record_invoice(writes.session, sub, facts, plan, "paid", now, granted=False)
            return Outcome("applied", f"amount_mismatch: paid {facts.amount} {facts.currency}, "
                                      f"plan {plan.id} costs {plan.price} {plan.currency}")
        if not self._record_invoice(writes.session, sub, facts, plan, "paid", now, granted=True):
            return Outcome("ignored", f"invoice {facts.invoice_id} was paid already")
        wallet = sub.wallet_id
        if updating:
            if plan.id != sub.plan:
                self._set_terms(writes, sub, plan, now)
            granted = writes.top_up_period(wallet, reference(sub.id), plan.allowance, key=facts.invoice_id)
            self._update(writes.session, sub.id, now, status="active", plan=plan.id)
            return Outcome("applied", f"upgrade to {plan.id}: {granted or 'nothing more'}")
        changes = {"status": "active"}
        if sub.provider_subscription is None and facts.provider_subscription:
            changes["provider_subscription"] = facts.provider_subscription
        superseded = None
        if sub.status in ("incomplete", "expired"):
            superseded = self._activate(writes, sub, plan, start, now)
            changes.update(anchor=start, plan=plan.id, ended_at=None)
        if sub.period_start is None or start >= sub.period_start:
            changes.update(period_start=start, period_end=end)
        writes.grant_period(wallet, reference(sub.id), start, end)
        self._update(writes.session, sub.id, now, **changes)
        if sub.status in CURRENT:  # a period after the first (the first is the subscription's start)
            _tell(writes.session, "subscription.renewed", sub, plan, now, status="active", period_start=start,
                  period_end=end, invoice_id=facts.invoice_id, amount=facts.amount, currency=currency,
                  previous_status=sub.status)
        return Outcome("applied", f"{sub.status} -> active: period from {start.isoformat()}", superseded)

    def _subscription_update(self, writes, sub, facts: Facts, now: datetime) -> Outcome:
        created = _when(facts.created)
        if created is not None and sub.provider_updated_at is not None and created < sub.provider_updated_at:
            return Outcome("ignored", "an older update than one applied")
        if facts.status in ("canceled", "incomplete_expired"):
            return self._subscription_delete(writes, sub, facts, now)
        changes: dict = {"provider_updated_at": created or now}
        if sub.provider_subscription is None and facts.provider_subscription:
            changes["provider_subscription"] = facts.provider_subscription
        if sub.status not in CURRENT:
            self._update(writes.session, sub.id, now, **changes)
            return Outcome("applied", f"noted: the subscription is {sub.status}")
        plan = self.plan_of(facts, sub)
        if plan is not None and plan.id != sub.plan:
            # The period under way keeps what it has; an upgrade's difference comes with its invoice.
            self._set_terms(writes, sub, plan, now)
            changes["plan"] = plan.id
        end, provider_end = sub.period_end, _when(facts.period_end)
        if provider_end is not None and end is not None and provider_end > end:
            # The provider's period moved on (renewed; its invoice not paid yet): a cancellation
            # ends with the period under way, not the one before, or that invoice would grant nothing.
            changes.update(period_start=_when(facts.period_start), period_end=provider_end)
            if sub.cancel_at_period_end:
                writes.end_recurring(sub.wallet_id, reference(sub.id), provider_end, extend_from=end)
            end = provider_end
        if facts.cancel_at_period_end is not None:
            if facts.cancel_at_period_end != sub.cancel_at_period_end:
                changes["cancel_at_period_end"] = facts.cancel_at_period_end
            if facts.cancel_at_period_end:  # at the provider's period's end (a repeat changes nothing)
                writes.end_recurring(sub.wallet_id, reference(sub.id), end or now)
            elif sub.cancel_at_period_end and "plan" not in changes:
                self._set_terms(writes, sub, plan or self._plan_of_row(sub), now)
        status = PROVIDER_STATUSES.get(facts.status or "")
        if status == "past_due" and sub.status == "active":
            changes["status"] = status
            _tell(writes.session, "subscription.past_due", sub, plan or self._plan_of_row(sub), now,
                  status="past_due")
        self._update(writes.session, sub.id, now, **changes)
        return Outcome("applied", f"updated: {sorted(k for k in changes if k != 'provider_updated_at')}")

    def _subscription_delete(self, writes, sub, facts: Facts, now: datetime) -> Outcome:
        if sub.status in ("canceled", "expired"):
            return Outcome("ignored", f"deleted: the subscription is {sub.status}")
        if sub.status == "incomplete":
            self._update(writes.session, sub.id, now, status="expired", ended_at=now)
            return Outcome("applied", "incomplete -> expired")
        # What was paid runs to its period's end; the default plan follows from there.
        at = max(now, sub.period_end or now)
        writes.end_recurring(sub.wallet_id, reference(sub.id), at)
        self._update(writes.session, sub.id, now, status="canceled", ended_at=at, cancel_at_period_end=False,
                     provider_updated_at=_when(facts.created) or now)
        return Outcome("applied", f"{sub.status} -> canceled")

    # --- free plans, chosen or assigned ----------------------------------------------------
    def choose(self, writes, sub, plan: Plan, now: datetime) -> dict:
        """The wallet's (locked) free subscription `sub` takes `plan` now: a new period's terms,
        and what an upgrade adds to the period under way. What the top-up granted."""
        self._set_terms(writes, sub, plan, now)
        granted = writes.top_up_period(sub.wallet_id, reference(sub.id), plan.allowance, key=plan.id)
        period = writes.current_period(sub.wallet_id)
        self._update(writes.session, sub.id, now, plan=plan.id, status="active", cancel_at_period_end=False,
                     period_start=period[1] if period else None, period_end=period[2] if period else None)
        return granted

    def resume(self, writes, sub, now: datetime) -> None:
        """Take a cancellation back before the period's end: the plan's terms go on."""
        self._set_terms(writes, sub, self._plan_of_row(sub), now)
        self._update(writes.session, sub.id, now, cancel_at_period_end=False)

    def cancel(self, writes, sub, now: datetime) -> None:
        """At the period's end; the allowance stays until then and the default plan follows."""
        end = sub.period_end
        if sub.provider is not None:
            # The provider's event ends the grants, at its period's end: ours may be a renewal behind.
            self._update(writes.session, sub.id, now, cancel_at_period_end=True)
            return
        period = writes.current_period(sub.wallet_id)
        end = period[2] if period else now
        writes.end_recurring(sub.wallet_id, reference(sub.id), end or now)
        self._update(writes.session, sub.id, now, cancel_at_period_end=True, period_end=end)

    # --- helpers -----------------------------------------------------------------------------
    def _set_terms(self, writes, sub, plan: Plan, now: datetime) -> None:
        """From now on the wallet's grants are `plan`'s; the period under way keeps its lots."""
        period, seconds = plan.period
        if sub.provider is None:
            found = writes.current_period(sub.wallet_id)
            anchor = found[0] if found else now
        else:
            anchor = sub.period_start or sub.anchor or now
        writes.set_recurring(sub.wallet_id, reference(sub.id), plan.terms(), period=period, period_seconds=seconds,
                             priority=plan.priority, anchor=anchor, starts_at=now, explicit=sub.provider is not None)

    def _activate(self, writes, sub, plan: Plan, start: datetime, now: datetime) -> str | None:
        """The first paid invoice: the subscription becomes the wallet's current one (ending a free
        one, or a paid one whose provider subscription it returns), its terms start with the
        invoice's period."""
        previous = current_of(writes.session, sub.wallet_id, for_update=True)
        superseded = None
        if previous is not None and previous.id != sub.id:
            self._update(writes.session, previous.id, now, status="canceled", ended_at=now)
            superseded = previous.provider_subscription
        period, seconds = plan.period
        writes.set_recurring(sub.wallet_id, reference(sub.id), plan.terms(), period=period, period_seconds=seconds,
                             priority=plan.priority, anchor=start, starts_at=min(start, now), explicit=True)
        return superseded

    def _record_invoice(self, session, sub, facts: Facts, plan: Plan | None, status: str, now: datetime,
                        granted: bool = False) -> bool:
        """Keep what the provider said of the invoice; False when it was paid already (a repeat,
        or a failure reported after the payment)."""
        row = session.execute(select(INVOICES).where(
            INVOICES.c.provider == self.provider, INVOICES.c.invoice_id == facts.invoice_id).with_for_update()).first()
        values = {"status": status, "granted": granted, "updated_at": now, "amount_paid": facts.amount or 0,
                  "currency": (facts.currency or "")[:3] or None, "period_start": _when(facts.period_start),
                  "period_end": _when(facts.period_end), "plan": plan.id if plan else sub.plan}
        if row is None:
            session.execute(insert(INVOICES).values(
                provider=self.provider, invoice_id=facts.invoice_id or "", subscription_id=sub.id,
                billing_reason=(facts.billing_reason or "")[:32], created_at=now, **values))
            return True
        if row.status == "paid":
            return False
        session.execute(update(INVOICES).where(INVOICES.c.id == row.id).values(**values))
        return True

    @staticmethod
    def _update(session, subscription_id: int, now: datetime, **changes) -> None:
        session.execute(update(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.id == subscription_id)
                        .values(updated_at=now, **changes))


def _tell(session, event_type: str, sub, plan: Plan | None, now: datetime, **more) -> None:
    """An event for operators (creditapp.webhooks), in the move's own transaction."""
    emit(session, event_type, {
        "subscription_id": sub.id, "user_id": sub.user_id, "wallet_id": sub.wallet_id,
        "plan": plan.id if plan else sub.plan, "provider": sub.provider,
        "period_start": sub.period_start, "period_end": sub.period_end,
        "allowance": dict(plan.allowance) if plan else None, **more}, at=now)
