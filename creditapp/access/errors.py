"""What keys and teams refuse; mapped to HTTP in creditapp.api.errors."""


class AccessError(Exception):
    pass


class InvalidKey(AccessError):
    """No key has that secret."""


class KeyRevoked(AccessError):
    pass


class KeyAlreadyRevoked(AccessError):
    """Managing a key that was revoked (the caller's login is fine: not a 401)."""


class KeyExpired(AccessError):
    pass


class UnknownKey(AccessError):
    """No such key of the caller's."""


class UnknownTeam(AccessError):
    """No such team, or one the caller is not in (the same answer)."""


class NotAllowed(AccessError):
    """The caller's role does not allow it."""


class LoginTokenRequired(AccessError):
    """Managing keys and teams needs a login token: a key cannot make more keys."""


class UnknownMember(AccessError):
    pass


class AlreadyMember(AccessError):
    pass


class BudgetExceeded(AccessError):
    """A key's budget or a member's cap would be passed: `whose` is "key" or "member"."""

    def __init__(self, whose: str, budget: int, spent: int, required: int, credit_type: str):
        super().__init__(f"{required} {credit_type} required; {max(budget - spent, 0)} left of the {whose}'s "
                         f"{budget} this period")
        self.whose, self.budget, self.spent, self.required, self.credit_type = whose, budget, spent, required, credit_type


class FeatureOutsideKey(AccessError):
    pass
