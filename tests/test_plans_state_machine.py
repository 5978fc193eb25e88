"""Random sequences of plan choices, cancellations, spends, pack purchases and a moving clock
(injected; nothing sleeps), against a model of the plan's lots.

A hypothesis RuleBasedStateMachine drives one account on free plans (the default `free`, and
`plus`, chosen or canceled), which change the same ledger as paid ones. The model refills eagerly
at every period's start (the ledger does it lazily, at the first write or read that needs it):
each period's allowance lot, the rollover of what the period before left (capped), an upgrade's
difference at once, a downgrade or a cancellation from the next period, packs untouched. After
every step it checks the balance, what is left of this period's allowance (`GET
/api/subscription`'s `remaining`), the number of plan lots, and that `verify` finds nothing.
"""
import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
import pytest
from sqlalchemy import func, select

from creditapp.ledger import CreditType, InsufficientCredits, credit_service
from creditapp.ledger.lots import LOTS
from creditapp.ledger.transactions import atomic
from creditapp.plans.errors import NoSubscription

GEN = CreditType.GENERATION_CREDITS
PERIOD = 60
PLANS = {
    "free": {"name": "Free", "price": 0, "currency": "usd", "interval_seconds": PERIOD,
             "allowance": {"generation_credits": 5}},
    "plus": {"name": "Plus", "price": 0, "currency": "usd", "interval_seconds": PERIOD,
             "allowance": {"generation_credits": 20}, "rollover_max": {"generation_credits": 10}},
}
ALLOWANCE = {plan: spec["allowance"]["generation_credits"] for plan, spec in PLANS.items()}
ROLLOVER = {"free": 0, "plus": 10}


@pytest.fixture
def creditapp_settings():
    return {"PLANS": PLANS, "DEFAULT_PLAN": "free"}


def plan_machine(app, make_user, clock):
    plans = app.extensions["creditapp.plans"]

    class PlanMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.user = make_user()
            self.start = clock.current
            self.now = 0.0
            self.period = 0
            self.terms = "free"  # the plan of the period under way
            self.next_terms = "free"  # of the periods after it
            self.subscription: str | None = None  # the plan chosen (no row: the default plan)
            self.canceling = False
            self.lots: list[dict] = []  # {"remaining", "priority", "end" (a period's end, or None), "seq", "plan"}
            self.granted = ALLOWANCE["free"]  # the allowance lots' amounts this period (what an upgrade tops up)
            self.plan_lots = 0  # how many plan lots the model made
            self._lot(ALLOWANCE["free"], plan=True)

        # --- the model ------------------------------------------------------------------
        def _lot(self, amount: int, *, plan: bool) -> None:
            end = (self.period + 1) * PERIOD if plan else None
            self.lots.append({"remaining": amount, "priority": 10 if plan else 50, "end": end,
                              "seq": len(self.lots), "plan": plan})
            if plan:
                self.plan_lots += 1

        def _alive(self):
            return [lot for lot in self.lots if lot["end"] is None or lot["end"] > self.now]

        def _refill(self) -> None:
            while self.now >= (self.period + 1) * PERIOD:
                ending = (self.period + 1) * PERIOD
                left = sum(lot["remaining"] for lot in self.lots if lot["plan"] and lot["end"] == ending)
                first = False
                if self.canceling:  # the default plan follows, anchored at the period's end
                    self.subscription, self.canceling, self.next_terms, first = None, False, "free", True
                self.period += 1
                self.terms = self.next_terms
                self.granted = ALLOWANCE[self.terms]
                self._lot(ALLOWANCE[self.terms], plan=True)
                carried = 0 if first else min(ROLLOVER[self.terms], left)
                if carried:
                    self._lot(carried, plan=True)

        # --- the rules --------------------------------------------------------------------
        @rule(seconds=st.integers(1, 150), to_boundary=st.booleans())
        def advance(self, seconds, to_boundary):
            if to_boundary:  # exactly at the next period's start: the new period
                seconds = (self.period + 1) * PERIOD - self.now
            clock.advance(seconds)
            self.now += seconds
            self._refill()

        @rule(plan=st.sampled_from(sorted(PLANS)))
        def choose(self, plan):
            plans.assign(self.user.id, plan)
            if self.subscription == plan and not self.canceling:
                return
            self.subscription, self.canceling, self.next_terms = plan, False, plan
            more = ALLOWANCE[plan] - self.granted
            if more > 0:
                self._lot(more, plan=True)
                self.granted += more

        @rule()
        def cancel(self):
            try:
                plans.cancel(self.user.id)
            except NoSubscription:
                assert self.subscription is None
                return
            assert self.subscription is not None
            self.canceling = True

        @rule(amount=st.integers(1, 30))
        def spend(self, amount):
            available = sum(lot["remaining"] for lot in self._alive())
            try:
                hold = credit_service.reserve(self.user.id, amount, GEN)
            except InsufficientCredits:
                assert amount > available
                return
            assert amount <= available
            hold.pending = amount
            credit_service.close(hold, succeeded=True)
            for lot in sorted(self._alive(), key=lambda l: (l["priority"], l["end"] is None, l["end"] or 0, l["seq"])):
                take = min(amount, lot["remaining"])
                lot["remaining"] -= take
                amount -= take

        @rule(amount=st.integers(1, 20))
        def buy_pack(self, amount):
            credit_service.grant(self.user.id, amount, GEN, priority=50, reason="a pack", source="purchase")
            self._lot(amount, plan=False)

        # --- the checks -------------------------------------------------------------------
        @invariant()
        def agrees(self):
            described = plans.describe(self.user.id)
            assert described["plan"] == (self.subscription or "free"), (described, self.__dict__)
            assert described["cancel_at_period_end"] == self.canceling
            balance = credit_service.get_credit_balance(self.user.id).generation_credits
            assert balance == sum(lot["remaining"] for lot in self._alive()), (balance, self.lots)
            this_period = sum(lot["remaining"] for lot in self._alive() if lot["plan"])
            assert described["remaining"].get("generation_credits", 0) == this_period, (described, self.lots)
            with atomic(write=False) as session:
                made = session.execute(select(func.count()).select_from(LOTS).where(
                    LOTS.c.wallet_id == self.user.id, LOTS.c.source.in_(("plan", "rollover")))).scalar()
            # The model makes every period's lots; the ledger those of the periods someone touched.
            assert made <= self.plan_lots
            assert credit_service.verify() == []

    return PlanMachine


def test_plans_follow_the_model(app, make_user, manual_clock):
    machine = plan_machine(app, make_user, manual_clock)
    phases = list(Phase) if os.environ.get("CREDITAPP_SHRINK") == "1" else [
        phase for phase in Phase if phase not in (Phase.shrink, Phase.explain)]
    run_state_machine_as_test(machine, settings=settings(
        max_examples=int(os.environ.get("PLAN_MACHINE_EXAMPLES", 20)), stateful_step_count=25, deadline=None,
        database=None, phases=phases, suppress_health_check=list(HealthCheck)))
