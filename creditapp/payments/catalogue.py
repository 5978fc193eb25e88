"""The packs on sale (CREDIT_PACKS), checked once at start: a bad catalogue stops the app with a
message naming the field."""
from dataclasses import asdict, dataclass

from ..ledger.tables import MAX_AMOUNT
from ..ledger.types import CreditType

DEFAULT_PACKS = {
    "starter": {"name": "Starter: 20 images", "credit_type": "generation_credits", "credits": 20, "price": 500,
                "currency": "usd"},
    "studio": {"name": "Studio: 120 images", "credit_type": "generation_credits", "credits": 120, "price": 2500,
               "currency": "usd"},
    "tokens": {"name": "250,000 AI tokens", "credit_type": "ai_tokens", "credits": 250_000, "price": 1000,
               "currency": "usd", "priority": 60},
}
MAX_PRICE = 10**10  # minor units: a hundred million dollars is no pack
FIELDS = {"name", "credit_type", "credits", "price", "currency", "priority", "expires_in_days"}


@dataclass(frozen=True)
class Pack:
    id: str
    name: str
    credit_type: str
    credits: int
    price: int  # the currency's minor unit
    currency: str  # ISO 4217, lower case
    priority: int = 50
    expires_in_days: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def check_packs(raw, setting: str = "CREDIT_PACKS") -> dict[str, Pack]:
    """The catalogue, or RuntimeError naming the first bad field."""
    if raw is None:
        raw = DEFAULT_PACKS
    if not isinstance(raw, dict):
        raise RuntimeError(f"{setting} must be a JSON object of packs")
    packs = {}
    for pack_id, spec in raw.items():
        where = f"{setting}[{pack_id!r}]"
        if not isinstance(pack_id, str) or not pack_id or len(pack_id) > 64:
            raise RuntimeError(f"{setting}: a pack's id must be 1 to 64 characters, got {pack_id!r}")
        if not isinstance(spec, dict):
            raise RuntimeError(f"{where} must be an object")
        unknown = sorted(set(spec) - FIELDS)
        if unknown:
            raise RuntimeError(f"{where}: unknown fields {unknown} (known: {sorted(FIELDS)})")
        name = setting_field(spec, where, "name", str, lambda v: 0 < len(v) <= 200, "a name of 1 to 200 characters")
        credit_type = setting_field(spec, where, "credit_type", str, lambda v: v in {t.value for t in CreditType},
                             f"one of {[t.value for t in CreditType]}")
        credits = setting_field(spec, where, "credits", int, lambda v: 1 <= v <= MAX_AMOUNT, f"from 1 to {MAX_AMOUNT}")
        price = setting_field(spec, where, "price", int, lambda v: 1 <= v <= MAX_PRICE,
                       f"an integer of the currency's minor unit from 1 to {MAX_PRICE}")
        currency = setting_field(spec, where, "currency", str, lambda v: len(v) == 3 and v.isalpha() and v.islower(),
                          "an ISO 4217 code in lower case, such as \"usd\"")
        priority = setting_field(spec, where, "priority", int, lambda v: 0 <= v <= 100, "from 0 to 100", default=50)
        days = setting_field(spec, where, "expires_in_days", int, lambda v: 1 <= v <= 36600, "from 1 to 36600",
                      default=None)
        packs[pack_id] = Pack(pack_id, name, credit_type, credits, price, currency, priority, days)
    return packs


def setting_field(spec: dict, where: str, name: str, kind: type, valid, expected: str, **default):
    """`spec[name]` checked, or RuntimeError naming `where.name`; absent (or null) gives `default`."""
    if name not in spec:
        if default:
            return default["default"]
        raise RuntimeError(f"{where}.{name} is missing: {expected}")
    value = spec[name]
    if value is None and default and default["default"] is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or not valid(value):
        raise RuntimeError(f"{where}.{name} must be {expected}, got {value!r}")
    return value
