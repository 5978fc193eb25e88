"""The public surface for code that sells features for credits."""
from ..exceptions import InsufficientCredits
from .decorator import CreditInfo, require_credits
from .service import CreditService, credit_service
from .types import Balance, CreditType, Reservation

__all__ = [
    "Balance", "CreditInfo", "CreditService", "CreditType", "InsufficientCredits", "Reservation",
    "credit_service", "require_credits",
]
