from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class CreditType(str, Enum):
    GENERATION_CREDITS = "generation_credits"
    AI_TOKENS = "ai_tokens"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Balance:
    """What a wallet can spend now, per credit type."""

    generation_credits: int = 0
    ai_tokens: int = 0

    def as_dict(self) -> dict:
        return {"generation_credits": self.generation_credits, "ai_tokens": self.ai_tokens}


@dataclass(frozen=True)
class Spender:
    """Who takes a hold from which wallet: `user_id` spends (None for a team key used by nobody in
    particular), `client_id` owns the Idempotency-Keys, `key_id` is the API key it came with and
    `caps` the caps (credit_caps ids) the hold counts against."""

    wallet_id: int
    user_id: int | None
    client_id: int
    key_id: int | None = None
    caps: tuple[int, ...] = ()

    @classmethod
    def of_user(cls, user_id: int) -> "Spender":
        """A user spending from their own wallet with their login token."""
        return cls(wallet_id=user_id, user_id=user_id, client_id=user_id)


@dataclass
class Hold:
    """Credits held for one unit of work (a request) until it settles or gives them back."""

    hold_id: int
    wallet_id: int
    credit_type: CreditType
    amount: int
    available_before: int
    available_after: int
    balance: Balance = Balance()  # both balances right after the hold
    expires_at: datetime | None = None
    key: str | None = None  # the Idempotency-Key the hold was taken for
    pending: int = 0  # charged so far; committed when the hold closes successfully
    reason: str | None = None
    closed: bool = False
    user_id: int | None = None  # who spends; None for a team key used by nobody in particular
    client_id: int | None = None  # whose Idempotency-Keys (and jobs): the token's or the API key's user


@dataclass(frozen=True)
class Grant:
    """Credits added to a balance; `created` is False when a grant with its reference existed.
    `repaid` is the part that went to pay the wallet's debt of that credit type."""

    id: int
    wallet_id: int
    amount: int
    credit_type: CreditType
    reason: str | None
    reference: str | None
    balance: Balance
    created: bool = True
    lot_id: int | None = None
    lot: dict | None = None  # the lot as it is now (see lots.describe)
    repaid: int = 0


@dataclass(frozen=True)
class Refund:
    """Credits of a charge given back: `lots` says which lots got how much (`lapsed` where the
    lot had expired or was voided, so the credits went again at once)."""

    hold_id: int
    wallet_id: int
    credit_type: CreditType
    amount: int
    refunded_total: int
    charged: int
    lots: list
    balance: Balance

    @property
    def refundable(self) -> int:
        return self.charged - self.refunded_total


@dataclass(frozen=True)
class TakeBack:
    """Credits taken back from a wallet (a refunded or lost payment): `taken` from its lots (`lots`
    says which), the rest recorded as `debt`."""

    wallet_id: int
    credit_type: CreditType
    asked: int
    taken: int
    debt: int
    lots: list
    balance: Balance
