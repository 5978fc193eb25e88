"""Stripe's webhook scheme and objects, read into creditapp's views. The test provider's events
are made the same way, so one reader serves both."""
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone

import stripe

from .base import (
    ChargeState, CheckoutState, DisputeState, InvalidSignature, InvoiceState, ProviderEvent, SubscriptionState,
)

TOLERANCE_SECONDS = 300


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe would send with `body`: `t=<unix>,v1=<HMAC-SHA256 of
    "t.body">` (the scheme stripe-python verifies; it has no signing helper of its own)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(body: bytes, header: str | None, secrets: list[str]) -> dict:
    """The event of a body signed with Stripe's scheme, checked by `stripe.Webhook.construct_event`
    against each secret in turn (rotation: any one may sign), with Stripe's 300 s tolerance.
    Raises InvalidSignature for a missing, forged, stale or unreadable one."""
    if not header:
        raise InvalidSignature("no Stripe-Signature header")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("the body is not UTF-8") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError:
            continue
        try:
            # What the SDK would build the event from; it fails in its own ways (AttributeError on
            # a list) on bodies that are signed but no event: those are refused the same way.
            stripe.Webhook.construct_event(text, header, secret, tolerance=TOLERANCE_SECONDS)
            payload = json.loads(text)
        except Exception:
            raise InvalidSignature("the signed body is not an event") from None
        if _holds_nul(payload):
            raise InvalidSignature("the signed body holds a NUL character: no provider's event does")
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict) \
                or not isinstance(payload["data"].get("object"), dict) or not isinstance(payload.get("id"), str) \
                or not isinstance(payload.get("type"), str):
            raise InvalidSignature("the signed body is not an event")
        return payload
    raise InvalidSignature("no secret verifies the signature (forged, another secret, or older than 300 s)")


def _holds_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _time(value) -> datetime | None:
    """A Unix time, if it is one a provider could send (after 2000, before 2200)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 946684800 <= value < 7258118400:
        return None
    return datetime.fromtimestamp(value, timezone.utc)


def _id(value) -> str | None:
    """An id, or an expanded object's id (an id past 255 characters is nobody's)."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and len(value) <= 255 else None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value) -> dict:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def checkout_state(obj: dict) -> CheckoutState:
    intent = obj.get("payment_intent")
    return CheckoutState(
        id=_id(obj.get("id")) or "", status=_str(obj.get("status")) or "open",
        payment_status=_str(obj.get("payment_status")) or "unpaid", amount_total=_int(obj.get("amount_total")),
        currency=_str(obj.get("currency")), payment_intent=_id(intent),
        client_reference_id=_id(obj.get("client_reference_id")), metadata=_dict(obj.get("metadata")),
        livemode=bool(obj.get("livemode")),
        # Retrieved with expand[]=payment_intent: a bank transfer that failed says so here.
        payment_intent_status=_str(intent.get("status")) if isinstance(intent, dict) else None,
        mode=_str(obj.get("mode")) or "payment", subscription=_id(obj.get("subscription")),
    )


def _path(obj, *keys):
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def subscription_state(obj: dict) -> SubscriptionState:
    """A Subscription; its period is on its items since API version 2025-03-31 (at its top before)."""
    items = _path(obj, "items", "data")
    item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    return SubscriptionState(
        id=_id(obj.get("id")) or "", status=_str(obj.get("status")) or "",
        cancel_at_period_end=obj.get("cancel_at_period_end") is True,
        current_period_start=_time(item.get("current_period_start", obj.get("current_period_start"))),
        current_period_end=_time(item.get("current_period_end", obj.get("current_period_end"))),
        price=_id(item.get("price")), metadata=_dict(obj.get("metadata")))


def invoice_state(obj: dict) -> InvoiceState:
    """An Invoice. The period granted is its subscription line's (`period_start`/`period_end` at
    the invoice's top are the period *before* a renewal); its subscription and that one's
    metadata are under `parent.subscription_details` since API version 2025-03-31."""
    details = _dict(_dict(obj.get("parent")).get("subscription_details")) or _dict(obj.get("subscription_details"))
    lines = _dict(obj.get("lines")).get("data")
    lines = [line for line in lines if isinstance(line, dict)] if isinstance(lines, list) else []
    # A proration has a line crediting the old price (negative) and one charging the new: the plan
    # is the charged one's.
    periodic = [line for line in lines if _dict(line.get("period")).get("end")]
    line = max(periodic, key=lambda line: _int(line.get("amount")) or 0) if periodic else (lines[0] if lines else {})
    period = _dict(line.get("period"))
    price = _path(line, "pricing", "price_details", "price") or line.get("price")
    return InvoiceState(
        id=_id(obj.get("id")) or "", subscription=_id(details.get("subscription")) or _id(obj.get("subscription")),
        billing_reason=_str(obj.get("billing_reason")), status=_str(obj.get("status")),
        # `total`, not `amount_paid`: a credit on the customer's balance (a downgrade's proration)
        # pays part of a renewal and is money paid before.
        amount_paid=_int(obj.get("total") if obj.get("status") == "paid" and obj.get("total") is not None
                         else obj.get("amount_paid")) or 0, currency=_str(obj.get("currency")),
        period_start=_time(period.get("start")), period_end=_time(period.get("end")), price=_id(price),
        metadata=_dict(details.get("metadata")) or _dict(line.get("metadata")))


