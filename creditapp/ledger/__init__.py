"""The credit ledger: balances, holds and the append-only record of every change.

No Flask here: the web app, the CLI, a job worker or a script use it alike, after telling it
where its database is (`database.bind(...)`, see transactions.py).

Vocabulary (one word per idea, in code, API, README and tests):
- **wallet**: what owns balances: a user's (its id is the user's id) or a team's.
- **account**: one balance of one wallet, per credit type (`generation_credits`, `ai_tokens`):
  `available` can be spent now, `held` is set aside by open holds, `debt` is what a take-back
  could not find (later grants pay it first).
- **hold**: credits set aside for one unit of work (a request) until it **settles** (its charge
  is consumed and the rest given back), is **released** (nothing charged) or **expires** (its end
  by time, decided at the write that depends on it, never by a sweep having run).
- **grant**: credits added to an account; a grant's `reference` is unique per wallet. A
  **recurring grant** comes back every period (a plan's allowance), with **rollover**.
- **ledger entry**: one row per change, append-only; `verify` proves the accounts, the open holds
  and the entries agree.
- **lot**: the credits of one grant, spent in a fixed order (lowest priority, earliest expiry,
  oldest); a hold's **receipt** says which lots it drew from.
- **charge**: a settled hold; a **refund** gives (part of) it back to its lots; a **void**
  removes what nobody holds of a lot; a **take-back** removes credits a payment bought
  (refunded, disputed and lost), recording **debt** for what was spent; a **frozen** lot (its
  payment disputed) is not in the balance until it is unfrozen.
- **cap**: a limit on what one spender (an API key, a team member) takes from a wallet per
  period, counted by the hold in its own transaction.
- **admission**: what a paid request passes before its hold: its login session (when the web
  layer leaves that check to the ledger) and the paid rate limit, counted per user in fixed
  windows by the hold's own call (admission.py).
- **spender**: who takes a hold from which wallet, with which caps.
- **key**: a client's Idempotency-Key, bound to the hold of the request that claimed it.
- **alert**: a `balance.low` event, sent once when an account's spendable balance goes below its
  **threshold** (the wallet's own, or the configured default), decided by the transaction that
  moved it (alerts.py); a lot's **expiring notice** is its `lot.expiring`, once per lot.
"""
from .errors import (
    AlreadyRefunded, CapClosed, CapExceeded, CapExpired, CapRefused, ExpiryNotInTheFuture, FeatureNotAllowed,
    HoldExpired, IdempotencyKeyInUse, IdempotencyKeyReused, InsufficientCredits, LedgerError, LotAlreadyVoided,
    LotFrozen, NotACharge, NotRefundable, RateLimited, ReferenceConflict, RefundExceedsCharge, SessionRevoked, AccountDisabled, UnknownCharge,
    UnknownLot, UnknownUser, UnknownWallet,
)
from .admission import Admission, Counted
from .granting import team_wallet, user_wallet
from .service import CreditService, Discrepancy, credit_service
from .transactions import database
from .types import Balance, CreditType, Grant, Hold, Refund, Spender, TakeBack

__all__ = [
    "Admission", "Counted", "RateLimited", "AlreadyRefunded", "Balance", "CapClosed", "CapExceeded", "CapExpired", "CapRefused", "CreditService",
    "CreditType", "Discrepancy", "ExpiryNotInTheFuture", "FeatureNotAllowed", "Grant", "Hold", "HoldExpired",
    "IdempotencyKeyInUse", "IdempotencyKeyReused", "InsufficientCredits", "LedgerError", "LotAlreadyVoided",
    "LotFrozen", "NotACharge", "NotRefundable", "ReferenceConflict", "Refund", "RefundExceedsCharge",
    "SessionRevoked", "AccountDisabled", "Spender", "TakeBack", "UnknownCharge", "UnknownLot", "UnknownUser", "UnknownWallet",
    "credit_service", "database", "team_wallet", "user_wallet",
]
