"""Prometheus metrics of the ingress and the workers, and the aiohttp handlers that expose them.

The series live in one process-wide registry (`prometheus_client`'s default, which also carries the
`process_*` and `python_*` series). Each process fills the ones of its role: the ingress counts HTTP requests
and the read model's lag, a worker counts jobs, rows, bytes, emails and its consumer's lag. They are recorded
at the edges (the ingress's middleware, the agents' publish and job hooks), never inside the domain code.
The projector serves only its own counters (`projector_registry`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from packager.domain.events import (
    EmailFailed,
    EmailSent,
    Event,
    PackageCompleted,
    PackageFailed,
    PackageQueued,
)

log = logging.getLogger(__name__)

# The `*_created` timestamps double the series and nothing here reads them.
disable_created_metrics()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# --- ingress ---------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "packager_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
REQUESTS_ACCEPTED = Counter(
    "packager_requests_accepted",
    "Package requests accepted (PackageRequested appended to the log), by endpoint.",
    ["endpoint"],
)
REQUESTS_REJECTED = Counter(
    "packager_requests_rejected",
    "Package requests refused, by endpoint and reason (the `error` of the answer, e.g. BadRequestError).",
    ["endpoint", "reason"],
)
READ_MODEL_LAG = Gauge(
    "packager_read_model_lag",
    "Records on the log not yet folded into the views by the projector, per topic partition.",
    ["topic", "partition"],
)
READ_MODEL_CAUGHT_UP = Gauge(
    "packager_read_model_caught_up", "1 when the views held every record of the log at the last scrape."
)
RECORDS_REJECTED = Counter(
    "packager_records_rejected",
    "Records the projector skipped because they are not valid events (the typed decode refused them), by "
    "topic and reason (not_json, bad_envelope, unknown_type, unsupported_version, bad_payload).",
    ["topic", "reason"],
)
FOLD_FAILURES = Counter(
    "packager_read_model_fold_failures",
    "Events whose fold raised: the views kept their state without them (readiness says degraded).",
    ["topic", "type"],
)
READ_SIDE_RESTARTS = Counter(
    "packager_read_side_restarts", "Times the projector's loop stopped on an error and was restarted."
)
READ_MODEL_REBUILDS = Counter(
    "packager_read_model_rebuilds",
    "Times the views were dropped and rebuilt from the start of the log because the log they were built "
    "from is gone (another cluster id or topic id: a wiped broker, recreated topics).",
)
READ_MODEL_DEGRADED = Gauge(
    "packager_read_model_degraded",
    "1 while the projector reports that the views lack events (a fold raised) or its loop is restarting.",
)


def projector_registry() -> CollectorRegistry:
    """What `packager projector --metrics-port` serves: its own counters and the process's series, not the
    other roles' (the ingress's `packager_read_model_caught_up` would always read 0 there)."""
    registry = CollectorRegistry(auto_describe=True)
    own = (RECORDS_REJECTED, FOLD_FAILURES, READ_SIDE_RESTARTS, READ_MODEL_REBUILDS)
    for collector in (*own, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


# --- workers ---------------------------------------------------------------------------------------------

JOBS = Counter(
    "packager_jobs",
    "Jobs a packer finished, by lane and outcome (completed or failed).",
    ["lane", "outcome"],
)
JOBS_QUEUED = Counter("packager_jobs_queued", "Jobs the planner sent to a lane.", ["lane"])
JOBS_IN_PROGRESS = Gauge("packager_jobs_in_progress", "Jobs being packaged right now, by lane.", ["lane"])
JOB_DURATION = Histogram(
    "packager_job_duration_seconds",
    "Time from a packer taking a job to its terminal event, by lane and outcome.",
    ["lane", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
ROWS_PACKAGED = Counter("packager_rows_packaged", "Datastore rows written into completed packages.", ["lane"])
BYTES_PACKAGED = Counter("packager_bytes_packaged", "Bytes of completed ZIPs.", ["lane"])
CACHE_HITS = Counter(
    "packager_cache_hits",
    "Requests completed from an already built (or being built) ZIP instead of a new build.",
)
EMAILS_SENT = Counter(
    "packager_emails_sent", "Emails the SMTP server accepted, by what they report.", ["about"]
)
EMAILS_FAILED = Counter(
    "packager_emails_failed", "Emails given up on (EmailFailed), by what they would have reported.", ["about"]
)
EVENTS_PUBLISHED = Counter("packager_events_published", "Events a worker appended, by type.", ["type"])
CONSUMER_LAG = Gauge(
    "packager_consumer_lag",
    "Records after the worker consumer's position, per assigned topic partition (highwater - position).",
    ["topic", "partition"],
)
INTERNAL_ERRORS = Counter(
    "packager_internal_errors",
    "Builds stopped by an unexpected error (a bug, not a PackagingError); each is logged at ERROR with its "
    "traceback, and the requester is told only that the service failed.",
    ["lane"],
)
NOTIFIER_RECORDS_SKIPPED = Counter(
    "packager_notifier_records_skipped",
    "Events the mailer or the webhook sender passed after their handling raised again and again (a bug): "
    "each is logged at ERROR with the record; its email or webhook was not sent.",
    ["agent"],
)
WORKER_READY = Gauge("packager_worker_ready", "1 while the worker is started, assigned and not rebalancing.")

PACKAGE_ENDPOINTS = frozenset({"/package_url", "/package_datastore", "/package_dwc_archive"})


def record_published(payload: Event) -> None:
    """Count an event a worker appended: queued jobs, cache hits and emails are told by their events."""
    EVENTS_PUBLISHED.labels(payload.TYPE).inc()
    if isinstance(payload, PackageQueued):
        JOBS_QUEUED.labels(payload.lane).inc()
        log.info("queued on the %s lane", payload.lane, extra={"lane": payload.lane})
    elif isinstance(payload, PackageCompleted) and payload.cached_from:
        CACHE_HITS.inc()
        log.info("completed from the cache (built by %s)", payload.cached_from)
    elif isinstance(payload, EmailSent):
        EMAILS_SENT.labels(payload.about).inc()
    elif isinstance(payload, EmailFailed):
        EMAILS_FAILED.labels(payload.about).inc()


async def observed_job(lane: str, job: Awaitable[Event]) -> Event:
    """Await a packer's job and record its outcome, duration, rows and bytes."""
    started = time.monotonic()
    JOBS_IN_PROGRESS.labels(lane).inc()
    try:
        terminal = await job
    finally:
        JOBS_IN_PROGRESS.labels(lane).dec()
    outcome = "completed" if isinstance(terminal, PackageCompleted) else "failed"
    seconds = time.monotonic() - started
    JOBS.labels(lane, outcome).inc()
    JOB_DURATION.labels(lane, outcome).observe(seconds)
    if isinstance(terminal, PackageCompleted):
        BYTES_PACKAGED.labels(lane).inc(terminal.size)
        if terminal.rows:
            ROWS_PACKAGED.labels(lane).inc(terminal.rows)
        log.info(
            "job completed in %.1fs",
            seconds,
            extra={"lane": lane, "rows": terminal.rows, "size": terminal.size, "seconds": round(seconds, 3)},
        )
    elif isinstance(terminal, PackageFailed):
        log.info(
            "job failed in %.1fs: %s",
            seconds,
            terminal.error,
            extra={"lane": lane, "error_type": terminal.error_type, "seconds": round(seconds, 3)},
        )
    return terminal


