"""The broker between the API and the workers: Dramatiq, on Redis or RabbitMQ (JOBS_BROKER_URL).

Dramatiq acknowledges a message only after its actor returns (a worker killed mid-job has its
message delivered again), retries with a delay the actor asks for (`dramatiq.Retry`), and runs
workers on any number of processes and hosts. A message carries only a job id: the jobs table
decides what a delivery does (see store.py), so a late, repeated or stray message is harmless.

With no JOBS_BROKER_URL the queue is embedded: Dramatiq's in-memory broker and a worker of a few
threads inside the server process, started at its first request; the same job code runs. Jobs
of a server that stopped are sent again when the next one starts its worker. `stub://` is the same
broker with no worker at all: tests run what is queued with `drain()`.
"""
import atexit
import logging
import threading
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.message import Message
from flask import Flask, current_app

from ..database import migrations_pending
from ..exceptions import QueueUnavailable
from . import store

ACTOR = "creditapp_job"
POLL_AFTER_SECONDS = 1
_EXTENSION_KEY = "creditapp.jobs"
log = logging.getLogger(__name__)

# perform(job_id) runs a job and returns None, or the seconds after which it should come back.
Perform = Callable[[str], float | None]


class JobQueue:
    def __init__(self, app: Flask, perform: Perform):
        config = app.config
        self.app = app
        self.url = config["JOBS_BROKER_URL"] or ""
        self.mode = "embedded" if not self.url else "stub" if self.url == "stub://" else "broker"
        self.broker = make_broker(self.url, config)
        self._perform = perform
        self.actor = dramatiq.Actor(
            self._run, broker=self.broker, actor_name=ACTOR, queue_name=config["JOBS_QUEUE"], priority=0,
            options={
                # Only the runner decides about another try (it raises Retry); anything else that
                # escapes it (the database down) is tried again a bounded number of times.
                "retry_when": lambda retries, exc: isinstance(exc, dramatiq.Retry) or retries < 20,
                "min_backoff": 1000, "max_backoff": 60_000,
                "time_limit": int(config["JOB_TIME_LIMIT_SECONDS"] * 1000),
            },
        )
        self._threads = config["JOBS_EMBEDDED_THREADS"]
        self._worker: dramatiq.Worker | None = None
        self._lock = threading.Lock()
        if self.mode == "embedded":
            # A server process starts its worker (and sends the jobs an earlier server left
            # unfinished) at its first request, not at import: CLI commands and the tests make
            # apps too, and a forking server must start threads after the fork.
            app.before_request(self._start_at_first_request)

    def _start_at_first_request(self) -> None:
        if self._worker is None:
            self.start_embedded()

    def send(self, job_id: str) -> None:
        try:
            self.actor.send(job_id)
        except Exception as exc:  # the broker's own errors vary: redis, pika, dramatiq
            raise QueueUnavailable(f"could not queue job {job_id}: {exc}") from exc
        if self.mode == "embedded":
            self.start_embedded()

    def start_embedded(self) -> None:
        with self._lock:
            if self._worker is not None:
                return
            self._worker = self.worker(self._threads)
            self._worker.start()
            atexit.register(self._worker.stop, 5000)
        threading.Thread(target=self._resend_unfinished, name="creditapp-jobs-resend", daemon=True).start()

    def worker(self, threads: int) -> dramatiq.Worker:
        return dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=200)

    def forget_worker(self) -> None:
        """A worker that stopped cleanly takes its Redis heartbeat entry with it (Dramatiq leaves
        it, and would look for a dead worker's messages there)."""
        if hasattr(self.broker, "broker_id") and hasattr(self.broker, "client"):
            self.broker.client.zrem(f"{self.broker.namespace}:__heartbeats__", self.broker.broker_id)

    def drain(self, limit: int = 10_000) -> int:
        """stub:// (tests): run every message waiting, delayed ones at once, in this thread."""
        ran = 0
        while ran < limit:
            data = next((q.get_nowait() for name in (self.actor.queue_name, dq_name(self.actor.queue_name))
                         if not (q := self.broker.queues[name]).empty()), None)
            if data is None:
                return ran
            message = Message.decode(data)
            with self.app.app_context():
                retry_in = self._perform(*message.args)
            if retry_in is not None:
                self.actor.send_with_options(args=message.args, delay=int(retry_in * 1000))
            ran += 1
        return ran

    def _run(self, job_id: str) -> None:
        with self.app.app_context():
            retry_in = self._perform(job_id)
        if retry_in is not None:
            raise dramatiq.Retry(delay=max(1, int(retry_in * 1000)))

    def _resend_unfinished(self) -> None:
        try:
            with self.app.app_context():
                for job_id in store.unfinished():
                    self.actor.send(job_id)
        except Exception as exc:
            with self.app.app_context():
                if migrations_pending(exc):  # said once, at start; the next server start sends them
                    return
            log.exception("could not send the unfinished jobs of an earlier server again")


def make_broker(url: str, config) -> dramatiq.Broker:
    if not url or url == "stub://":
        return StubBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker
        return RedisBroker(url=url, namespace=config["JOBS_NAMESPACE"],
                           # A dead worker's unacknowledged messages go back to the queue once its
                           # heartbeat is this old, checked on a share of the broker's commands.
                           heartbeat_timeout=int(config["JOBS_REDIS_HEARTBEAT_TIMEOUT_SECONDS"] * 1000),
                           maintenance_chance=config["JOBS_REDIS_MAINTENANCE_CHANCE"])
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        # Confirmed publishes: a 202 is answered only once the broker has the message.
        return RabbitmqBroker(url=url, confirm_delivery=True)
    raise RuntimeError(f"JOBS_BROKER_URL must be redis://..., amqp://... or empty, got {url!r}")


def init_app(app: Flask, perform: Perform) -> None:
    """Before the rate limiter's init_app: this after_request then runs after the limiter's,
    which sets Retry-After to its window's reset on every limited answer."""
    app.extensions[_EXTENSION_KEY] = JobQueue(app, perform)
    app.after_request(_poll_hint)


def _poll_hint(response):
    """A job's 202 says when to poll its Location."""
    if response.status_code == 202 and response.headers.get("Preference-Applied") == "respond-async":
        response.headers["Retry-After"] = str(POLL_AFTER_SECONDS)
    return response


def job_queue() -> JobQueue:
    return current_app.extensions[_EXTENSION_KEY]
