"""Deliveries on the job queue (creditapp.jobs.queue): the same broker and workers as jobs, on a
queue of their own, so that a long AI job never waits behind a webhook or the other way round.

A message is a step: "fan_out" (turn new events into deliveries, and send each) or "deliver"
with a delivery id (one attempt). The database decides what a step does (delivery.claim), so a
repeated or late message is harmless. A retry is a new message delayed by the retry schedule;
a wait longer than LONGEST_DELAY is left to the sweep, which every worker process runs every
WEBHOOK_SWEEP_SECONDS: it fans out events whose dispatch was never sent (a crash right after a
commit), and sends deliveries that are due and that nobody holds. The sweep only tidies: a
commit's dispatch_soon is what makes a delivery prompt.
"""
import logging
import threading
from datetime import timedelta

import dramatiq
from flask import Flask, current_app

from ..database import migrations_pending
from ..jobs.queue import JobQueue
from ..ledger.clock import utcnow
from . import delivery, expiring, outbox
from .settings import Settings

ACTOR = "creditapp_webhook"
LONGEST_DELAY = 900
SWEEP_GRACE_SECONDS = 2  # a delivery due just now has its own message on the way
_EXTENSION_KEY = "creditapp.webhooks"
log = logging.getLogger(__name__)


class WebhookQueue:
    def __init__(self, app: Flask, jobs: JobQueue):
        self.app, self.jobs = app, jobs
        try:
            Settings.from_config(app.config)  # a bad schedule stops the start, not the first delivery
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None
        self.actor = dramatiq.Actor(
            self._run, broker=jobs.broker, actor_name=ACTOR, queue_name=f"{jobs.actor.queue_name}-webhooks",
            priority=0, options={"max_retries": 10, "min_backoff": 1000, "max_backoff": 60_000,
                                 "time_limit": int((float(app.config["WEBHOOK_TIMEOUT_SECONDS"]) + 60) * 1000)})
        self._sweeper: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        if jobs.mode == "embedded":
            app.before_request(self.start_sweeper)

    @property
    def settings(self) -> Settings:
        return Settings.from_config(self.app.config)

    def dispatch_soon(self) -> None:
        """After a commit that emitted: fan out now. The stub queue (tests) sends nothing: its
        tests run `sweep(inline=True)`."""
        if self.jobs.mode != "stub":
            self._send("fan_out")

    def send(self, delivery_id: int, delay: float = 0) -> None:
        self._send("deliver", delivery_id, delay=delay)

    def _send(self, step: str, delivery_id: int | None = None, delay: float = 0) -> None:
        self.actor.send_with_options(args=(step, delivery_id), delay=int(delay * 1000) or None)
        if self.jobs.mode == "embedded":
            self.jobs.start_embedded()

    def _run(self, step: str, delivery_id: int | None) -> None:
        with self.app.app_context():
            settings = self.settings
            if step == "fan_out":
                self._fan_out(settings, send=True)
                return
            retry_in = delivery.deliver(delivery_id, settings)
        if retry_in is not None and retry_in <= LONGEST_DELAY:
            self.send(delivery_id, delay=retry_in)

    def _fan_out(self, settings: Settings, *, send: bool) -> list[int]:
        made = []
        while batch := delivery.fan_out(settings):
            made += batch
            if send:
                for delivery_id in batch:
                    self.send(delivery_id)
        return made

    def sweep(self, *, inline: bool = False) -> dict:
        """Write the lot.expiring notices that are due, fan out what was never dispatched and get
        every due delivery going: sent to the queue, or (`inline`: the CLI without a broker,
        tests) delivered here, until nothing is due."""
        settings = self.settings
        # lot.expiring has no write to ride on: each pass writes the notices that are due.
        expiring.emit_expiring(self.app.config["LOT_EXPIRING_DAYS"])
        counts = {"dispatched": len(self._fan_out(settings, send=not inline)), "sent": 0}
        grace = 0 if inline else SWEEP_GRACE_SECONDS
        while due := delivery.due(before=utcnow() - timedelta(seconds=grace)):
            for delivery_id in due:
                if inline:
                    delivery.deliver(delivery_id, settings)
                else:
                    self.send(delivery_id)
            counts["sent"] += len(due)
            if not inline:
                break
        return counts

    def start_sweeper(self) -> None:
        """The periodic sweep of this process (an embedded queue's server, a `flask jobs worker`)."""
        with self._lock:
            if self._sweeper is not None or self.jobs.mode == "stub":
                return
            self._sweeper = threading.Thread(target=self._sweep_forever, name="creditapp-webhooks-sweep", daemon=True)
            self._sweeper.start()

    def stop_sweeper(self) -> None:
        self._stopping.set()

    def _sweep_forever(self) -> None:
        period = float(self.app.config["WEBHOOK_SWEEP_SECONDS"])
        while not self._stopping.is_set():
            try:
                with self.app.app_context():
                    self.sweep()
            except Exception as exc:
                with self.app.app_context():
                    # Said once, at start (creditapp/startup.py): the sweep waits for `db upgrade`.
                    if not migrations_pending(exc):
                        log.exception("the webhooks sweep failed; it runs again in %s s", period)
            self._stopping.wait(period)


def init_app(app: Flask, jobs: JobQueue) -> None:
    queue = WebhookQueue(app, jobs)
    app.extensions[_EXTENSION_KEY] = queue
    outbox.bind_dispatcher(queue.dispatch_soon)


def webhook_queue() -> WebhookQueue:
    return current_app.extensions[_EXTENSION_KEY]
