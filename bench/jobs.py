"""Scenario 8's machinery: a queue of its own on Redis, `flask jobs worker` processes, and what
the jobs table says about how the jobs went.

The figures come from the jobs table, not from polling the API: created_at, started_at and
finished_at are written by the transactions that queue, claim and finish each job, so they are
what the workers did, and reading them costs the measured servers nothing.
"""
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from creditapp.jobs.tables import JOBS, UNFINISHED

from creditapp.testing.brokers import BrokerUnavailable, fresh_queue
from creditapp.testing.servers import job_workers

from .servers import BENCH_REDIS


class NoBroker(Exception):
    """No Redis answers: scenario 8 cannot run here."""


@contextmanager
def redis_queue(url: str = BENCH_REDIS):
    """Yields the settings of a queue (and Redis namespace) used by nothing else; its keys are
    deleted afterwards, so neither a run nor a crashed one leaves messages behind for the next."""
    try:
        with fresh_queue("redis", url, prefix="creditapp-bench-jobs") as settings:
            yield settings
    except BrokerUnavailable as exc:
        raise NoBroker(str(exc)) from None


@contextmanager
def workers(env: dict, count: int, threads: int, log_dir: Path, name: str, timeout: float = 60):
    """Yields the pids of `count` `flask jobs worker --threads N` processes, once each has said it
    has started; stops each by its process group on exit (SIGTERM: running jobs end first)."""
    with job_workers(env, count, log_dir, threads, name=name, timeout=timeout) as processes:
        yield [process.pid for process in processes]


def unfinished(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(JOBS).where(JOBS.c.status.in_(UNFINISHED))).scalar_one()


def wait_drained(engine, timeout: float) -> int:
    """Waits until no job is queued or running, or `timeout` passes; returns how many still are."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 10
    while (left := unfinished(engine)) and time.monotonic() < deadline:
        if time.monotonic() >= next_note:
            print(f"  s8: {left} jobs still queued or running ...", flush=True)
            next_note += 10
        time.sleep(0.5)
    return left


def figures(engine, *, workers: int, threads: int, latency_s: float) -> dict:
    """What the jobs table says: how many ended how, completions per second while the workers
    drained the queue, and queue wait (started_at - created_at) percentiles."""
    with engine.connect() as conn:
        rows = conn.execute(select(JOBS.c.status, JOBS.c.created_at, JOBS.c.started_at, JOBS.c.finished_at)).all()
    statuses = {}
    for row in rows:
        statuses[row.status] = statuses.get(row.status, 0) + 1
    succeeded = [row for row in rows if row.status == "succeeded"]
    # From the first start to the last finish: the submits outrun the workers, so every thread is
    # busy throughout but for the last second, and jobs / span is what they can do. (From the first
    # finish instead would count the first wave of `threads` jobs twice over a short run.)
    span = (max(row.finished_at for row in succeeded)
            - min(row.started_at for row in succeeded)).total_seconds() if succeeded else 0.0
    waits = sorted((row.started_at - row.created_at).total_seconds() for row in rows if row.started_at)
    expected = workers * threads / latency_s
    completions = len(succeeded) / span if span else None
    return {
        "jobs": len(rows), "statuses": statuses, "workers": workers, "threads": threads,
        "latency_s": latency_s, "drain_span_s": span, "completions_per_s": completions,
        "expected_per_s": expected, "queue_wait_p50_s": _percentile(waits, 50),
        "queue_wait_p99_s": _percentile(waits, 99), "queue_wait_max_s": waits[-1] if waits else None,
    }


def _percentile(values: list[float], p: int) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]
