"""The surface for code that sells features for credits: `paid_feature` and `charge_and_answer`
(a paid feature in one declaration), the lower-level `require_credits` guard, and the ledger's
service and types."""
from ..api.guard import CreditInfo, require_credits
from ..api.paid import charge_and_answer, paid_feature
from ..ledger import Balance, CreditService, CreditType, InsufficientCredits, Hold, credit_service

__all__ = [
    "Balance", "CreditInfo", "CreditService", "CreditType", "InsufficientCredits", "Hold",
    "charge_and_answer", "credit_service", "paid_feature", "require_credits",
]
