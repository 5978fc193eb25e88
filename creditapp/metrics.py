"""Prometheus metrics at /metrics.

HTTP requests (by endpoint and status, with latency histograms) come from
prometheus_flask_exporter; the credit and AI metrics are ours. Under gunicorn with several
workers, PROMETHEUS_MULTIPROC_DIR makes every worker write to shared files so that /metrics
reports the whole server whichever worker answers (gunicorn.conf.py sets it up). With
METRICS_PORT, gunicorn's arbiter serves them on that port instead (`serve`), and the API's port
has no /metrics.
"""
import os
import threading
import time

from flask import Flask, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics, GunicornPrometheusMetrics

from .database import migrations_pending

PLANS_EVERY_SECONDS = 15
AI_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class CreditMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        self.credits = Counter(
            "creditapp_credits", "Credits reserved, charged and released by paid requests",
            ["event", "feature", "credit_type"], registry=registry,
        )
        self.insufficient = Counter(
            "creditapp_insufficient_credits", "Paid requests refused for too few credits (403)",
            ["feature", "credit_type"], registry=registry,
        )
        self.usage_exceeded = Counter(
            "creditapp_usage_exceeded_hold", "Paid requests whose AI usage outgrew their hold and the "
            "balance (403 after the AI call; nothing charged)", ["feature", "credit_type"], registry=registry,
        )
        self.open_holds = Gauge(
            "creditapp_open_holds", "Holds open in requests being served now",
            multiprocess_mode="livesum", registry=registry,
        )
        self.ai_seconds = Histogram(
            "creditapp_ai_call_seconds", "AI provider call latency", ["feature", "outcome"],
            buckets=AI_BUCKETS, registry=registry,
        )
        self.ai_failures = Counter(
            "creditapp_ai_failures", "AI provider calls that failed", ["feature"], registry=registry,
        )
        self.streams = Counter(
            "creditapp_streams", "Streamed completions that ended, by outcome (completed, client_gone, "
            "provider_failed, timed_out, usage_exceeded_hold, reservation_expired)", ["feature", "outcome"],
            registry=registry,
        )
        self.stream_tokens = Counter(
            "creditapp_stream_delivered_tokens", "Completion tokens streams delivered, as the app counts them",
            ["feature"], registry=registry,
        )
        self.stream_first_token = Histogram(
            "creditapp_stream_first_token_seconds", "From the stream's start to its first piece of text",
            ["feature"], buckets=AI_BUCKETS, registry=registry,
        )

        self.jobs = Counter(
            "creditapp_jobs", "Jobs that ended, by feature and outcome (succeeded, failed, expired, cancelled), "
            "counted by the process that ended them",
            ["feature", "outcome"], registry=registry,
        )
        self.job_wait = Histogram(
            "creditapp_job_queue_wait_seconds", "From submit to a worker's first attempt", ["feature"],
            buckets=AI_BUCKETS, registry=registry,
        )
        self.job_run = Histogram(
            "creditapp_job_run_seconds", "One attempt of a job, by how it ended (succeeded, failed, "
            "queued for a retry, lost)", ["feature", "outcome"], buckets=AI_BUCKETS, registry=registry,
        )
        self.job_holds_extended = Counter(
            "creditapp_job_holds_extended", "Heartbeats that extended a running job's hold", registry=registry,
        )
        self.job_holds_ended = Counter(
            "creditapp_job_holds_ended", "Jobs that ended with their hold given back unused, by outcome "
            "(failed, expired, cancelled)",
            ["outcome"], registry=registry,
        )

        self.purchases = Counter(
            "creditapp_purchases", "Purchases that reached a status (open when made), by pack", ["pack", "status"],
            registry=registry,
        )
        self.revenue = Counter(
            "creditapp_revenue_minor_units", "Money paid for purchases that were granted, in the currency's "
            "minor unit", ["currency"], registry=registry,
        )
        self.refunded = Counter(
            "creditapp_refunded_minor_units", "Money refunded (or lost to disputes) of purchases", ["currency"],
            registry=registry,
        )
        self.amount_mismatches = Counter(
            "creditapp_payment_amount_mismatches", "Payments of another amount or currency than the purchase's "
            "price: nothing granted", ["pack"], registry=registry,
        )
        self.payment_events = Counter(
            "creditapp_payment_events", "Verified provider webhook events, by type and what applying them did "
            "(applied, deferred, unmatched, ignored, duplicate, stored)", ["type", "outcome"], registry=registry,
        )

        # Read from the database at each scrape (creditapp.plans.report): the latest wins.
        self.subscriptions = Gauge(
            "creditapp_plan_subscriptions", "Subscriptions to a plan, by plan and status", ["plan", "status"],
            registry=registry, multiprocess_mode="mostrecent")
        self.allowance = Gauge(
            "creditapp_plan_credits", "Credits plans have given, by kind (allowance: the periods' lots; rollover: "
            "what carried into the next period; expired: what lapsed unspent) and credit type",
            ["kind", "credit_type"], registry=registry, multiprocess_mode="mostrecent")

    def plans_read(self, figures: dict, plans, statuses) -> None:
        for plan in plans:
            for status in statuses:
                self.subscriptions.labels(plan, status).set(figures["subscriptions"].get((plan, status), 0))
        for kind, key in (("allowance", "granted"), ("rollover", "rollover"), ("expired", "expired")):
            for credit_type in ("generation_credits", "ai_tokens"):
                self.allowance.labels(kind, credit_type).set(figures[key].get(credit_type, 0))

    # The payments package's observer (creditapp.payments.inbox.Observer).
    def purchase_moved(self, purchase, status: str) -> None:
        self.purchases.labels(purchase.pack, status).inc()
        if status == "paid" and purchase.status in ("open", "processing", "expired"):
            self.revenue.labels(purchase.currency).inc(purchase.price)

    def money_back(self, currency: str, amount: int) -> None:
        if amount > 0:
            self.refunded.labels(currency).inc(amount)

    def amount_mismatch(self, purchase, detail: str) -> None:
        self.amount_mismatches.labels(purchase.pack).inc()

    def payment_event(self, kind: str, outcome: str) -> None:
        self.payment_events.labels(kind, outcome).inc()

    def count(self, event: str, feature: str, credit_type: str, amount: int) -> None:
        if amount:
            self.credits.labels(event, feature, credit_type).inc(amount)


