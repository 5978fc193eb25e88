"""The built-in test provider's checkout page, and the page a buyer returns to.

The page's buttons do what a buyer or a bank would (pay by card, pay by bank transfer and settle
it later, decline; subscribe to a plan) and hand the events Stripe would send, signed, to the same
inbox as `POST /api/webhooks/test`. A test subscription has a page of its own whose buttons do what
Stripe Billing would at the next renewal (fail, pay, cancel, end). Served only with
PAYMENTS_PROVIDER=test."""
import re

from flask import Blueprint, current_app, redirect, request
from markupsafe import escape
from werkzeug.exceptions import Conflict, NotFound

from ..payments.providers.test import ActionNotAllowed, TestProvider, UnknownCheckout
from ..payments.providers.test_billing import SUBSCRIPTION_ACTIONS

pages = Blueprint("checkout_pages", __name__, url_prefix="/checkout")
BUTTONS = (("pay", "Pay"), ("transfer", "Pay by bank transfer"), ("settle", "Settle the transfer"),
           ("decline", "Decline"))
SUBSCRIPTION_BUTTONS = (("fail-renewals", "Fail the next renewals"), ("pay-renewals", "Pay the renewals"),
                        ("cancel", "Cancel at the period's end"), ("resume", "Keep the subscription"),
                        ("end", "End it now"))
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
button{{font-size:1rem;margin:.25rem 0;padding:.5rem 1rem;width:100%}}.note{{color:#666}}</style></head>
<body>{body}</body></html>"""


def _checkout_id(checkout_id: str) -> str:
    if not re.fullmatch(r"cs_test_[0-9a-f]{24}", checkout_id):
        raise NotFound("no such checkout")
    return checkout_id


def _subscription_id(subscription_id: str) -> str:
    if not re.fullmatch(r"sub_test_[0-9a-f]{24}", subscription_id):
        raise NotFound("no such subscription")
    return subscription_id


def _buttons(choices, offered) -> str:
    return "".join(
        f'<form method="post"><input type="hidden" name="action" value="{action}">'
        f'<button type="submit" id="{action}">{escape(label)}</button></form>'
        for action, label in choices if action in offered)


def _deliver(events) -> None:
    inbox = current_app.extensions["creditapp.payments"].inbox
    for body, headers in events:
        inbox.receive(body, headers)


def _provider() -> TestProvider:
    service = current_app.extensions.get("creditapp.payments")
    if service is None or not isinstance(service.provider, TestProvider):
        raise NotFound("the test checkout exists only with PAYMENTS_PROVIDER=test")
    return service.provider


def _html(title: str, body: str, status: int = 200):
    return PAGE.format(title=escape(title), body=body), status, {
        "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
        # No script, nothing may frame it. No form-action: Chromium applies it to the redirect
        # after the post too, and the return pages may be on another origin.
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}


def _price(amount: int, currency: str) -> str:
    return f"{amount / 100:.2f} {currency.upper()}"


@pages.get("/test/<checkout_id>")
def checkout(checkout_id):
    provider, checkout_id = _provider(), _checkout_id(checkout_id)
    try:
        row = provider.find(checkout_id)
        state = provider.retrieve_checkout(checkout_id)
    except UnknownCheckout:
        raise NotFound("no such checkout") from None
    subscription = row.mode == "subscription"
    if state.status == "open":
        offered = ("pay", "decline") if subscription else ("pay", "transfer", "decline")
    elif state.status == "complete" and state.payment_status == "unpaid":
        offered = ("settle", "decline")
    else:
        offered = ()
    choices = tuple((a, "Subscribe" if a == "pay" else label) for a, label in BUTTONS) if subscription else BUTTONS
    status = f"{state.status}, {state.payment_status}"
    price = _price(row.amount, row.currency) + (" per period" if subscription else "")
    made = provider.subscription_of_checkout(checkout_id) if subscription else None
    link = (f'<p><a id=subscription href="/checkout/test/subscriptions/{escape(made.id)}">The subscription</a></p>'
            if made is not None else "")
    body = (f"<h1>{escape(row.name)}</h1><p id=price>{escape(price)}</p>"
            f"<p class=note>Test checkout {escape(checkout_id)}: <span id=status>{escape(status)}</span>. "
            f"No money moves; the app gets the events Stripe would send.</p>{_buttons(choices, offered)}{link}")
    return _html(f"Checkout: {row.name}", body)


@pages.post("/test/<checkout_id>")
def act(checkout_id):
    provider, checkout_id = _provider(), _checkout_id(checkout_id)
    action = request.form.get("action", "")
    if action not in dict(BUTTONS):
        raise Conflict(f"unknown action {action!r}")
    try:
        events = provider.act(checkout_id, action)
        row = provider.find(checkout_id)
    except UnknownCheckout:
        raise NotFound("no such checkout") from None
    except ActionNotAllowed as exc:
        raise Conflict(str(exc)) from None
    _deliver(events)
    return redirect(row.cancel_url if action == "decline" else row.success_url, code=303)


@pages.get("/test/subscriptions/<subscription_id>")
def subscription_page(subscription_id):
    provider, subscription_id = _provider(), _subscription_id(subscription_id)
    row = provider.find_subscription(subscription_id)
    if row is None:
        raise NotFound("no such subscription")
    if row.status == "canceled":
        offered = ()
    else:
        offered = {"fail-renewals" if not row.fail_renewals else "pay-renewals",
                   "resume" if row.cancel_at_period_end else "cancel", "end"}
    renewals = "fail" if row.fail_renewals else "are paid"
    body = (f"<h1>Subscription: {escape(row.plan)}</h1><p id=price>{escape(_price(row.amount, row.currency))}"
            f" per period</p><p>Status <span id=status>{escape(row.status)}</span>; this period "
            f"<span id=period>{row.period_start.isoformat()} to {row.period_end.isoformat()}</span>"
            f"{'; canceled at its end' if row.cancel_at_period_end else ''}. Renewals {renewals}.</p>"
            f"<p class=note>Test subscription {escape(subscription_id)}: it renews when the app next reads it after "
            f"the period's end (<code>GET /api/subscription</code>, <code>flask plans reconcile</code>).</p>"
            f"{_buttons(SUBSCRIPTION_BUTTONS, offered)}")
    return _html(f"Subscription: {row.plan}", body)


@pages.post("/test/subscriptions/<subscription_id>")
def act_on_subscription(subscription_id):
    provider, subscription_id = _provider(), _subscription_id(subscription_id)
    action = request.form.get("action", "")
    if action not in SUBSCRIPTION_ACTIONS:
        raise Conflict(f"unknown action {action!r}")
    try:
        _deliver(provider.act_subscription(subscription_id, action))
    except UnknownCheckout:
        raise NotFound("no such subscription") from None
    except ActionNotAllowed as exc:
        raise Conflict(str(exc)) from None
    return redirect(f"/checkout/test/subscriptions/{subscription_id}", code=303)


@pages.get("/return")
def returned():
    """Where a checkout sends the buyer back (the default CHECKOUT_SUCCESS_URL and CANCEL_URL)."""
    subscription = request.args.get("subscription", "")
    if subscription:
        subscription = subscription if subscription.isdigit() else "?"
        if request.args.get("cancelled"):
            body = f"<h1>Checkout cancelled</h1><p>Subscription {escape(subscription)} was not started.</p>"
        else:
            body = ("<h1>Thank you</h1><p>Your plan and its allowance take effect as soon as its first invoice "
                    "is paid (<code>GET /api/subscription</code>).</p>")
        return _html("Checkout", body)
    purchase = request.args.get("purchase", "")
    purchase = purchase if purchase.isdigit() else "?"
    if request.args.get("cancelled"):
        body = f"<h1>Checkout cancelled</h1><p>Purchase {escape(purchase)} was not paid.</p>"
    else:
        body = (f"<h1>Thank you</h1><p>Purchase {escape(purchase)}: its credits are added as soon as the "
                f"payment settles (<code>GET /api/purchases/{escape(purchase)}</code>).</p>")
    return _html("Checkout", body)
