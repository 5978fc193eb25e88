"""Domain errors. They know nothing of HTTP: creditapp.errors maps them to responses."""


class CreditAppError(Exception):
    """Base class of every domain error."""


class InsufficientCredits(CreditAppError):
    """The balance cannot cover the amount asked for; nothing was changed."""

    def __init__(self, required: int, available: int, credit_type: str):
        super().__init__(f"{required} {credit_type} required, {available} available")
        self.required = required
        self.available = available
        self.credit_type = credit_type


class UnknownUser(CreditAppError):
    """No user has that id or name."""


class UsernameTaken(CreditAppError):
    """Another user already has that name."""


class InvalidCredentials(CreditAppError):
    """The username or the password is wrong."""


class NotAdmin(CreditAppError):
    """The caller is not an administrator."""


class GenerationFailed(CreditAppError):
    """The AI provider did not produce a result."""


class InvalidIdentity(CreditAppError):
    """A verified token names no user of this service."""


class IdempotencyKeyReused(CreditAppError):
    """The Idempotency-Key was already used for a different request."""


class IdempotencyKeyInUse(CreditAppError):
    """A request with the same Idempotency-Key has not finished yet."""


class ReservationExpired(CreditAppError):
    """The work outlived its hold (CREDIT_HOLD_TTL_SECONDS): the credits went back, nothing is charged."""


class ReferenceConflict(CreditAppError):
    """A grant with this reference exists with a different amount or credit type."""
