"""`flask webhooks dispatch`: the outbox's sweep, by hand or from cron."""
import click

from .cli_groups import DatabaseCommands
from .webhooks.queue import webhook_queue

webhooks_cli = DatabaseCommands("webhooks", help="Outgoing webhooks.")


@webhooks_cli.command("dispatch")
@click.option("--inline/--queue", default=None,
              help="Deliver here, or send to the job queue's workers (default: the queue when "
                   "JOBS_BROKER_URL names a broker, else here).")
def dispatch(inline: bool | None) -> None:
    """Fan out events whose dispatch never ran (a crash right after a commit) and get every due
    delivery going. The workers sweep by themselves every WEBHOOK_SWEEP_SECONDS; this is the
    same pass, now."""
    queue = webhook_queue()
    if inline is None:
        inline = queue.jobs.mode != "broker"
    counts = queue.sweep(inline=inline)
    where = "delivered here" if inline else "sent to the workers"
    click.echo(f"dispatched {counts['dispatched']} new delivery(ies); {counts['sent']} due delivery(ies) {where}")
