"""The surface for code that sells features for credits: the ledger's service and types, and the
`require_credits` guard of the web layer."""
from ..api.guard import CreditInfo, require_credits
from ..ledger import Balance, CreditService, CreditType, InsufficientCredits, Hold, credit_service

__all__ = [
    "Balance", "CreditInfo", "CreditService", "CreditType", "InsufficientCredits", "Hold",
    "credit_service", "require_credits",
]
