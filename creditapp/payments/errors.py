"""What buying credits can refuse; mapped to HTTP in creditapp.api.errors, like every domain error."""
from .providers import InvalidSignature, LivemodeMismatch  # noqa: F401  (a webhook's two refusals)


class PaymentError(Exception):
    pass


class UnknownPack(PaymentError):
    pass


class UnknownPurchase(PaymentError):
    """No such purchase, or another user's (the same answer: ids are not to be probed)."""


class PaymentsUnavailable(PaymentError):
    """The provider did not open the checkout; nothing was kept of the purchase."""


class InvalidBody(PaymentError):
    """A webhook body no provider sends: over 1 MiB."""
