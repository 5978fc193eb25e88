"""The plans on offer (PLANS) and the one every account is on unless it subscribes to another
(DEFAULT_PLAN), checked once at start: a bad catalogue stops the app with a message naming the
field."""
from dataclasses import dataclass, field

from ..ledger import periods
from ..ledger.tables import MAX_AMOUNT
from ..ledger.types import CreditType
from ..payments.catalogue import MAX_PRICE, setting_field

DEFAULT_PLANS = {
    "free": {"name": "Free", "price": 0, "currency": "usd", "interval": "month",
             "allowance": {"generation_credits": 5, "ai_tokens": 10_000}},
    "pro": {"name": "Pro: 200 images and 500k tokens a month", "price": 1500, "currency": "usd",
            "interval": "month", "allowance": {"generation_credits": 200, "ai_tokens": 500_000},
            "rollover_max": {"generation_credits": 100}},
}
FIELDS = {"name", "price", "currency", "interval", "interval_seconds", "allowance", "rollover_max", "priority",
          "stripe_price"}
INTERVALS = ("day", "week", "month", "year")
TYPES = [t.value for t in CreditType]


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    price: int  # minor units; 0 = free
    currency: str
    interval: str | None  # day, week, month, year; None with interval_seconds
    interval_seconds: int | None
    allowance: dict[str, int] = field(default_factory=dict)
    rollover_max: dict[str, int] = field(default_factory=dict)
    priority: int = 10  # before packs (50): the allowance is spent first
    stripe_price: str | None = None  # a recurring Price made in Stripe; without it Checkout makes one

    @property
    def free(self) -> bool:
        return self.price == 0

    @property
    def period(self) -> tuple[str, int | None]:
        """The ledger's name for the period: (period, seconds)."""
        return (self.interval, None) if self.interval else ("seconds", self.interval_seconds)

    def terms(self) -> dict[str, tuple[int, int]]:
        """{credit type: (allowance, rollover_max)}, as the ledger's recurring grants take them."""
        return {t: (self.allowance.get(t, 0), self.rollover_max.get(t, 0)) for t in TYPES
                if self.allowance.get(t, 0) or self.rollover_max.get(t, 0)}

    def is_upgrade_of(self, other: "Plan") -> bool:
        """More of some credit type each period than `other` gives (what an upgrade grants now)."""
        return any(self.allowance.get(t, 0) > other.allowance.get(t, 0) for t in TYPES)

    def public(self) -> dict:
        seconds = self.interval_seconds or periods.FIXED.get(self.interval or "")
        return {"id": self.id, "name": self.name, "price": self.price, "currency": self.currency,
                "interval": self.interval, "interval_seconds": seconds, "allowance": dict(self.allowance),
                "rollover_max": dict(self.rollover_max), "priority": self.priority}


def check_plans(raw, default_plan: str | None, setting: str = "PLANS") -> dict[str, Plan]:
    """The catalogue, or RuntimeError naming the first bad field."""
    if raw is None:
        raw = DEFAULT_PLANS
    if not isinstance(raw, dict):
        raise RuntimeError(f"{setting} must be a JSON object of plans")
    plans = {}
    for plan_id, spec in raw.items():
        where = f"{setting}[{plan_id!r}]"
        if not isinstance(plan_id, str) or not plan_id or len(plan_id) > 64 or not plan_id.isascii() \
                or not all(c.isalnum() or c in "-_" for c in plan_id):
            raise RuntimeError(f"{setting}: a plan's id must be 1 to 64 letters, digits, - or _, got {plan_id!r}")
        if not isinstance(spec, dict):
            raise RuntimeError(f"{where} must be an object")
        unknown = sorted(set(spec) - FIELDS)
        if unknown:
            raise RuntimeError(f"{where}: unknown fields {unknown} (known: {sorted(FIELDS)})")
        name = setting_field(spec, where, "name", str, lambda v: 0 < len(v) <= 200, "a name of 1 to 200 characters")
        price = setting_field(spec, where, "price", int, lambda v: 0 <= v <= MAX_PRICE,
                       f"an integer of the currency's minor unit from 0 (free) to {MAX_PRICE}")
        currency = setting_field(spec, where, "currency", str, lambda v: len(v) == 3 and v.isalpha() and v.islower(),
                          "an ISO 4217 code in lower case, such as \"usd\"")
        if (spec.get("interval") is not None) == (spec.get("interval_seconds") is not None):
            raise RuntimeError(f"{where}: give one of interval ({', '.join(INTERVALS)}) or interval_seconds")
        interval = setting_field(spec, where, "interval", str, lambda v: v in INTERVALS, f"one of {list(INTERVALS)}",
                          default=None)
        seconds = setting_field(spec, where, "interval_seconds", int, lambda v: 1 <= v <= 10 * 366 * 86400,
                         f"a whole number of seconds from 1 to {10 * 366 * 86400}", default=None)
        allowance = _amounts(spec, where, "allowance", required=True)
        rollover = _amounts(spec, where, "rollover_max", required=False)
        priority = setting_field(spec, where, "priority", int, lambda v: 0 <= v <= 100, "from 0 to 100", default=10)
        stripe_price = setting_field(spec, where, "stripe_price", str, lambda v: v.startswith("price_") and len(v) <= 255,
                              "a Stripe Price id (price_...)", default=None)
        plans[plan_id] = Plan(plan_id, name, price, currency, interval, seconds, allowance, rollover, priority,
                              stripe_price)
    if default_plan is not None:
        if default_plan not in plans:
            raise RuntimeError(f"DEFAULT_PLAN must be one of {setting}'s plans {sorted(plans)}, got {default_plan!r}")
        if not plans[default_plan].free:
            raise RuntimeError(f"DEFAULT_PLAN {default_plan!r} must be free (price 0): nobody pays for it")
    return plans


def _amounts(spec: dict, where: str, name: str, *, required: bool) -> dict[str, int]:
    if name not in spec:
        if required:
            raise RuntimeError(f"{where}.{name} is missing: an object of credit type to a whole number")
        return {}
    value = spec[name]
    if not isinstance(value, dict):
        raise RuntimeError(f"{where}.{name} must be an object of credit type ({', '.join(TYPES)}) to a number")
    for credit_type, amount in value.items():
        if credit_type not in TYPES:
            raise RuntimeError(f"{where}.{name}: unknown credit type {credit_type!r} (known: {TYPES})")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= MAX_AMOUNT:
            raise RuntimeError(f"{where}.{name}.{credit_type} must be a whole number from 0 to {MAX_AMOUNT}, "
                               f"got {amount!r}")
    if required and not any(value.values()):
        raise RuntimeError(f"{where}.{name} must give some credits of at least one type")
    return {k: v for k, v in value.items() if v}
