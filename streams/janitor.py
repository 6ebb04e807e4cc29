"""The janitor: removes partial files of killed builds and stale packages, expires packages older than
CACHE_TIME, and reminds requesters before their package expires (EXPIRY_NOTICE_BEFORE).

Registered by the steward's wiring (`streams.steward.add_planner_and_steward`) on the same `cache` table:
each expired package gets one `PackageExpired`, which the steward then folds (it leaves the index and the
store); reminders are `streams.expiry_notices`'.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka.errors import KafkaError

from packager.adapters.store import Store
from packager.core.settings import Settings
from packager.domain.events import PackageExpired
from streams import expiry_notices
from streams.cache import STALE_SWEEP_INTERVAL, is_expired, sweep_partial_files, sweep_stale_packages

log = logging.getLogger(__name__)


def add_janitor(
    app: faust.App,
    settings: Settings,
    store: Store,
    cache: Any,
    events_topic: Any,
    publish: Any,
    reminding: tuple[Any, expiry_notices.Reminders],
    caught_up: Callable[[set[int]], Awaitable[set[int]]],
) -> None:
    """Register the sweep at start, the stale-package sweep and the janitor's timer (`reminding`: the
    notices table and its in-memory companion)."""
    notices, reminders = reminding
    events_name = events_topic.get_topic_name()

    @app.task
    async def sweep_at_start() -> None:
        """Remove partial files left by builds killed before this worker started."""
        await sweep_partial_files(store, settings)

    @app.timer(interval=STALE_SWEEP_INTERVAL)
    async def stale_packages() -> None:
        """Remove ZIPs past CACHE_TIME (and a margin) that no expiry removed: no link can serve them."""
        await sweep_stale_packages(store, settings)

    @app.timer(interval=settings.janitor_interval)
    async def janitor() -> None:
        """Sweep old partials; expire packages past CACHE_TIME (one PackageExpired each); remind before."""
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
        if settings.expiry_notice_before:
            assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == events_name}
            remind = functools.partial(publish, events_topic)
            await expiry_notices.append_due(
                notices, reminders, cache, store, assigned, caught_up, remind, settings
            )
