"""A local fake of the Stripe API, for the part creditapp calls (create, retrieve and expire
Checkout Sessions, in `payment` and `subscription` mode; retrieve and update Subscriptions), speaking Stripe's wire format so that the real `stripe` package is what talks to it:
form-encoded bodies with bracketed keys, Bearer keys, Idempotency-Key replays, JSON errors. It
also makes the events Stripe would send about its sessions, signed with Stripe's scheme."""
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from urllib.parse import parse_qsl

from werkzeug.wrappers import Request, Response

from ..ledger import periods
from ..payments.providers import stripe_objects
from .servers import local_wsgi_server

SECRET_KEY = "sk_test_creditapp_fake"
WEBHOOK_SECRET = "whsec_creditapp_fake"


def _nested(pairs) -> dict:
    """Stripe's form encoding: `line_items[0][price_data][currency]=usd` into nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part, following in zip(parts, parts[1:]):
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if isinstance(node, dict):
        if node and all(key.isdigit() for key in node):
            return [_lists(node[key]) for key in sorted(node, key=int)]
        return {key: _lists(value) for key, value in node.items()}
    return node


class FakeStripe:
    def __init__(self):
        self.sessions: dict[str, dict] = {}
        self.intents: dict[str, str] = {}  # payment intent id -> its status
        self.requests: list[dict] = []  # what creditapp sent: method, path, params, idempotency key
        self._replies: dict[str, tuple[int, str]] = {}
        self._fail = 0
        self._decline = 0
        self.prices: dict[str, dict] = {}  # Price id -> {"unit_amount", "currency", "interval"}
        self.subscriptions: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.url = ""

    @property
    def settings(self) -> dict:
        """The app's settings to use this fake."""
        return {"PAYMENTS_PROVIDER": "stripe", "STRIPE_SECRET_KEY": SECRET_KEY,
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "STRIPE_API_BASE": self.url}

    def fail_next(self, n: int = 1) -> None:
        """The next n calls answer 500, as Stripe does in an incident."""
        with self._lock:
            self._fail += n

    def decline_next(self, n: int = 1) -> None:
        """The next n subscription changes that invoice at once fail as a declined card (402)."""
        with self._lock:
            self._decline += n

    def add_price(self, price_id: str, unit_amount: int, currency: str = "usd", interval: str = "month") -> None:
        self.prices[price_id] = {"unit_amount": unit_amount, "currency": currency, "interval": interval}

    # --- the API -------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        request = Request(environ)
        response = self._answer(request)
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return self._error(401, "invalid_request_error", "Invalid API Key provided")
        params = _nested(parse_qsl(request.get_data(as_text=True) or request.query_string.decode(),
                                   keep_blank_values=True))
        key = request.headers.get("Idempotency-Key")
        with self._lock:
            self.requests.append({"method": request.method, "path": request.path, "params": params,
                                  "idempotency_key": key})
            if self._fail:
                self._fail -= 1
                return self._error(500, "api_error", "Something went wrong on Stripe's end.")
            if key and request.method == "POST" and key in self._replies:
                status, body = self._replies[key]
                return Response(body, status, {"Idempotent-Replayed": "true"}, content_type="application/json")
            if request.method == "POST" and request.path == "/v1/checkout/sessions":
                status, body = self._create(params)
                if key:
                    self._replies[key] = (status, body)
                return Response(body, status, content_type="application/json")
            if request.method == "POST" and request.path.startswith("/v1/checkout/sessions/") \
                    and request.path.endswith("/expire"):
                session = self.sessions.get(request.path.split("/")[4])
                if session is None or self._now(session)["status"] != "open":
                    return self._error(400, "invalid_request_error", "Only open sessions can be expired")
                session.update(status="expired", url=None)
                return Response(json.dumps(session), 200, content_type="application/json")
            if request.path.startswith("/v1/subscriptions/"):
                return self._subscription_call(request.method, request.path.rsplit("/", 1)[1], params)
            if request.method == "GET" and request.path.startswith("/v1/checkout/sessions/"):
                session = self.sessions.get(request.path.rsplit("/", 1)[1])
                if session is None:
                    return self._error(404, "invalid_request_error", "No such checkout.session")
                answer = dict(self._now(session))
                if "payment_intent" in (params.get("expand") or []) and answer["payment_intent"]:
                    intent = answer["payment_intent"]
                    answer["payment_intent"] = {"id": intent, "object": "payment_intent",
                                                "status": self.intents.get(intent, "processing")}
                return Response(json.dumps(answer), 200, content_type="application/json")
        return self._error(404, "invalid_request_error", f"Unrecognized request URL ({request.method} {request.path})")

    def _create(self, params: dict) -> tuple[int, str]:
        try:
            line = params["line_items"][0]
            mode = params["mode"]
            assert mode in ("payment", "subscription") and int(line["quantity"]) == 1
            if "price" in line:  # a Price made in Stripe (subscription mode)
                price = self.prices[line["price"]]
                amount, currency, name = price["unit_amount"], price["currency"], line["price"]
                assert mode == "subscription"
            else:
                price = line["price_data"]
                amount, currency, name = int(price["unit_amount"]), price["currency"], price["product_data"]["name"]
                assert ("recurring" in price) == (mode == "subscription")
            assert name and (mode == "payment" or "payment_intent_data" not in params)
            expires_at = int(params["expires_at"])
        except (KeyError, IndexError, ValueError, TypeError, AssertionError):
            return 400, json.dumps({"error": {"type": "invalid_request_error", "message": "bad checkout"}})
        session_id = f"cs_test_{secrets.token_hex(12)}"
        session = stripe_objects.session_object(
            id=session_id, url=f"https://checkout.stripe.test/c/pay/{session_id}", status="open",
            payment_status="unpaid", amount=amount, currency=currency, payment_intent=None,
            reference=params.get("client_reference_id"), metadata=params.get("metadata") or {},
            expires_at=expires_at, success_url=params.get("success_url"), cancel_url=params.get("cancel_url"),
            created=int(time.time()))
        session.update(mode=params["mode"], payment_intent_data=params.get("payment_intent_data"),
                       subscription_data=params.get("subscription_data"), line_items_sent=params["line_items"])
        self.sessions[session_id] = session
        return 200, json.dumps(session)

    def _subscription_call(self, method: str, subscription_id: str, params: dict) -> Response:
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None:
            return self._error(404, "invalid_request_error", f"No such subscription: '{subscription_id}'")
        if method == "POST":
            if "items" in params:
                price_id = params["items"][0]["price"]
                if price_id not in self.prices or params["items"][0].get("id") != subscription["items"]["data"][0]["id"]:
                    return self._error(400, "invalid_request_error", f"No such price: '{price_id}'")
                if self._decline and params.get("payment_behavior") == "error_if_incomplete":
                    self._decline -= 1
                    return Response(json.dumps({"error": {"type": "card_error", "code": "card_declined",
                                                          "message": "Your card was declined."}}), 402,
                                    content_type="application/json")
                price = self.prices[price_id]
                subscription["items"]["data"][0]["price"].update(id=price_id, unit_amount=price["unit_amount"])
            if "cancel_at_period_end" in params:
                subscription["cancel_at_period_end"] = params["cancel_at_period_end"] == "true"
            subscription["metadata"].update(params.get("metadata") or {})
        return Response(json.dumps(subscription), 200, content_type="application/json")

    def _now(self, session: dict) -> dict:
        if session["status"] == "open" and session["expires_at"] <= time.time():
            session.update(status="expired", url=None)
        return session

    @staticmethod
    def _error(status: int, kind: str, message: str) -> Response:
        return Response(json.dumps({"error": {"type": kind, "message": message}}), status,
                        content_type="application/json")

    # --- what the buyer, the bank and Stripe's events do ----------------------------------
    def complete(self, session_id: str, *, paid: bool = True, amount: int | None = None) -> tuple[bytes, dict]:
        """The buyer finished the checkout (card: paid; bank transfer: unpaid until `settle`).
        `amount` is what Stripe says was paid, to play a price that changed on the way."""
        session = self.sessions[session_id]
        session.update(status="complete", payment_status="paid" if paid else "unpaid", url=None,
                       payment_intent=session["payment_intent"] or f"pi_{secrets.token_hex(12)}")
        self.intents[session["payment_intent"]] = "succeeded" if paid else "processing"
        if amount is not None:
            session["amount_total"] = amount
        return self.event("checkout.session.completed", session)

    def settle(self, session_id: str, *, succeeded: bool = True) -> tuple[bytes, dict]:
        session = self.sessions[session_id]
        if succeeded:
            session["payment_status"] = "paid"
        self.intents[session["payment_intent"]] = "succeeded" if succeeded else "requires_payment_method"
        return self.event("checkout.session.async_payment_succeeded" if succeeded
                          else "checkout.session.async_payment_failed", session)

    def expire(self, session_id: str) -> tuple[bytes, dict]:
        session = self.sessions[session_id]
        session.update(status="expired", url=None)
        return self.event("checkout.session.expired", session)

    def refund(self, session_id: str, amount_refunded: int) -> tuple[bytes, dict]:
        """charge.refunded with the charge's cumulative amount_refunded."""
        session = self.sessions[session_id]
        intent = session["payment_intent"]
        return self.event("charge.refunded", stripe_objects.charge_object(
            id=f"ch_{intent[3:]}", payment_intent=intent, amount=session["amount_total"],
            amount_refunded=amount_refunded, currency=session["currency"]))

    def dispute(self, session_id: str, status: str = "needs_response") -> tuple[bytes, dict]:
        """charge.dispute.created, or with status "won" or "lost" charge.dispute.closed."""
        session = self.sessions[session_id]
        intent = session["payment_intent"]
        kind = "charge.dispute.created" if status not in ("won", "lost") else "charge.dispute.closed"
        return self.event(kind, stripe_objects.dispute_object(
            id=f"dp_{intent[3:]}", charge=f"ch_{intent[3:]}", payment_intent=intent, status=status,
            amount=session["amount_total"], currency=session["currency"]))

    def subscribe(self, session_id: str) -> list[tuple[bytes, dict]]:
        """The buyer subscribed on the checkout: the subscription, and the events Stripe sends for
        it (the checkout completed, the subscription created, its first invoice paid)."""
        session = self.sessions[session_id]
        line = session["line_items_sent"][0]
        price_id = line.get("price") or f"price_{secrets.token_hex(8)}"
        price = self.prices.get(price_id) or {"unit_amount": session["amount_total"], "currency": session["currency"],
                                              "interval": line["price_data"]["recurring"]["interval"]}
        now = int(time.time())
        subscription_id = f"sub_{secrets.token_hex(12)}"
        metadata = dict((session.get("subscription_data") or {}).get("metadata") or {})
        subscription = stripe_objects.subscription_object(
            id=subscription_id, status="active", price=price_id, amount=price["unit_amount"],
            currency=price["currency"], interval=price["interval"], period_start=now,
            period_end=_next(now, price["interval"], 1), cancel_at_period_end=False, metadata=metadata, created=now)
        self.subscriptions[subscription_id] = subscription
        session.update(status="complete", payment_status="paid", url=None, subscription=subscription_id)
        return [self.event("checkout.session.completed", session),
                self.event("customer.subscription.created", subscription),
                self.invoice(subscription_id, "subscription_create")]

    def renew(self, subscription_id: str, *, paid: bool = True, invoice: str | None = None) -> tuple[bytes, dict]:
        """The next period's invoice, paid or failed (`invoice`: pay one that failed)."""
        item = self.subscriptions[subscription_id]["items"]["data"][0]
        if invoice is None:
            subscription = self.subscriptions[subscription_id]
            subscription["_periods"] = subscription.get("_periods", 1) + 1
            anchor, interval = subscription["created"], item["price"]["recurring"]["interval"]
            item["current_period_start"], item["current_period_end"] = (
                item["current_period_end"], _next(anchor, interval, subscription["_periods"]))
        return self.invoice(subscription_id, "subscription_cycle", paid=paid, invoice=invoice)

    def invoice(self, subscription_id: str, reason: str, *, paid: bool = True, invoice: str | None = None,
                amount: int | None = None) -> tuple[bytes, dict]:
        subscription = self.subscriptions[subscription_id]
        item = subscription["items"]["data"][0]
        obj = stripe_objects.invoice_object(
            id=invoice or f"in_{secrets.token_hex(12)}", subscription=subscription_id, billing_reason=reason,
            status="paid" if paid else "open", amount=item["price"]["unit_amount"] if amount is None else amount,
            currency=item["price"]["currency"], period_start=item["current_period_start"],
            period_end=item["current_period_end"], price=item["price"]["id"], metadata=subscription["metadata"])
        return self.event("invoice.paid" if paid else "invoice.payment_failed", obj)

    def updated(self, subscription_id: str) -> tuple[bytes, dict]:
        return self.event("customer.subscription.updated", self.subscriptions[subscription_id])

    def deleted(self, subscription_id: str) -> tuple[bytes, dict]:
        subscription = self.subscriptions[subscription_id]
        subscription.update(status="canceled", ended_at=int(time.time()))
        return self.event("customer.subscription.deleted", subscription)

    def event(self, kind: str, obj: dict, *, livemode: bool = False, secret: str = WEBHOOK_SECRET,
              timestamp: int | None = None, created: int | None = None) -> tuple[bytes, dict]:
        """An event as Stripe delivers it: its body and its Stripe-Signature header."""
        body = stripe_objects.event_body(f"evt_{secrets.token_hex(12)}", kind, dict(obj), livemode=livemode,
                                         created=created)
        return body, {"Stripe-Signature": stripe_objects.sign(body, secret, timestamp),
                      "Content-Type": "application/json"}


def _next(anchor: int, interval: str, n: int) -> int:
    """The start of the n-th period after `anchor`, as Stripe counts (a month keeps its day)."""
    start = datetime.fromtimestamp(anchor, timezone.utc)
    return int(periods.nth_start(start, interval, None, n).timestamp())


@contextmanager
def fake_stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    with local_wsgi_server(fake) as port:
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
