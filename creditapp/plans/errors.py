"""What plans can refuse; mapped to HTTP in creditapp.api.errors, like every domain error."""


class PlanError(Exception):
    pass


class UnknownPlan(PlanError):
    pass


class NoSubscription(PlanError):
    """Nothing to cancel: the account is on the default plan, or on none."""


class SubscriptionAtProvider(PlanError):
    """A paid subscription runs at the payment provider: it changes there, or ends with its period."""


class PlanChangeDeclined(PlanError):
    """The provider refused to charge the difference of an upgrade; nothing changed."""
