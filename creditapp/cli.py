"""Flask CLI: `flask --app wsgi users ...` and `flask --app wsgi credits ...`."""
import os
import re
import signal
import threading
from datetime import timedelta

import click
from flask import Flask, current_app
from marshmallow import ValidationError

from .cli_groups import DatabaseCommands
from . import metrics
from .dashboard import verify_runs
from .access import teams
from . import users as user_service
from .jobs import store as job_store
from .jobs.queue import job_queue
from .api.schemas import CredentialsSchema, GrantSchema, RefundSchema, VoidSchema
from .cli_plans import plans_cli
from .cli_purchases import purchases_cli
from .cli_webhooks import webhooks_cli
from .webhooks.queue import webhook_queue
from .exceptions import UsernameTaken
from .ledger import (
    AlreadyRefunded, Balance, CreditType, ExpiryNotInTheFuture, LotAlreadyVoided, NotACharge, NotRefundable,
    ReferenceConflict, RefundExceedsCharge,
    UnknownCharge, UnknownLot, UnknownUser, credit_service, keys, team_wallet,
)
from .ledger.clock import utcnow
from .ledger.tables import MAX_AMOUNT

users_cli = DatabaseCommands("users", help="Manage users.")
jobs_cli = DatabaseCommands("jobs", help="Run and inspect jobs (paid work submitted with Prefer: respond-async).")
credits_cli = DatabaseCommands("credits", help="Grant, inspect and audit credits.")

_credentials = CredentialsSchema()
_grant = GrantSchema()
_refund = RefundSchema()
_void = VoidSchema()
_credit_types = click.Choice([t.value for t in CreditType])


def _user_id(name: str) -> int:
    try:
        return user_service.user_id_by_name(name)
    except UnknownUser as exc:
        raise click.ClickException(str(exc)) from None


@users_cli.command("create")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--admin", is_flag=True, help="Give administrator rights.")
def create_user(name: str, password: str, admin: bool) -> None:
    """Create user NAME (with the signup grant)."""
    _validated(_credentials, {"username": name, "password": password})
    config = current_app.config
    try:
        user = user_service.create_user(
            name, password, is_admin=admin,
            signup_grant=Balance(config["CREDITS_SIGNUP_GRANT"], config["AI_TOKENS_SIGNUP_GRANT"]),
            hash_method=config["PASSWORD_HASH_METHOD"], signup_expires_in_days=config["SIGNUP_GRANT_EXPIRES_DAYS"],
        )
    except UsernameTaken as exc:
        raise click.ClickException(str(exc)) from None
    role = "administrator" if admin else "user"
    click.echo(f"created {role} {user['username']} (id {user['id']})")


@credits_cli.command("grant")
@click.argument("name")
@click.argument("amount", type=click.IntRange(1, MAX_AMOUNT))
@click.option("--type", "credit_type", type=_credit_types, default=CreditType.GENERATION_CREDITS.value,
              show_default=True)
@click.option("--reason", default="granted from the command line", show_default=True)
@click.option("--reference", default=None, help="An outside id; a second grant with it adds nothing.")
@click.option("--priority", default=None, help="0 to 100, lower is spent first (default 50).")
@click.option("--expires-at", default=None, help="ISO 8601 with a time zone, in the future.")
@click.option("--expires-in-days", default=None, help="Days until the credits expire.")
def grant(name: str, amount: int, credit_type: str, reason: str, reference: str | None, priority: str | None,
          expires_at: str | None, expires_in_days: str | None) -> None:
    """Add AMOUNT credits to user NAME, as a new lot."""
    # The same rules as the API's grant, checked by the same schema.
    given = {"reference": reference, "priority": _integer(priority, "--priority"), "expires_at": expires_at,
             "expires_in_days": _integer(expires_in_days, "--expires-in-days")}
    lot = _validated(_grant, {"amount": amount, "credit_type": credit_type, "reason": reason,
                              **{k: v for k, v in given.items() if v is not None}})
    if lot["expires_in_days"] is not None:
        lot["expires_at"] = utcnow() + timedelta(days=lot["expires_in_days"])
    try:
        result = credit_service.grant(_user_id(name), amount, credit_type, reason=reason, reference=reference,
                                      priority=lot["priority"], expires_at=lot["expires_at"])
    except (ReferenceConflict, ExpiryNotInTheFuture) as exc:
        raise click.ClickException(str(exc)) from None
    if not result.created:
        click.echo(f"reference {reference!r} was already granted; nothing added")
    expiry = result.lot["expires_at"].isoformat() if result.lot and result.lot["expires_at"] else "never"
    click.echo(f"lot {result.lot_id}: {amount} {credit_type}, priority {lot['priority']}, expires {expiry}")
    click.echo(f"{name}: {_format(result.balance)}")


@credits_cli.command("grant-team")
@click.argument("team_id", type=click.IntRange(1, 2**31 - 1))
@click.argument("amount", type=click.IntRange(1, MAX_AMOUNT))
@click.option("--type", "credit_type", type=_credit_types, default=CreditType.GENERATION_CREDITS.value,
              show_default=True)
