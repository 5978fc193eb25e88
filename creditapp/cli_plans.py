"""`flask plans ...`: put an account on a plan without payment, pre-grant periods that are due,
and (test provider) renew or act on subscriptions as Stripe Billing would."""
import json

import click
from sqlalchemy import select

from .cli_groups import DatabaseCommands
from .api.plans import plans
from .ledger.clock import utcnow
from .ledger.transactions import atomic
from .payments.providers.test import ActionNotAllowed, TestProvider, UnknownCheckout
from .payments.providers.test_billing import SUBSCRIPTION_ACTIONS
from .plans.errors import PlanError
from .plans.machine import SUBSCRIPTIONS

plans_cli = DatabaseCommands("plans", help="Plans and subscriptions.")


def _user_id(name: str) -> int:
    from .cli import _user_id as by_name  # cli.py registers this group: imported when called

    return by_name(name)


def _test_provider(what: str) -> TestProvider:
    service = plans()
    provider = service.payments.provider if service.payments else None
    if not isinstance(provider, TestProvider):
        raise click.ClickException(f"{what} works with PAYMENTS_PROVIDER=test only; Stripe renews its own")
    return provider


@plans_cli.command("assign")
@click.argument("user")
@click.argument("plan")
def assign(user: str, plan: str) -> None:
    """Put USER (a username) on PLAN without payment (staff, partners)."""
    try:
        described = plans().assign(_user_id(user), plan)
    except PlanError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(described, default=str, indent=2))


@plans_cli.command("refill")
def refill() -> None:
    """Grant every period that is due now. Never needed for correctness (the first hold or read of
    a period grants it); for tidy balances in reports."""
    click.echo(f"refilled {plans().refill()} wallets")


@plans_cli.command("reconcile")
def reconcile() -> None:
    """With PAYMENTS_PROVIDER=test: renew the subscriptions whose period has ended, as Stripe
    Billing does by itself (the events go through the same inbox)."""
    provider = _test_provider("reconcile")
    with atomic(write=False) as session:
        due = session.execute(select(SUBSCRIPTIONS.c.provider_subscription).where(
            SUBSCRIPTIONS.c.provider == provider.name, SUBSCRIPTIONS.c.status.in_(("active", "past_due")),
            SUBSCRIPTIONS.c.provider_subscription.is_not(None), SUBSCRIPTIONS.c.period_end <= utcnow())).scalars().all()
    for subscription in due:
        provider.advance(subscription)
    click.echo(f"asked about {len(due)} subscriptions")


@plans_cli.command("simulate")
@click.argument("subscription_id", type=click.IntRange(1, 2**63 - 1))
@click.argument("action", type=click.Choice(SUBSCRIPTION_ACTIONS))
def simulate(subscription_id: int, action: str) -> None:
    """With PAYMENTS_PROVIDER=test: make a subscription's renewals fail (or pay them), cancel it at
    the period's end, resume it, or end it now, as Stripe would tell it."""
    service, provider = plans(), _test_provider("simulate")
    with atomic(write=False) as session:
        at_provider = session.execute(select(SUBSCRIPTIONS.c.provider_subscription).where(
            SUBSCRIPTIONS.c.id == subscription_id)).scalar()
    if not at_provider:
        raise click.ClickException(f"subscription {subscription_id} has no subscription at the test provider")
    try:
        events = provider.act_subscription(at_provider, action)
    except (ActionNotAllowed, UnknownCheckout) as exc:
        raise click.ClickException(str(exc)) from None
    for body, headers in events:
        click.echo(f"{json.loads(body)['type']}: {service.payments.inbox.receive(body, headers)}")
