"""Real brokers for job tests and benchmarks: Redis and RabbitMQ on this machine, each user on a
queue (and a Redis namespace) of its own, removed afterwards. One module, used by creditapp's
tests, its benchmarks and the pytest kit."""
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from .databases import missing

BROKERS = {
    "redis": os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/14",
    "rabbitmq": os.environ.get("TEST_RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F",
}


class BrokerUnavailable(Exception):
    """No broker of that kind answers here; the message says where it was looked for."""


@contextmanager
def fresh_queue(kind: str, url: str | None = None, prefix: str = "creditapp-test") -> Iterator[dict]:
    """Yields the settings (JOBS_BROKER_URL, JOBS_QUEUE, JOBS_NAMESPACE) of a queue used by nothing
    else on the `kind` broker ("redis" or "rabbitmq"); its keys or queues are deleted afterwards,
    so neither a run nor a crashed one leaves messages behind for the next."""
    url = url or BROKERS[kind]
    where = urlparse(url)
    try:
        with socket.create_connection((where.hostname, where.port), timeout=2):
            pass
    except OSError:
        raise BrokerUnavailable(f"no {kind} broker answers at {where.hostname}:{where.port}") from None
    queue = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield {"JOBS_BROKER_URL": url, "JOBS_QUEUE": queue, "JOBS_NAMESPACE": queue}
    finally:
        _remove(kind, url, queue)


@contextmanager
def broker_queue(kind: str) -> Iterator[dict]:
    """`fresh_queue` for pytest: where the broker does not answer, the test is skipped, or fails
    where CREDITAPP_REQUIRE_BROKERS is set (CI)."""
    try:
        with fresh_queue(kind) as settings:
            yield settings
    except BrokerUnavailable as exc:
        missing("CREDITAPP_REQUIRE_BROKERS", kind, str(exc))


def _remove(kind: str, url: str, queue: str) -> None:
    if kind == "redis":
        import redis
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{queue}*"))
        if keys:
            client.delete(*keys)
        client.close()
    else:
        import pika
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        for name in (queue, f"{queue}-webhooks"):  # the jobs' queue and the webhooks' (creditapp.webhooks.queue)
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(name + suffix)
        connection.close()
