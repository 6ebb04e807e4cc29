"""The ingress's operations surface: request metrics, /metrics, /health/live, /health/ready, /openapi.json.

Kept apart from the request handlers: a middleware counts every answer, and the routes here read the read
side and the broker, never the domain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import orjson
from aiohttp import web

from packager.adapters import metrics
from packager.adapters.readside import broker_reachable
from packager.http.app_keys import READ_SIDE, SETTINGS
from packager.http.openapi import spec

log = logging.getLogger(__name__)

Handler = metrics.Handler

BROKER_PROBE_TIMEOUT = 3.0  # seconds a readiness probe waits for the broker


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


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route and status, and package requests as accepted or rejected by reason."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.HTTP_REQUESTS.labels(_route_of(request), _method_of(request), str(exc.status)).inc()
        raise
    route = _route_of(request)
    metrics.HTTP_REQUESTS.labels(route, _method_of(request), str(response.status)).inc()
    if route in metrics.PACKAGE_ENDPOINTS:
        if response.status < 300:
            metrics.REQUESTS_ACCEPTED.labels(route).inc()
        else:
            metrics.REQUESTS_REJECTED.labels(route, _error_of(response)).inc()
    return response


async def readiness(app: web.Application) -> tuple[bool, Mapping[str, object]]:
    """Ready when the broker answers and the read model has reached the log end it saw at start.

    Ready but "degraded" (still 200: the ingress accepts requests, and one bad event must not take every
    ingress out of service) when the read model lacks events whose fold raised, or its reading loop is
    being restarted after an error; the reason says which.
    """
    settings = app[SETTINGS]
    try:
        async with asyncio.timeout(BROKER_PROBE_TIMEOUT):
            await broker_reachable(settings.kafka_bootstrap_servers)
    except Exception as exc:  # any failure to reach the broker makes the ingress unready
        return False, {"reason": f"Kafka is unreachable ({type(exc).__name__})"}
    side = app.get(READ_SIDE)
    if side is None:
        return True, {}
    problem = side.health.problem()
    if not side.caught_up.is_set():
        lag = side.lag()
        return False, {
            "reason": problem or "The read model has not caught up with the log yet",
            "lag": sum(lag.values()) if lag else None,
        }
    if problem:
        return True, {"status": "degraded", "reason": problem}
    return True, {}


def add_routes(app: web.Application) -> None:
    """Register /metrics, /health/live, /health/ready and /openapi.json on the ingress."""

    async def refresh() -> None:
        side = app.get(READ_SIDE)
        if side is not None:
            metrics.set_lag(metrics.READ_MODEL_LAG, side.lag())
            metrics.READ_MODEL_CAUGHT_UP.set(1 if side.caught_up.is_set() else 0)
            metrics.READ_MODEL_DEGRADED.set(1 if side.health.problem() else 0)

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
