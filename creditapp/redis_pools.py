"""Redis connections that wait for a free one instead of failing. Under gunicorn's gevent worker a
process has a thousand requests in flight; redis-py's default pool raises MaxConnectionsError past
100 connections (bench s11 saw it as 500s from the rate limiter), where waiting a moment is right."""
import redis

MAX_CONNECTIONS = 100  # per process, whatever its worker class
WAIT_SECONDS = 5


def blocking_pool(url: str, **options) -> redis.BlockingConnectionPool:
    return redis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=WAIT_SECONDS,
                                                 **options)
