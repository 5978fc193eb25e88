"""The delivery settings, read from the app's configuration by the caller (no Flask here)."""
from dataclasses import dataclass

# Standard Webhooks' schedule: the first attempt at once, then after 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h and 10 h (about 27.5 hours in all).
STANDARD_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@dataclass(frozen=True)
class Settings:
    schedule: tuple[float, ...] = STANDARD_SCHEDULE  # seconds before each attempt
    timeout: float = 15.0  # one attempt, connecting to the last byte read
    allow_private: bool = False
    disable_after_days: float = 5.0

    @property
    def lease_seconds(self) -> float:
        """How long an attempt holds its delivery: past that its worker is taken for dead."""
        return self.timeout + 5

    @classmethod
    def from_config(cls, config) -> "Settings":
        return cls(schedule=parse_schedule(config["WEBHOOK_RETRY_SCHEDULE"]),
                   timeout=float(config["WEBHOOK_TIMEOUT_SECONDS"]),
                   allow_private=bool(config["WEBHOOK_ALLOW_PRIVATE"]),
                   disable_after_days=float(config["WEBHOOK_DISABLE_AFTER_DAYS"]))


def parse_schedule(value) -> tuple[float, ...]:
    """"0,5,300" (seconds before each attempt) or a sequence of numbers; ValueError otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        schedule = tuple(float(part) for part in parts)
    except (TypeError, ValueError):
        raise ValueError(f"WEBHOOK_RETRY_SCHEDULE must be seconds separated by commas, got {value!r}") from None
    if not schedule or any(not 0 <= delay <= 7 * 86400 for delay in schedule):
        raise ValueError(f"WEBHOOK_RETRY_SCHEDULE needs one or more delays from 0 to 604800 s, got {value!r}")
    return schedule
