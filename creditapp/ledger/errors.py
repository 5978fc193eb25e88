"""What the ledger refuses. Plain exceptions: creditapp.api.errors maps them to HTTP."""


class LedgerError(Exception):
    """Base class of every error the ledger raises."""


class InsufficientCredits(LedgerError):
    """The balance cannot cover the amount asked for; nothing was changed."""

    def __init__(self, required: int, available: int, credit_type: str):
        super().__init__(f"{required} {credit_type} required, {available} available")
        self.required = required
        self.available = available
        self.credit_type = credit_type


class UnknownWallet(LedgerError):
    """No wallet has that id."""


class UnknownUser(UnknownWallet):
    """No user has that id or name (and so no wallet is theirs)."""


class SessionRevoked(LedgerError):
    """The login session of the caller's token was revoked (logout); nothing was changed."""


class AccountDisabled(LedgerError):
    """An administrator disabled the caller's account: its tokens and keys are refused; nothing
    was changed. Raised by the balance read that folds the check in, and by the web layer."""


class HoldExpired(LedgerError):
    """The work outlived its hold (CREDIT_HOLD_TTL_SECONDS): the credits went back, nothing is charged."""


class ReferenceConflict(LedgerError):
    """A grant with this reference exists with a different amount or credit type."""


class IdempotencyKeyReused(LedgerError):
    """The Idempotency-Key was already used for a different request."""


class IdempotencyKeyInUse(LedgerError):
    """A request with the same Idempotency-Key has not finished yet."""


class UnknownCharge(LedgerError):
    """No hold has that id."""


class NotACharge(LedgerError):
    """The hold charged nothing (it is open, was released or expired): there is nothing to refund."""


class AlreadyRefunded(LedgerError):
    """Everything the charge took has been refunded already."""


class RefundExceedsCharge(LedgerError):
    """The refund asks for more than is left to refund of the charge."""

    def __init__(self, asked: int, refundable: int):
        super().__init__(f"{asked} asked, {refundable} left to refund")
        self.asked, self.refundable = asked, refundable


class NotRefundable(LedgerError):
    """The charge was made before credit lots existed: there is no receipt to give it back to."""


class ExpiryNotInTheFuture(LedgerError):
    """A grant's expires_at is not after the moment it is granted."""


class UnknownLot(LedgerError):
    """No lot has that id."""


class LotAlreadyVoided(LedgerError):
    """The lot was voided before."""


class LotFrozen(LedgerError):
    """The lot is frozen already (or, to unfreeze, is not)."""


class CapRefused(LedgerError):
    """A cap that applies to the hold refused it; nothing was changed. `cap_id` says which."""

    def __init__(self, cap_id: int, message: str):
        super().__init__(message)
        self.cap_id = cap_id


class CapClosed(CapRefused):
    """The cap was closed (its key revoked, its member removed)."""


class CapExpired(CapRefused):
    """The cap is past its expiry (its key expired)."""


class FeatureNotAllowed(CapRefused):
    """The cap does not allow the feature the hold pays for."""


class CapExceeded(CapRefused):
    """The hold would take the cap's spend this period past its limit."""

    def __init__(self, cap_id: int, limit: int, spent: int, required: int, credit_type: str):
        super().__init__(cap_id, f"{required} {credit_type} required, {limit - spent} left of {limit} this period")
        self.limit, self.spent, self.required, self.credit_type = limit, spent, required, credit_type


class InvalidRange(LedgerError):
    """A usage report's range is not one: `from` not before `to`, or a time without its offset."""


class TooManyBuckets(InvalidRange):
    """A usage report would have more points per series than MAX_BUCKETS: a longer bucket or a shorter range."""

    def __init__(self, buckets: int, limit: int):
        super().__init__(f"the range has {buckets} buckets, at most {limit} are allowed: "
                         "a shorter range or day buckets")
        self.buckets = buckets
        self.limit = limit


class RateLimited(LedgerError):
    """The caller's paid rate limit is used up for this window (`counted` says which, and when
    it resets); the request was counted, nothing else was done."""

    def __init__(self, counted):
        super().__init__("the paid rate limit is used up")
        self.counted = counted
