"""The credit ledger's one entry point: `credit_service`, a `CreditService`.

No Flask request code lives here, so the same service serves the API, the CLI and workers.
Every public method is one transaction. The operations live in modules by what they are about,
each small enough to read at once:

- core.py: locking an account, moving a balance, ledger rows, ending a hold (the shared steps);
- reading.py: balances, what lapses next, lots and the ledger of a wallet;
- granting.py: wallets opened, grants (paying debt first), take-backs and debt, frozen lots, voids;
- admission.py: what a paid request passes before its hold (session, paid rate limit), counted
  in the hold's own call;
- holds.py: holds taken within their caps, charged, closed, extended, expired; Idempotency-Keys;
- refunds.py: refunds of charges;
- recurring.py: recurring grants (a plan's allowance, rollover), granted by the write that needs them;
- caps.py: caps on what a key or a team member spends per period, counted by holds;
- thresholds.py: low-balance alerts' thresholds (alerts.py decides the alerts, in each write);
- audit.py: `verify`;
- reports.py: usage reports (from the hourly rollup of usage.py and the ledger).
"""
from .admission import Admitting
from .audit import Audit, Discrepancy
from .caps import Caps
from .core import LedgerCore
from .granting import Granting
from .holds import Holds
from .reading import LedgerPage, Overview, Reading
from .recurring import Recurring
from .refunds import Refunds
from .reports import Reports
from .thresholds import Thresholds
from .types import Balance

__all__ = ["CreditService", "Discrepancy", "LedgerPage", "Overview", "credit_service", "open_accounts"]


class CreditService(Reading, Granting, Admitting, Holds, Refunds, Recurring, Caps, Thresholds, Audit, Reports, LedgerCore):
    """Every ledger operation, on the database the ledger is bound to (transactions.py)."""


credit_service = CreditService()


def open_accounts(session, user_id: int, grant: Balance, reason: str, expires_at=None) -> None:
    """Open a new user's wallet inside the caller's transaction (see `CreditService.open_wallet`)."""
    credit_service.open_wallet(session, user_id, grant, reason, expires_at)