def event(payload: dict, body: bytes) -> ProviderEvent:
    """The normalized event of a verified payload."""
    kind, obj = payload["type"], payload["data"]["object"]
    views = {}
    if kind.startswith("checkout.session."):
        views["checkout"] = checkout_state(obj)
    elif kind.startswith("charge.dispute."):
        views["dispute"] = DisputeState(
            id=_str(obj.get("id")) or "", charge=_id(obj.get("charge")), payment_intent=_id(obj.get("payment_intent")),
            status=_str(obj.get("status")) or "", amount=_int(obj.get("amount")) or 0,
            currency=_str(obj.get("currency")) or "")
    elif kind.startswith("customer.subscription."):
        views["subscription"] = subscription_state(obj)
    elif kind.startswith("invoice."):
        views["invoice"] = invoice_state(obj)
    elif kind.startswith("charge."):
        views["charge"] = ChargeState(
            id=_str(obj.get("id")) or "", payment_intent=_id(obj.get("payment_intent")),
            amount=_int(obj.get("amount")) or 0, amount_refunded=_int(obj.get("amount_refunded")) or 0,
            currency=_str(obj.get("currency")) or "", metadata=_dict(obj.get("metadata")))
    if len(payload["id"]) > 255 or len(kind) > 64:
        raise InvalidSignature("the event's id or type is longer than any provider's")
    return ProviderEvent(id=payload["id"], type=kind, livemode=bool(payload.get("livemode")),
                         created=_time(payload.get("created")) or datetime.now(timezone.utc), object=obj, body=body,
                         **views)


def event_body(event_id: str, kind: str, obj: dict, *, livemode: bool = False, created: int | None = None) -> bytes:
    """An event as Stripe sends it (the fields a receiver reads), for the test provider and the fakes."""
    return json.dumps({
        "id": event_id, "object": "event", "api_version": "2025-09-30.clover", "type": kind,
        "created": int(time.time()) if created is None else created, "livemode": livemode,
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "data": {"object": obj},
    }, separators=(",", ":")).encode()


def session_object(*, id: str, url: str, status: str, payment_status: str, amount: int, currency: str,
                   payment_intent: str | None, reference: str, metadata: dict, expires_at: int,
                   success_url: str, cancel_url: str, created: int, livemode: bool = False,
                   mode: str = "payment", subscription: str | None = None, invoice: str | None = None) -> dict:
    """A Checkout Session as Stripe's API answers it (the fields creditapp or the SDK read), for
    the test provider and the fake Stripe server alike. In `subscription` mode it has no payment
    intent: its first invoice is paid."""
    return {
        "id": id, "object": "checkout.session", "mode": mode, "url": url if status == "open" else None,
        "subscription": subscription, "invoice": invoice,
        "status": status, "payment_status": payment_status, "amount_total": amount, "amount_subtotal": amount,
        "currency": currency, "payment_intent": payment_intent, "client_reference_id": reference,
        "metadata": metadata, "expires_at": expires_at, "created": created, "livemode": livemode,
        "success_url": success_url, "cancel_url": cancel_url,
    }


def charge_object(*, id: str, payment_intent: str, amount: int, amount_refunded: int, currency: str,
                  livemode: bool = False) -> dict:
    return {"id": id, "object": "charge", "payment_intent": payment_intent, "amount": amount,
            "amount_refunded": amount_refunded, "refunded": amount_refunded == amount, "currency": currency,
            "metadata": {}, "livemode": livemode}


def dispute_object(*, id: str, charge: str, payment_intent: str, status: str, amount: int, currency: str,
                   livemode: bool = False) -> dict:
    return {"id": id, "object": "dispute", "charge": charge, "payment_intent": payment_intent, "status": status,
            "amount": amount, "currency": currency, "livemode": livemode}


def subscription_object(*, id: str, status: str, price: str, amount: int, currency: str, interval: str,
                        period_start: int, period_end: int, cancel_at_period_end: bool, metadata: dict,
                        created: int, item: str | None = None, product: str | None = None,
                        ended_at: int | None = None, livemode: bool = False) -> dict:
    """A Subscription as API version 2025-09-30 has it: its period on its item."""
    return {
        "id": id, "object": "subscription", "status": status, "cancel_at_period_end": cancel_at_period_end,
        "metadata": metadata, "created": created, "ended_at": ended_at, "livemode": livemode,
        "items": {"object": "list", "data": [{
            "id": item or f"si_{id[4:]}", "object": "subscription_item", "quantity": 1,
            "current_period_start": period_start, "current_period_end": period_end,
            "price": {"id": price, "object": "price", "unit_amount": amount, "currency": currency,
                      "product": product or f"prod_{id[4:]}", "recurring": {"interval": interval, "interval_count": 1}},
        }]},
    }


def invoice_object(*, id: str, subscription: str, billing_reason: str, status: str, amount: int, currency: str,
                   period_start: int, period_end: int, price: str, metadata: dict, livemode: bool = False) -> dict:
    """An Invoice of a subscription as API version 2025-09-30 has it (`parent.subscription_details`,
    the line's `pricing`); `period_start`/`period_end` at its top are the period before, as Stripe's."""
    return {
        "id": id, "object": "invoice", "billing_reason": billing_reason, "status": status,
        "amount_due": amount, "amount_paid": amount if status == "paid" else 0, "currency": currency,
        "livemode": livemode, "period_start": period_start, "period_end": period_start,
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"subscription": subscription, "metadata": metadata}},
        "lines": {"object": "list", "data": [{
            "id": f"il_{id[3:]}", "object": "line_item", "amount": amount, "currency": currency,
            "period": {"start": period_start, "end": period_end}, "metadata": metadata,
            "pricing": {"type": "price_details", "price_details": {"price": price, "product": f"prod_{subscription[4:]}"}},
            "parent": {"type": "subscription_item_details",
                       "subscription_item_details": {"subscription": subscription}},
        }]},
    }
