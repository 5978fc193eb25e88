"""A job's arguments as JSON, and back with their types: what the request schema parsed (dates,
times, decimals, UUIDs) is what the view gets when a worker runs it."""
import json
import uuid
from datetime import date, datetime, time
from decimal import Decimal

_TYPES = {"datetime": datetime.fromisoformat, "date": date.fromisoformat, "time": time.fromisoformat,
          "decimal": Decimal, "uuid": uuid.UUID}
_TAG = "__creditapp_type__"


def dumps(params) -> str:
    return json.dumps(params, default=_tagged)


def loads(text: str):
    return json.loads(text, object_hook=_untagged)


def _tagged(value):
    for name, kind in (("datetime", datetime), ("date", date), ("time", time), ("decimal", Decimal),
                       ("uuid", uuid.UUID)):
        if isinstance(value, kind):
            return {_TAG: name, "value": value.isoformat() if hasattr(value, "isoformat") else str(value)}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)  # any other type a schema made arrives as its text


def _untagged(obj: dict):
    if obj.keys() == {_TAG, "value"} and obj[_TAG] in _TYPES:
        return _TYPES[obj[_TAG]](obj["value"])
    return obj
