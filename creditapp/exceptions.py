"""Errors of the app around the ledger: accounts, tokens, the AI provider. They know nothing of
HTTP: creditapp.api.errors maps them (and the ledger's own, creditapp.ledger.errors) to responses."""


class CreditAppError(Exception):
    """Base class of the app's errors."""


class UsernameTaken(CreditAppError):
    """Another user already has that name (whatever its case)."""


class InvalidCredentials(CreditAppError):
    """The username or the password is wrong."""


class NotAdmin(CreditAppError):
    """The caller is not an administrator."""


class OwnAccess(CreditAppError):
    """An administrator tried to disable their own account or drop their own admin right."""


class GenerationFailed(CreditAppError):
    """The AI provider did not produce a result."""


class InvalidIdentity(CreditAppError):
    """A verified token names no user of this service, or carries claims login never makes."""


class UnknownJob(CreditAppError):
    """No job of the caller's has that id."""


class JobRunning(CreditAppError):
    """A worker is running the job: it can no longer be cancelled."""


class JobFinished(CreditAppError):
    """The job has finished already."""


class QueueUnavailable(CreditAppError):
    """The job could not be handed to the broker; nothing was held."""
