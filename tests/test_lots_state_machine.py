"""Random sequences of grants, spends, failures, refunds, voids and a moving clock, against a model
of lots.

A hypothesis RuleBasedStateMachine drives the ledger service for one user's generation credits:
grants with priorities and expiries, spends that succeed, fail, or settle less than they held,
holds that outlive a lot's expiry (or their own), refunds in full and in part, voids, and a
ManualClock that moves forward (nothing sleeps). The machine keeps its own model of every lot and
predicts from it which lots each spend draws from (priority, then the earliest expiry, then the
oldest) and what every refund gives back. After every step it checks each lot's remaining credits,
the spending order of the lots listed, the balance, and that `verify` finds nothing.
"""
import os
from dataclasses import dataclass, field
from datetime import timedelta

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)

from creditapp.ledger import (
    AlreadyRefunded, CreditType, InsufficientCredits, HoldExpired, credit_service,
)
from creditapp.ledger.lots import LOTS
from creditapp.ledger.transactions import atomic

GEN = CreditType.GENERATION_CREDITS


@dataclass
class Lot:
    id: int
    priority: int
    expires_at: float | None  # seconds on the model's clock
    seq: int
    remaining: int
    voided: bool = False

    def order(self):
        return (self.priority, self.expires_at is None, self.expires_at or 0, self.seq)


@dataclass
class Charge:
    settled: dict = field(default_factory=dict)  # lot id -> credits taken
    refunded: dict = field(default_factory=dict)


