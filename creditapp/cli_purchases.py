"""`flask purchases ...`: reconcile with the provider, and (test provider) play what a buyer,
a bank or a dispute would."""
import json
from datetime import timedelta

import click

from .cli_groups import DatabaseCommands
from .api.purchase_schemas import PurchaseSchema
from .api.purchases import payments
from .payments.errors import PaymentError, UnknownPurchase
from .payments.providers.test import ACTIONS, ActionNotAllowed, TestProvider, UnknownCheckout

purchases_cli = DatabaseCommands("purchases", help="Purchases of credit packs.")


@purchases_cli.command("reconcile")
@click.option("--older-than", "minutes", type=click.IntRange(0, 10**6), default=10, show_default=True,
              help="Only purchases made at least this many minutes ago.")
def reconcile(minutes: int) -> None:
    """Ask the provider about purchases still open or processing, apply what it says, and apply
    stored events never applied: for webhooks that never came (run it from cron)."""
    try:
        result = payments().reconcile(timedelta(minutes=minutes))
    except PaymentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"asked about {result['asked']} purchases, {result['changed']} changed; "
               f"{result['events_applied']} stored events applied")


@purchases_cli.command("simulate")
@click.argument("purchase_id", type=click.IntRange(1, 2**63 - 1))
@click.argument("action", type=click.Choice(ACTIONS))
@click.option("--amount", type=click.IntRange(1, 10**10), default=None,
              help="refund: how much money (minor units) to refund this time; all that is left by default.")
def simulate(purchase_id: int, action: str, amount: int | None) -> None:
    """With PAYMENTS_PROVIDER=test: pay, refund or dispute a purchase as Stripe would tell it,
    through the signed webhook path (the same inbox and state machine)."""
    service = payments()
    if not isinstance(service.provider, TestProvider):
        raise click.ClickException("simulate works with PAYMENTS_PROVIDER=test only")
    try:
        purchase = service.find(purchase_id)
        events = service.provider.act(purchase.checkout_id, action, amount)
    except (UnknownPurchase, ActionNotAllowed) as exc:
        raise click.ClickException(str(exc)) from None
    except UnknownCheckout:
        raise click.ClickException(f"purchase {purchase_id} has no checkout to act on") from None
    for body, headers in events:
        outcome = service.inbox.receive(body, headers)
        click.echo(f"{json.loads(body)['type']}: {outcome}")
    click.echo(json.dumps(PurchaseSchema().dump(service.find(purchase_id)), indent=2))
