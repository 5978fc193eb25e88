"""The hourly usage rollup: requests, failures, charges and refunds per hour, wallet, spender,
key, feature and credit type, kept in the transaction that closes a hold or refunds a charge
(the PostgreSQL close does the same in `creditapp_end_hold`). Reports read it instead of the ledger."""
from datetime import datetime

from .tables import CreditUsage
from .upsert import add_to

USAGE = CreditUsage.__table__


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def count(session, now: datetime, wallet_id: int, user_id: int | None, key_id: int | None, feature: str | None,
          credit_type: str, *, requests: int = 0, failed: int = 0, charged: int = 0, refunded: int = 0) -> None:
    add_to(session, USAGE,
           {"hour": hour_of(now), "wallet_id": wallet_id, "user_id": user_id or 0, "key_id": key_id or 0,
            "feature": feature or "", "credit_type": credit_type},
           {"requests": requests, "failed": failed, "charged": charged, "refunded": refunded})
