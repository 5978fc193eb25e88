"""The built-in test provider's checkout page, and the page a buyer returns to.

The page's buttons do what a buyer or a bank would (pay by card, pay by bank transfer and settle
it later, decline) and hand the events Stripe would send, signed, to the same inbox as
`POST /api/webhooks/test`. Served only with PAYMENTS_PROVIDER=test."""
import re

from flask import Blueprint, current_app, redirect, request
from markupsafe import escape
from werkzeug.exceptions import Conflict, NotFound

from ..payments.providers.test import ActionNotAllowed, TestProvider, UnknownCheckout

pages = Blueprint("checkout_pages", __name__, url_prefix="/checkout")
BUTTONS = (("pay", "Pay"), ("transfer", "Pay by bank transfer"), ("settle", "Settle the transfer"),
           ("decline", "Decline"))
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
    if state.status == "open":
        offered = ("pay", "transfer", "decline")
    elif state.status == "complete" and state.payment_status == "unpaid":
        offered = ("settle", "decline")
    else:
        offered = ()
    buttons = "".join(
        f'<form method="post"><input type="hidden" name="action" value="{action}">'
        f'<button type="submit" id="{action}">{escape(label)}</button></form>'
        for action, label in BUTTONS if action in offered)
    status = f"{state.status}, {state.payment_status}"
    body = (f"<h1>{escape(row.name)}</h1><p id=price>{escape(_price(row.amount, row.currency))}</p>"
            f"<p class=note>Test checkout {escape(checkout_id)}: <span id=status>{escape(status)}</span>. "
            f"No money moves; the app gets the events Stripe would send.</p>{buttons}")
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
    inbox = current_app.extensions["creditapp.payments"].inbox
    for body, headers in events:
        inbox.receive(body, headers)
    return redirect(row.cancel_url if action == "decline" else row.success_url, code=303)


@pages.get("/return")
def returned():
    """Where a checkout sends the buyer back (the default CHECKOUT_SUCCESS_URL and CANCEL_URL)."""
    purchase = request.args.get("purchase", "")
    purchase = purchase if purchase.isdigit() else "?"
    if request.args.get("cancelled"):
        body = f"<h1>Checkout cancelled</h1><p>Purchase {escape(purchase)} was not paid.</p>"
    else:
        body = (f"<h1>Thank you</h1><p>Purchase {escape(purchase)}: its credits are added as soon as the "
                f"payment settles (<code>GET /api/purchases/{escape(purchase)}</code>).</p>")
    return _html("Checkout", body)
