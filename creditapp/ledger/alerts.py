"""Low-balance alerts: an account whose spendable balance goes below its threshold is told once
(a `balance.low` event), and not again until the balance has come back to or above it.

*Spendable* is what the balance read shows as available: neither held nor frozen credits, and
nothing of lots past their expiry. The threshold is the wallet's own (`alert_threshold`) or, when
it has none, the configured default of its credit type; no threshold, no alert.

The state is `alert_below` on the account row, which every balance change locks anyway: set when
the alert is sent, cleared when the balance is back at or above the threshold. It is decided at
the end of every transaction that moved the balance, in it (`before_commit`): a hold, a settle,
a release, an expiry, a grant, a refund, a void, a freeze, a take-back. So an alert exists
exactly when its change commits, and fifty holds at once that cross the threshold queue on the
account's lock and send one. On PostgreSQL the hold and the close decide inside their own
function call (`creditapp_low_balance`, migration 0016), with no extra round trip.

The ledger does not know the outbox: the app plugs in `emit(session, type, data, at=)` (the
webhooks outbox) and `emitted()` (a dispatch, for events the database functions wrote).
"""
import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import bindparam, func, select, update

from . import lots
from .clock import utcnow
from .statements import ACCOUNTS
from .tables import MAX_AMOUNT, TEAM_WALLETS
from .transactions import before_commit, transaction_info
from .types import CreditType

EVENT = "balance.low"
_MOVED = "alerts_moved"

_ACCOUNT = (ACCOUNTS.c.wallet_id == bindparam("p_wallet")) & (ACCOUNTS.c.credit_type == bindparam("p_type"))
STATE = select(ACCOUNTS.c.available, ACCOUNTS.c.alert_threshold, ACCOUNTS.c.alert_below).where(_ACCOUNT)
MARK = update(ACCOUNTS).where(_ACCOUNT).values(alert_below=bindparam("p_below"))
DUE = select(func.coalesce(func.sum(lots.LOTS.c.remaining - lots.LOTS.c.held), 0)).where(
    lots.LOTS.c.wallet_id == bindparam("p_wallet"), lots.LOTS.c.credit_type == bindparam("p_type"),
    lots.LOTS.c.remaining > lots.LOTS.c.held, lots.LOTS.c.expires_at <= bindparam("p_now"),
    lots.LOTS.c.frozen_at.is_(None))


def checked_threshold(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"a threshold must be an integer from 0 to {MAX_AMOUNT}, got {value!r}")
    return value


class Settings:
    """What the app configures: the default thresholds and where alerts go."""

    def __init__(self) -> None:
        self.defaults: dict[str, int] = {}
        self.emit: Callable[..., None] | None = None
        self.emitted: Callable[[], None] = lambda: None
        self.as_json: str | None = None  # the defaults, as the PostgreSQL functions take them

    def configure(self, defaults: dict, emit: Callable[..., None] | None,
                  emitted: Callable[[], None] | None) -> None:
        self.defaults = {CreditType(name).value: checked_threshold(value) for name, value in defaults.items()}
        self.emit, self.emitted = emit, emitted or (lambda: None)
        self.as_json = json.dumps(self.defaults) if self.defaults else None


settings = Settings()


def payload(wallet_id: int, credit_type: str, threshold: int, balance: int) -> dict:
    """A balance.low event's data (creditapp_low_balance builds the same)."""
    user = wallet_id < TEAM_WALLETS
    return {"wallet_id": wallet_id, "user_id": wallet_id if user else None,
            "team_id": None if user else wallet_id - TEAM_WALLETS, "credit_type": credit_type,
            "threshold": threshold, "balance": balance}


def moved(session, wallet_id: int, credit_type: CreditType) -> None:
    """This transaction changed the account's spendable balance: decide its alert before COMMIT."""
    transaction_info(session).setdefault(_MOVED, set()).add((wallet_id, credit_type.value))
    before_commit(session, decide)


def decide(session) -> None:
    """The alerts of every account the transaction moved, as of its final state."""
    accounts = sorted(transaction_info(session).pop(_MOVED, ()))
    if accounts:
        now = utcnow()
        for wallet_id, credit_type in accounts:
            _decide(session, wallet_id, credit_type, now)


def _decide(session, wallet_id: int, credit_type: str, now: datetime) -> None:
    state, threshold, balance = examine(session, wallet_id, credit_type, now)
    below = threshold is not None and balance < threshold
    if below == state.alert_below:
        return
    session.execute(MARK, {"p_wallet": wallet_id, "p_type": credit_type, "p_below": below})
    if below and settings.emit is not None:
        settings.emit(session, EVENT, payload(wallet_id, credit_type, threshold, balance), at=now)


def examine(session, wallet_id: int, credit_type: str, now: datetime):
    """The account's alert state, its threshold in force (None: none) and its spendable balance
    (None when there is no threshold to compare it with)."""
    params = {"p_wallet": wallet_id, "p_type": credit_type}
    state = session.execute(STATE, params).one()
    threshold = state.alert_threshold if state.alert_threshold is not None else settings.defaults.get(credit_type)
    if threshold is None:
        return state, None, None
    due = int(session.execute(DUE, {**params, "p_now": now}).scalar_one())  # PostgreSQL's sum is a numeric
    return state, threshold, state.available - due


def rearm(session, wallet_id: int, credit_type: str, now: datetime) -> None:
    """Clear a sent alert whose balance is at or above its threshold (now that it changed)."""
    state, threshold, balance = examine(session, wallet_id, credit_type, now)
    if state.alert_below and (threshold is None or balance >= threshold):
        session.execute(MARK, {"p_wallet": wallet_id, "p_type": credit_type, "p_below": False})
