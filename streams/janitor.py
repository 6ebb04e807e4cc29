"""The janitor: removes partial files of killed builds and expires packages older than CACHE_TIME.

Registered by the steward's wiring (`streams.steward.add_planner_and_steward`) on the same `cache` table:
each expired package gets one `PackageExpired`, which the steward then folds (it leaves the index and the
store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiokafka.errors import KafkaError

from packager.adapters.store import FileStore
from packager.core.settings import Settings
from packager.domain.events import PackageExpired
from streams.cache import is_expired

log = logging.getLogger(__name__)


def add_janitor(
    app: faust.App, settings: Settings, store: FileStore, cache: Any, events_topic: Any, publish: Any
) -> None:
    """Register the sweep at start and the janitor's timer."""

    @app.task
    async def sweep_at_start() -> None:
        """Remove partial files left by builds killed before this worker started."""
        await sweep_partial_files(store, settings)

    @app.timer(interval=settings.janitor_interval)
    async def janitor() -> None:
        """Sweep old partial files; expire packages older than CACHE_TIME (one PackageExpired each)."""
        await sweep_partial_files(store, settings)
        now = time.time()
        for cached_key, cached in list(cache.items()):
            if cached and is_expired(cached, settings, now):
                expired = PackageExpired(cache_key=cached_key, zip_file_name=cached["zip_file_name"])
                try:
                    await publish(events_topic, cached["job_id"], cached_key, expired)
                except KafkaError as exc:  # a timer that raises stops the worker: the next sweep tries again
                    log.warning("PackageExpired not appended yet: %r", exc)
                    return


async def sweep_partial_files(store: FileStore, settings: Settings) -> None:
    """Remove partial files a killed build left behind (see FileStore.sweep_partials)."""
    removed = await asyncio.to_thread(store.sweep_partials, settings.partial_max_age)
    if removed:
        log.warning("removed %d partial file(s) left by builds that were killed", len(removed))
