"""The ingress's operations surface: request metrics, /metrics, /health/live, /health/ready, /openapi.json.

Kept apart from the request handlers: a middleware counts every answer, and the routes here read the views'
tracking records and the broker, never the domain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter

from packager.adapters import metrics
from packager.adapters.readside import broker_reachable
from packager.adapters.viewdb import ViewsUnavailable
from packager.http.app_keys import READ_VIEWS, SETTINGS
from packager.http.openapi import spec

log = logging.getLogger(__name__)

Handler = metrics.Handler

BROKER_PROBE_TIMEOUT = 3.0  # seconds a readiness probe waits for the broker
VIEWS_PROBE_TIMEOUT = 5.0  # seconds it waits for the views' tracking records and the log's end offsets


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _error_of(response: web.StreamResponse) -> str:
    """The `error` name of a JSON failure answer (what the requester was told), else the status code."""
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        try:
            doc = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return doc["error"]
    return str(response.status)


# The labelled series the middleware counts in, by counter and labels. `labels()` checks and converts its
# arguments and takes a lock on every call (about a fiftieth of a package request's CPU, twice per request);
# the series it returns is looked up here once instead. Bounded: routes are templates, methods a known set,
# statuses and reasons the service's own. (The counters are never cleared, which would orphan a series.)
_series: dict[tuple[Counter, tuple[str, ...]], Any] = {}


def _inc(counter: Counter, *labels: str) -> None:
    """`counter.labels(*labels).inc()`."""
    series = _series.get((counter, labels))
    if series is None:
        series = _series[(counter, labels)] = counter.labels(*labels)
    series.inc()


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route and status, and package requests as accepted or rejected by reason."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _inc(metrics.HTTP_REQUESTS, _route_of(request), _method_of(request), str(exc.status))
        raise
    route = _route_of(request)
    _inc(metrics.HTTP_REQUESTS, route, _method_of(request), str(response.status))
    if route in metrics.PACKAGE_ENDPOINTS:
        if response.status < 300:
            _inc(metrics.REQUESTS_ACCEPTED, route)
        else:
            _inc(metrics.REQUESTS_REJECTED, route, _error_of(response))
    return response


async def readiness(app: web.Application) -> tuple[bool, Mapping[str, object]]:
    """Ready when the broker answers and the views can be read and have been written by a projector.

    The projector's lag (records of the log not yet in the views) is part of the answer: a lagging
    projector makes answers older, not wrong, so it is reported rather than refused. Ready but "degraded"
    (still 200: the ingress accepts requests, and one bad event must not take every ingress out of service)
    when the projector reports a problem in its status row: the views lack events whose fold raised, or its
    loop is being restarted after an error; the reason says which.
    """
    settings = app[SETTINGS]
    try:
        async with asyncio.timeout(BROKER_PROBE_TIMEOUT):
            await broker_reachable(settings.kafka_bootstrap_servers)
    except Exception as exc:  # any failure to reach the broker makes the ingress unready
        return False, {"reason": f"Kafka is unreachable ({type(exc).__name__})"}
    views = app.get(READ_VIEWS)
    if views is None:
        return True, {}
    try:
        async with asyncio.timeout(VIEWS_PROBE_TIMEOUT):
            lag = await views.lag()
            positions = await views.positions()
            problem = await views.projector_status()
    except ViewsUnavailable as exc:
        return False, {"reason": f"The views cannot be read ({exc}); is `packager projector` running?"}
    except Exception as exc:  # the log's end offsets could not be had: the lag is unknown
        return False, {"reason": f"The projector's lag is unknown ({type(exc).__name__})"}
    behind = sum(lag.values())
    if not positions and behind:
        return False, {"reason": "No projector has written the views yet", "lag": behind}
    if problem:
        return True, {"status": "degraded", "reason": problem, "lag": behind}
    return True, {"lag": behind}


def add_routes(app: web.Application) -> None:
    """Register /metrics, /health/live, /health/ready and /openapi.json on the ingress."""

    async def refresh() -> None:
        views = app.get(READ_VIEWS)
        if views is None:
            return
        try:
            async with asyncio.timeout(VIEWS_PROBE_TIMEOUT):
                lag = await views.lag()
                problem = await views.projector_status()
        except Exception:  # unknown lag: leave the series out rather than report a guess
            log.debug("the views' lag is unknown", exc_info=True)
            metrics.READ_MODEL_LAG.clear()
            metrics.READ_MODEL_CAUGHT_UP.set(0)
            return
        metrics.set_lag(metrics.READ_MODEL_LAG, lag)
        metrics.READ_MODEL_CAUGHT_UP.set(1 if not any(lag.values()) else 0)
        metrics.READ_MODEL_DEGRADED.set(1 if problem else 0)

    async def ready() -> tuple[bool, Mapping[str, object]]:
        return await readiness(app)

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=_SPEC_BYTES, content_type="application/json")

    metrics.add_ops_routes(app, ready, refresh)
    app.router.add_get("/openapi.json", openapi)


_SPEC_BYTES = orjson.dumps(spec(), option=orjson.OPT_INDENT_2)


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})


def _method_of(request: web.Request) -> str:
    """The method as a metric label; anything unusual is "other", so clients cannot mint new series."""
    return request.method if request.method in _KNOWN_METHODS else "other"
