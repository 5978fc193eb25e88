"""Real brokers for the job tests: Redis and RabbitMQ on this machine, each test on a queue (and a
Redis namespace) of its own, removed afterwards. Where a broker does not answer its tests skip,
except where CREDITAPP_REQUIRE_BROKERS is set (CI), where that is a failure."""
import os
import socket
import uuid
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest

BROKERS = {
    "redis": os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/14",
    "rabbitmq": os.environ.get("TEST_RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F",
}


def _answers(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def broker_queue(name: str):
    """Yields the settings (JOBS_BROKER_URL, JOBS_QUEUE, JOBS_NAMESPACE) of a fresh queue on `name`."""
    url = BROKERS[name]
    if not _answers(url):
        reason = f"no {name} broker answers at {urlparse(url).hostname}:{urlparse(url).port}"
        if os.environ.get("CREDITAPP_REQUIRE_BROKERS"):
            pytest.fail(f"{name} is required here but {reason}", pytrace=False)
        pytest.skip(reason)
    queue = f"creditapp-test-{uuid.uuid4().hex[:10]}"
    try:
        yield {"JOBS_BROKER_URL": url, "JOBS_QUEUE": queue, "JOBS_NAMESPACE": queue}
    finally:
        _remove(name, url, queue)


def _remove(name: str, url: str, queue: str) -> None:
    if name == "redis":
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
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(queue + suffix)
        connection.close()
