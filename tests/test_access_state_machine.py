"""Random sequences over wallets, keys, caps, members and a moving clock, against a model.

Two members spend from a team wallet within their caps, a team key within its budget, and one
member's own key from their own wallet; requests take holds and end charged, partly charged or
given back, sometimes in a later period than they began; the clock moves; the owner lowers a
cap, revokes the key, removes a member. After each step: every cap's spend this period is what
the model says and never past its limit, every balance is the model's, and verify() is clean.
"""
import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from creditapp.access import keys, teams
from creditapp.ledger import InsufficientCredits, Spender, credit_service, team_wallet
from creditapp.ledger.errors import CapClosed, CapExceeded

GEN = "generation_credits"
PERIOD = 60  # seconds
STEP = st.floats(min_value=0.5, max_value=20)  # under the holds' 600 s, over a whole run


def access_machine(make_user, clock):
    class AccessMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.owner, self.m1, self.m2 = make_user(), make_user(credits=6), make_user()
            team = teams.create(self.owner.id, "model")
            self.team = team["id"]
            self.wallet = team_wallet(self.team)
            credit_service.grant(self.wallet, 40, GEN, reason="model", reference=f"model-{self.team}")
            self.balances = {self.wallet: 40, self.m1.id: 6}
            self.limits, self.first_limits, self.spenders = {}, {}, {}
            for name, user, limit in (("m1", self.m1, 5), ("m2", self.m2, 4)):
                teams.add(self.team, self.owner.id, user.id, role="member", cap={GEN: limit}, period=None,
                          period_seconds=PERIOD)
                cap_id = teams.member_of(self.team, user.id).cap_id
                self._spender(name, Spender(self.wallet, user.id, user.id, caps=(cap_id,)), cap_id, limit)
            for name, user_id, team_id, wallet, limit in (("teamkey", self.owner.id, self.team, self.wallet, 6),
                                                          ("m1key", self.m1.id, None, self.m1.id, 3)):
                described, _ = keys.create(user_id, name=name, budget={GEN: limit}, period=None,
                                           period_seconds=PERIOD, features=None, expires_at=None, team_id=team_id)
                key = keys.find(described["id"], user_id)
                self._spender(name, Spender(wallet, None if team_id else user_id, user_id, key_id=key.id,
                                            caps=(key.cap_id,)), key.cap_id, limit, key_id=key.id)
            self.spent = {}  # (cap_id, period start) -> held + charged - given back
            self.closed = set()  # caps closed (a revoked key, a removed member)
            self.holds = []  # (hold, spender name, amount, period start)

        def _spender(self, name, spender, cap_id, limit, key_id=None):
            self.spenders[name] = (spender, cap_id, key_id)
            self.limits[cap_id] = limit
            self.first_limits[cap_id] = limit

        def _start(self, cap_id):
            return credit_service.describe_cap(cap_id)["period_start"]

        @rule(name=st.sampled_from(["m1", "m2", "teamkey", "m1key"]), amount=st.integers(1, 3))
        def reserve(self, name, amount):
            spender, cap_id, _ = self.spenders[name]
            start = self._start(cap_id)
            spent = self.spent.get((cap_id, start), 0)
            try:
                hold = credit_service.reserve(spender.wallet_id, amount, GEN, spender=spender)
            except CapClosed:
                assert cap_id in self.closed
                return
            except CapExceeded:
                assert cap_id not in self.closed and spent + amount > self.limits[cap_id]
                return
            except InsufficientCredits:
                assert self.balances[spender.wallet_id] < amount
                return
            assert cap_id not in self.closed and spent + amount <= self.limits[cap_id]
            assert self.balances[spender.wallet_id] >= amount
            self.spent[(cap_id, start)] = spent + amount
            self.balances[spender.wallet_id] -= amount
            self.holds.append((hold, name, amount, start))

        @precondition(lambda self: self.holds)
        @rule(index=st.integers(0, 50), share=st.sampled_from([0, 0.5, 1]))
        def end(self, index, share):
            hold, name, amount, start = self.holds.pop(index % len(self.holds))
            spender, cap_id, _ = self.spenders[name]
            charge = int(amount * share)
            if charge:
                with credit_service.activate(hold):
                    credit_service.deduct_credits(spender.wallet_id, charge, GEN)
            credit_service.close(hold, succeeded=bool(charge))
            # What was not charged goes back to the wallet and to the cap, in the hold's own period.
            self.spent[(cap_id, start)] -= amount - charge
            self.balances[spender.wallet_id] += amount - charge

        @rule(seconds=STEP)
        def wait(self, seconds):
            clock.advance(seconds)

        @rule(limit=st.integers(0, 5))
        def lower_m1s_cap(self, limit):
            _, cap_id, _ = self.spenders["m1"]
            if cap_id in self.closed:
                return
            limit = min(limit, self.limits[cap_id])
            teams.change(self.team, self.owner.id, self.m1.id, role=None, cap={GEN: limit})
            self.limits[cap_id] = limit

        @precondition(lambda self: self.spenders["teamkey"][1] not in self.closed)
        @rule()
        def revoke_the_team_key(self):
            _, cap_id, key_id = self.spenders["teamkey"]
            keys.revoke(key_id, self.owner.id)
            self.closed.add(cap_id)

        @precondition(lambda self: self.spenders["m2"][1] not in self.closed)
        @rule()
        def remove_m2(self):
            teams.remove(self.team, self.owner.id, self.m2.id)
            self.closed.add(self.spenders["m2"][1])

        @invariant()
        def caps_follow_the_model_and_hold(self):
            for _, cap_id, _ in self.spenders.values():
                start = self._start(cap_id)
                spent = credit_service.describe_cap(cap_id)["spent"].get(GEN, 0)
                assert spent == self.spent.get((cap_id, start), 0)
                # Limits only go down here; a lowered one can leave this period's spend above it,
                # never above what was allowed when it was spent.
                assert spent <= self.first_limits[cap_id]

        @invariant()
        def balances_follow_the_model(self):
            for wallet, expected in self.balances.items():
                assert credit_service.get_credit_balance(wallet).generation_credits == expected

        def teardown(self):
            for hold, *_ in self.holds:
                credit_service.close(hold, succeeded=False)
            assert credit_service.verify() == []

    return AccessMachine


def test_wallets_keys_and_caps_follow_the_model(app, make_user, manual_clock):
    phases = list(Phase) if os.environ.get("CREDITAPP_SHRINK") == "1" else [
        phase for phase in Phase if phase not in (Phase.shrink, Phase.explain)]
    run_state_machine_as_test(access_machine(make_user, manual_clock), settings=settings(
        max_examples=20, stateful_step_count=25, deadline=None, database=None, phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))