def init_app(app: Flask) -> None:
    options = {"group_by": "endpoint", "defaults_prefix": "creditapp", "excluded_paths": ["/metrics"]}
    apart = bool(app.config["METRICS_PORT"])  # then the arbiter serves them (gunicorn.conf.py), not this app
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        (GunicornPrometheusMetrics if apart else GunicornInternalPrometheusMetrics)(app, **options)
        registry = None  # values go to the shared files; the exporter collects them from there
    else:
        # One registry per app: the test suite makes many apps in one process.
        registry = CollectorRegistry()
        PrometheusMetrics(app, registry=registry, **({"path": None} if apart else {}), **options)
    app.extensions["creditapp.metrics"] = CreditMetrics(registry)
    app.extensions["creditapp.metrics_registry"] = registry

    if not apart:
        @app.before_request
        def _plans_at_scrape():
            if request.path == "/metrics":
                read_plans(app)
    elif registry is None:
        # The arbiter serves the files and has no database: each worker keeps its gauges fresh.
        app.before_request(_PlansEvery(app, PLANS_EVERY_SECONDS).start_once)


def read_plans(app: Flask) -> None:
    """The plans' gauges, read from the database now (at each scrape)."""
    if "creditapp.plans" not in app.extensions:
        return
    from .plans import report
    from .plans.tables import STATUSES

    with app.app_context():
        try:
            figures = report.figures()
        except Exception as exc:  # a database not migrated yet: the rest of /metrics still answers
            if not migrations_pending(exc):
                app.logger.exception("plans' metrics not read")
            return
    app.extensions["creditapp.metrics"].plans_read(figures, app.extensions["creditapp.plans"].plans, STATUSES)


class _PlansEvery:
    """Reads the plans' gauges every few seconds in a thread of this worker, started at its first
    request (a forking server must start threads after the fork)."""

    def __init__(self, app: Flask, seconds: float):
        self.app, self.seconds, self.started = app, seconds, False
        self.lock = threading.Lock()

    def start_once(self) -> None:
        if self.started:
            return
        with self.lock:
            if not self.started:
                self.started = True
                threading.Thread(target=self._run, name="creditapp-plans-gauges", daemon=True).start()

    def _run(self) -> None:
        while True:
            read_plans(self.app)
            time.sleep(self.seconds)


class _PlansAtScrape:
    """Reads the plans' gauges before the collectors registered after it report."""

    def __init__(self, app: Flask):
        self.app = app

    def describe(self):
        return []

    def collect(self):
        read_plans(self.app)
        return []


def serve(app: Flask, host: str, port: int) -> None:
    """/metrics on a port of its own, in a thread of this process: a job worker's, or gunicorn's
    arbiter's for the whole server (METRICS_PORT), which serves no API itself."""
    from prometheus_client import start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = app.extensions["creditapp.metrics_registry"]
    if registry is None:  # PROMETHEUS_MULTIPROC_DIR: what every process wrote
        registry = CollectorRegistry()
        registry.register(_PlansAtScrape(app))  # first: its gauges are then in the files read next
        MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


def metrics() -> CreditMetrics:
    return current_app.extensions["creditapp.metrics"]
