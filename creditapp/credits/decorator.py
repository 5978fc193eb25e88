"""`require_credits`: the guard in front of every paid view.

It reserves the credits before the view runs (so two requests can never both spend the last
credit), lets the view's `deduct_credits` settle that reservation, and gives back whatever was
not settled when the request ends. A request that fails (an exception or an error status)
is never charged: credits it settled are refunded.
"""
import functools
from collections.abc import Callable
from dataclasses import dataclass

from flask import after_this_request, current_app, g

from ..auth import current_user_id
from ..exceptions import InvalidIdentity, UnknownUser
from .service import credit_service
from .types import CreditType, Reservation

Amount = int | Callable[..., int]


@dataclass(frozen=True)
class CreditInfo:
    """What the guard found: `available` is the balance before this request reserved `required`."""

    user_id: int
    credit_type: CreditType
    required: int
    available: int
    hold_id: int


def require_credits(amount: Amount, credit_type) -> Callable:
    """Reserve `amount` credits of `credit_type` for the decorated view, or answer 403.

    `amount` is an int, or a callable given the view's arguments that returns one (for prices
    read from config, or that depend on the request). Verifies the JWT itself.
    """
    credit_type = CreditType(credit_type)

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            user_id = current_user_id()
            required = amount(*args, **kwargs) if callable(amount) else amount
            try:
                reservation = credit_service.reserve(user_id, required, credit_type)
            except UnknownUser:
                raise InvalidIdentity("the token's user no longer exists") from None
            g.credit_info = CreditInfo(
                user_id=user_id, credit_type=credit_type, required=required,
                available=reservation.available_before, hold_id=reservation.hold_id,
            )

            @after_this_request
            def close_reservation(response):
                _close(reservation, succeeded=response.status_code < 400)
                return response

            try:
                with credit_service.activate(reservation):
                    return view(*args, **kwargs)
            except Exception:
                _close(reservation, succeeded=False)
                raise

        return guarded

    return decorator


def _close(reservation: Reservation, *, succeeded: bool) -> None:
    try:
        credit_service.close(reservation, succeeded=succeeded)
    except Exception:
        # The hold stays open and the expiry sweep gives it back after CREDIT_HOLD_TTL_SECONDS.
        current_app.logger.exception(
            "could not close credit hold %s; it will expire", reservation.hold_id
        )