def set_lag(gauge: Gauge, lag: Mapping[tuple[str, int], int]) -> None:
    """Replace a per-partition lag gauge's values (partitions no longer held disappear)."""
    gauge.clear()
    for (topic, partition), value in lag.items():
        gauge.labels(topic, str(partition)).set(value)


def exposition() -> bytes:
    """Every series in Prometheus's text format."""
    return generate_latest(REGISTRY)


def metrics_handler(refresh: Callable[[], Awaitable[None]] | None = None) -> Handler:
    """A `GET /metrics` handler; `refresh` updates the gauges read at scrape time (lags, readiness)."""

    async def metrics(request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        response = web.Response(body=exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return metrics


Probe = Callable[[], Awaitable[tuple[bool, Mapping[str, object]]]]


def health_handlers(ready: Probe) -> tuple[Handler, Handler]:
    """`GET /health/live` (the process answers) and `GET /health/ready` (200, or 503 with the reason)."""

    async def live(request: web.Request) -> web.Response:
        return _json({"status": "live"}, 200)

    async def readiness(request: web.Request) -> web.Response:
        ok, details = await ready()
        return _json({"status": "ready" if ok else "not ready", **details}, 200 if ok else 503)

    return live, readiness


def _json(body: Mapping[str, object], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def add_ops_routes(app: web.Application, ready: Probe, refresh: Callable[[], Awaitable[None]] | None) -> None:
    """Register /metrics, /health/live and /health/ready on an application."""
    live, readiness = health_handlers(ready)
    app.router.add_get("/metrics", metrics_handler(refresh))
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", readiness)