@click.option("--reason", default="granted from the command line", show_default=True)
@click.option("--reference", default=None, help="An outside id; a second grant with it adds nothing.")
def grant_team(team_id: int, amount: int, credit_type: str, reason: str, reference: str | None) -> None:
    """Add AMOUNT credits to team TEAM_ID's wallet, as a new lot."""
    if not teams.exists(team_id):
        raise click.ClickException(f"no team {team_id}")
    try:
        result = credit_service.grant(team_wallet(team_id), amount, credit_type, reason=reason, reference=reference)
    except ReferenceConflict as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"lot {result.lot_id}: {amount} {credit_type} to team {team_id}; {_format(result.balance)}")


@credits_cli.command("refund")
@click.argument("hold_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--amount", type=click.IntRange(1, MAX_AMOUNT), default=None,
              help="Credits to give back (default: all that is left to refund).")
@click.option("--reason", default="refunded from the command line", show_default=True)
def refund(hold_id: int, amount: int | None, reason: str) -> None:
    """Give back all or part of charge HOLD_ID to the lots it came from."""
    _validated(_refund, {"reason": reason, **({"amount": amount} if amount is not None else {})})
    try:
        result = credit_service.refund(hold_id, amount, reason=reason)
    except (UnknownCharge, NotACharge, NotRefundable, AlreadyRefunded, RefundExceedsCharge) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"refunded {result.amount} {result.credit_type.value} of charge {hold_id} "
               f"({result.refunded_total} of {result.charged} refunded so far)")


@credits_cli.command("void")
@click.argument("lot_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--reason", required=True, help="Why (1 to 255 characters), e.g. the reversed payment.")
def void(lot_id: int, reason: str) -> None:
    """Remove what nobody holds of lot LOT_ID."""
    _validated(_void, {"reason": reason})
    try:
        result = credit_service.void_lot(lot_id, reason=reason)
    except (UnknownLot, LotAlreadyVoided) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"voided lot {lot_id}: {result['voided']} removed, {result['lot']['held']} still held")


@credits_cli.command("balance")
@click.argument("name")
def balance(name: str) -> None:
    """Show what user NAME can spend now."""
    click.echo(f"{name}: {_format(credit_service.get_credit_balance(_user_id(name)))}")


@credits_cli.command("release-expired")
def release_expired() -> None:
    """Give back credits held by requests that never finished (older than the hold TTL)."""
    click.echo(f"released {credit_service.release_expired()} expired hold(s)")


@credits_cli.command("prune-idempotency")
def prune_idempotency() -> None:
    """Delete stored Idempotency-Key answers past IDEMPOTENCY_TTL_SECONDS."""
    click.echo(f"pruned {keys.prune()} expired idempotency key(s)")


@credits_cli.command("verify")
def verify() -> None:
    """Check every balance against the ledger; exits 1 when any differs. The result is stored
    for the dashboard."""
    _run, problems = verify_runs.run("cli")
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        raise click.exceptions.Exit(1)
    click.echo("ledger ok: every balance matches its ledger")


def _integer(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.lstrip("-").isdigit():
        raise click.BadParameter(f"{value!r} is not an integer", param_hint=option)
    return int(value)


def _validated(schema, data: dict) -> dict:
    try:
        return schema.load(data)
    except ValidationError as exc:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.messages.items())
        raise click.ClickException(problems) from None


def _format(balance: Balance) -> str:
    return " ".join(f"{credit_type.value}={getattr(balance, credit_type.value)}" for credit_type in CreditType)


@jobs_cli.command("worker")
@click.option("--threads", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Jobs run at once by this process.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0,
              help="Serve Prometheus metrics on this port (0: not at all).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
def jobs_worker(threads: int, metrics_port: int, metrics_host: str) -> None:
    """Take jobs from JOBS_BROKER_URL and run them until SIGTERM or SIGINT (then finish the running
    ones, up to the broker's own timeout). Run as many processes, on as many hosts, as needed."""
    queue = job_queue()
    if queue.mode != "broker":
        raise click.ClickException(
            "JOBS_BROKER_URL is not set: jobs run inside the server (the embedded queue). "
            "Set it to redis://... or amqp://... to run workers of their own.")
    if metrics_port:
        metrics.serve(current_app._get_current_object(), metrics_host, metrics_port)
    worker = queue.worker(threads)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    worker.start()
    webhook_queue().start_sweeper()
    click.echo(f"worker: {threads} threads on {queue.actor.queue_name} ({_redacted(queue.url)}), pid {os.getpid()}",
               err=True)
    stopping.wait()
    click.echo("worker: stopping", err=True)
    worker.stop(timeout=10_000)
    queue.forget_worker()


@jobs_cli.command("requeue")
def jobs_requeue() -> None:
    """Send every unfinished job to the broker again (after a broker lost its messages). A job
    that is running or finished is not run twice: the jobs table decides."""
    queue = job_queue()
    ids = job_store.unfinished()
    for job_id in ids:
        queue.send(job_id)
    click.echo(f"sent {len(ids)} unfinished job(s) again")


@jobs_cli.command("status")
def jobs_status() -> None:
    """How many jobs are queued and running now."""
    depth = job_store.depth()
    click.echo(f"queued {depth['queued']}, running {depth['running']}")


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def register_commands(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(credits_cli)
    app.cli.add_command(purchases_cli)
    app.cli.add_command(plans_cli)
    app.cli.add_command(webhooks_cli)