def lot_machine(make_user, clock, hold_ttl: int) -> type[RuleBasedStateMachine]:
    class LotMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.user = make_user()
            self.start = clock()
            self.now = 0.0
            self.lots: dict[int, Lot] = {}
            self.charges: dict[int, Charge] = {}

        # --- the model ----------------------------------------------------------------------------

        def alive(self, lot: Lot, at: float) -> bool:
            return not lot.voided and (lot.expires_at is None or lot.expires_at > at)

        def spendable(self) -> list[Lot]:
            return sorted((lot for lot in self.lots.values() if self.alive(lot, self.now) and lot.remaining),
                          key=Lot.order)

        def allocate(self, amount: int) -> list[tuple[Lot, int]]:
            parts, left = [], amount
            for lot in self.spendable():
                take = min(left, lot.remaining)
                parts.append((lot, take))
                left -= take
                if not left:
                    break
            return parts

        def advance(self, seconds: float) -> None:
            self.now += seconds
            clock.advance(seconds)

        # --- rules --------------------------------------------------------------------------------

        @initialize(amount=st.integers(10, 40))
        def first_grant(self, amount):
            self.grant(amount, 50, None)

        @rule(amount=st.integers(1, 40), priority=st.sampled_from([0, 10, 50, 50, 90]),
              expires_in=st.sampled_from([None, None, 20, 60, 300]))
        def grant(self, amount, priority, expires_in):
            expires_at = None if expires_in is None else clock() + timedelta(seconds=expires_in)
            lot_id = credit_service.grant(self.user.id, amount, GEN, priority=priority, expires_at=expires_at).lot_id
            self.lots[lot_id] = Lot(lot_id, priority, None if expires_in is None else self.now + expires_in,
                                    len(self.lots), amount)

        @rule(seconds=st.sampled_from([1, 5, 15, 45]))
        def time_passes(self, seconds):
            self.advance(seconds)

        @rule(amount=st.integers(1, 8), charged=st.integers(0, 8), outcome=st.sampled_from(
            ["settles", "settles", "fails", "waits", "outlives its hold"]))
        def spend(self, amount, charged, outcome):
            """Hold `amount`; settle `charged` of it (at most the hold), maybe after time passed."""
            charged = min(charged, amount)
            parts = self.allocate(amount)
            try:
                hold = credit_service.reserve(self.user.id, amount, GEN)
            except InsufficientCredits as refused:
                assert sum(take for _, take in parts) < amount, "refused though the lots had enough"
                assert refused.available == sum(lot.remaining for lot in self.spendable())
                event("spend refused")
                return
            assert sum(take for _, take in parts) == amount, "held more than the lots had"
            waited = {"waits": 30, "outlives its hold": hold_ttl}.get(outcome, 0)
            if waited:
                self.advance(waited)
            if charged and outcome != "fails":
                with credit_service.activate(hold):
                    credit_service.deduct_credits(self.user.id, charged, GEN)
            try:
                credit_service.close(hold, succeeded=outcome != "fails")
            except HoldExpired:
                assert outcome == "outlives its hold" and charged
                event("hold expired")
                charged = 0
            if outcome == "outlives its hold":
                charged = 0
            if outcome == "fails":
                charged = 0
            charge, left = Charge(), charged
            for lot, take in parts:  # consumed in spending order; the rest goes back or lapses
                used = min(left, take)
                left -= used
                lot.remaining -= used
                if used:
                    charge.settled[lot.id] = used
                if not self.alive(lot, self.now):
                    lot.remaining -= take - used  # given back to a lot that has gone: it goes too
            if charged:
                self.charges[hold.hold_id] = charge
            event(f"spend {outcome}")

        @precondition(lambda self: self.charges)
        @rule(data=st.data(), part=st.booleans())
        def refund(self, data, part):
            hold_id = data.draw(st.sampled_from(sorted(self.charges)))
            charge = self.charges[hold_id]
            refundable = sum(charge.settled.values()) - sum(charge.refunded.values())
            amount = data.draw(st.integers(1, max(refundable, 1))) if part and refundable else None
            try:
                result = credit_service.refund(hold_id, amount, reason="state machine")
            except AlreadyRefunded:
                assert refundable == 0
                return
            assert refundable > 0
            left = result.amount
            assert left == (amount or refundable)
            undo = sorted(charge.settled, key=lambda lot_id: self.lots[lot_id].order(), reverse=True)
            expected = []
            for lot_id in undo:  # undone from the charge's end
                give = min(left, charge.settled[lot_id] - charge.refunded.get(lot_id, 0))
                if give <= 0:
                    continue
                left -= give
                charge.refunded[lot_id] = charge.refunded.get(lot_id, 0) + give
                lot = self.lots[lot_id]
                gone = not self.alive(lot, self.now)
                if not gone:
                    lot.remaining += give
                expected.append({"lot_id": lot_id, "amount": give, "lapsed": gone})
                if not left:
                    break
            assert result.lots == expected
            event("refund" + (" (lapsed)" if any(p["lapsed"] for p in expected) else ""))

        @precondition(lambda self: any(not lot.voided for lot in self.lots.values()))
        @rule(data=st.data())
        def void(self, data):
            lot = data.draw(st.sampled_from([lot for lot in self.lots.values() if not lot.voided]))
            result = credit_service.void_lot(lot.id, reason="state machine")
            assert result["voided"] == (lot.remaining if self.alive(lot, self.now) else 0)
            lot.voided, lot.remaining = True, 0
            event("void")

        # --- after every step ---------------------------------------------------------------------

        @invariant()
        def lots_are_the_model(self):
            with atomic(write=False) as session:
                rows = {r.id: r for r in session.execute(LOTS.select().where(LOTS.c.wallet_id == self.user.id,
                                                                              LOTS.c.credit_type == GEN.value))}
            for lot in self.lots.values():
                row = rows[lot.id]
                assert row.held == 0, "a hold is left open"
                if self.alive(lot, self.now):
                    assert row.remaining == lot.remaining, f"lot {lot.id}: {row.remaining} != model {lot.remaining}"
                else:  # what has expired is written off by the next write that needs it, or stays due
                    assert row.remaining in (lot.remaining, 0)

        @invariant()
        def balance_and_order_are_the_model(self):
            expected = self.spendable()
            assert credit_service.get_credit_balance(self.user.id).generation_credits == sum(
                lot.remaining for lot in expected)
            listed = credit_service.list_lots(self.user.id, credit_type=GEN, limit=100).items
            assert [item["id"] for item in listed if item["remaining"]] == [lot.id for lot in expected]

        @invariant()
        def ledger_agrees(self):
            assert [d for d in credit_service.verify() if d.wallet_id == self.user.id] == []

    return LotMachine


def test_lots_follow_the_model(app, make_user, manual_clock):
    machine = lot_machine(make_user, manual_clock, app.config["CREDIT_HOLD_TTL_SECONDS"])
    phases = list(Phase) if os.environ.get("CREDITAPP_SHRINK") == "1" else [
        phase for phase in Phase if phase not in (Phase.shrink, Phase.explain)]
    run_state_machine_as_test(machine, settings=settings(
        max_examples=25, stateful_step_count=30, deadline=None, database=None, phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))
