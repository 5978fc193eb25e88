"""Settings read from the environment: each helper refuses a malformed value in one line naming it."""
import json
import os

def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise RuntimeError(f"{name} must be true or false, got {raw!r}")


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in (os.environ.get(name) or default).split(",") if item.strip()]


def _credit_costs() -> dict:
    """Prices that override the features' declared ones (creditapp/features.py)."""
    raw = os.environ.get("CREDIT_COSTS")
    if not raw:
        return {}
    try:
        costs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"CREDIT_COSTS must be a JSON object: {exc}") from None
    if not isinstance(costs, dict):
        raise RuntimeError("CREDIT_COSTS must be a JSON object")
    return costs


def _json(name: str):
    """A setting given as JSON (None when unset); what it must hold is checked where it is used."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{name} must be JSON: {exc}") from None
