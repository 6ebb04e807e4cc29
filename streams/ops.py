"""A worker's operations server: /metrics, /health/live and /health/ready on METRICS_HOST:METRICS_PORT.

The Faust app runs with its own web server turned off; this small aiohttp server starts as a service of
the Faust worker (before the app, so liveness answers during recovery) and stops with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiohttp import web
from mode import Service

from packager.adapters import metrics
from packager.core.settings import Settings

log = logging.getLogger(__name__)


class OpsServer(Service):
    """Serves the worker's metrics and health endpoints."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        self.app = app
        self.settings = settings
        self.port: int | None = None
        self.app_started = False
        self._runner: web.AppRunner | None = None
        super().__init__(**kwargs)

        @app.task
        async def mark_started() -> None:
            """Faust runs app tasks once the app is up and its tables are recovered."""
            self.app_started = True

    def web_app(self) -> web.Application:
        """The aiohttp application of the server."""
        web_app = web.Application()
        metrics.add_ops_routes(web_app, self.readiness, self.refresh)
        return web_app

    async def on_start(self) -> None:
        """Bind the server; port 0 takes a free port, which is logged."""
        runner = web.AppRunner(self.web_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.metrics_host, self.settings.metrics_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info(
            "metrics listening on http://%s:%d/metrics",
            self.settings.metrics_host,
            self.port,
            extra={"metrics_port": self.port},
        )

    async def on_stop(self) -> None:
        """Close the server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _assignment(self) -> set[Any]:
        try:
            return set(self.app.consumer.assignment())
        except Exception:  # the consumer is not started yet (or already stopped)
            return set()

    async def readiness(self) -> tuple[bool, Mapping[str, object]]:
        """Ready once the app started, while it holds partitions and is neither rebalancing nor recovering."""
        if not self.app_started:
            return False, {"reason": "The worker is starting (joining the group, recovering tables)"}
        if self.app.rebalancing or getattr(self.app, "in_recovery", False):
            return False, {"reason": "The worker is rebalancing"}
        assigned = self._assignment()
        if not assigned:
            return False, {"reason": "No partitions are assigned to this worker"}
        return True, {"partitions": len(assigned)}

    async def refresh(self) -> None:
        """Read the consumer's lag (highwater - position) per assigned source partition, and readiness."""
        lag: dict[tuple[str, int], int] = {}
        for tp in self._assignment():
            if tp.topic.endswith("-changelog"):
                continue  # a table's own changelog: written by this worker, read only during recovery
            try:
                highwater = self.app.consumer.highwater(tp)
                position = await self.app.consumer.position(tp)
            except Exception:  # a partition revoked meanwhile: leave it out
                continue
            if highwater is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - position)
        metrics.set_lag(metrics.CONSUMER_LAG, lag)
        ready, _ = await self.readiness()
        metrics.WORKER_READY.set(1 if ready else 0)
