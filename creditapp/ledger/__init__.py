"""The credit ledger: balances, holds and the append-only record of every change.

No Flask here: the web app, the CLI, a job worker or a script use it alike, after telling it
where its database is (`database.bind(...)`, see transactions.py).

Vocabulary (one word per idea, in code, API, README and tests):
- **account**: one balance of one user, per credit type (`generation_credits`, `ai_tokens`):
  `available` can be spent now, `held` is set aside by open holds.
- **hold**: credits set aside for one unit of work (a request) until it **settles** (its charge
  is consumed and the rest given back), is **released** (nothing charged) or **expires** (its end
  by time, decided at the write that depends on it, never by a sweep having run).
- **grant**: credits added to an account; a grant's `reference` is unique per user.
- **ledger entry**: one row per change, append-only; `verify` proves the accounts, the open holds
  and the entries agree.
- **lot**: the credits of one grant, spent in a fixed order (lowest priority, earliest expiry,
  oldest); a hold's **receipt** says which lots it drew from.
- **charge**: a settled hold; a **refund** gives (part of) it back to its lots; a **void**
  removes what nobody holds of a lot.
- **key**: a client's Idempotency-Key, bound to the hold of the request that claimed it.
"""
from .errors import (
    AlreadyRefunded, ExpiryNotInTheFuture, HoldExpired, IdempotencyKeyInUse, IdempotencyKeyReused,
    InsufficientCredits, LedgerError, LotAlreadyVoided, NotACharge, NotRefundable, ReferenceConflict,
    RefundExceedsCharge, SessionRevoked, UnknownCharge, UnknownLot, UnknownUser,
)
from .service import CreditService, Discrepancy, credit_service
from .transactions import database
from .types import Balance, CreditType, Grant, Refund, Hold

__all__ = [
    "AlreadyRefunded", "Balance", "ExpiryNotInTheFuture", "CreditService", "CreditType", "Discrepancy", "Grant", "IdempotencyKeyInUse",
    "IdempotencyKeyReused", "InsufficientCredits", "LedgerError", "LotAlreadyVoided", "NotACharge", "NotRefundable",
    "ReferenceConflict", "Refund", "RefundExceedsCharge", "SessionRevoked", "Hold", "HoldExpired", "UnknownCharge",
    "UnknownLot", "UnknownUser", "credit_service", "database",
]
