"""The cache index: what may be reused, decided from tables projected from completion events; and the
packages' upkeep in the store (removal, the partial files' and the stale packages' sweeps).

Helpers with no Faust: the agents in `streams.app` keep the tables and call these.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from packager.adapters.store import Store, remove_stale
from packager.core.settings import Settings
from packager.domain.events import (
    Envelope,
    PackageCompleted,
    PackageFailed,
    PackageRequested,
    requester_fields,
)

log = logging.getLogger(__name__)

# The store's own sweep (`remove_stale`): how often, and how far past CACHE_TIME a ZIP must be. A listing of
# the whole store is not free on a large bucket, and this only catches what the per-package expiry missed.
STALE_SWEEP_INTERVAL = 600.0  # seconds
STALE_MARGIN = 3600.0  # seconds


def cache_entry(env: Envelope, partition: int) -> dict[str, Any]:
    """The index entry of a freshly built package (kept in the `cache` table under its cache key)."""
    p = env.payload
    assert isinstance(p, PackageCompleted)
    return {
        "job_id": env.job_id,
        "zip_file_name": p.zip_file_name,
        "size": p.size,
        "sha256": p.sha256,
        "rows": p.rows,
        "finished_at": p.finished_at,
        "completed_at": time.time(),
        "partition": partition,
    }


def is_expired(entry: dict[str, Any], settings: Settings, now: float | None = None) -> bool:
    """True once the entry's ZIP is CACHE_TIME old (at least a second)."""
    return (now or time.time()) - float(entry["completed_at"]) >= max(settings.cache_time, 1)


async def is_fresh(entry: dict[str, Any] | None, settings: Settings, store: Store) -> bool:
    """True when the entry's ZIP is younger than CACHE_TIME and still in the store."""
    if not entry or is_expired(entry, settings):
        return False
    try:
        return await store.stat(entry["zip_file_name"]) is not None
    except Exception as exc:  # an object store that fails: build again, not stop
        log.warning("could not ask the store for %s: %r", entry["zip_file_name"], exc)
        return False


def waiter(env: Envelope) -> dict[str, Any]:
    """What a request waiting for an identical build needs to be completed or failed later."""
    p = env.payload
    assert isinstance(p, PackageRequested)
    return {
        "job_id": env.job_id,
        "resource_id": p.resource_id,
        **requester_fields(p),
        "ckan_host": p.ckan_host,
        "doi": str(p.request.get("doi") or ""),
    }


def reused(cache_key: str, who: dict[str, Any], entry: dict[str, Any]) -> PackageCompleted:
    """The completion of a job served from the cache; `finished_at` is when the reused ZIP was built."""
    return PackageCompleted(
        cache_key=cache_key,
        resource_id=who["resource_id"],
        ckan_host=who["ckan_host"],
        **requester_fields(who),
        doi=who["doi"],
        lane="cache",
        zip_file_name=entry["zip_file_name"],
        size=entry["size"],
        sha256=entry["sha256"],
        rows=entry["rows"],
        started_at=entry["finished_at"],
        finished_at=entry["finished_at"],
        cached_from=entry["job_id"],
    )


def shared_failure(cache_key: str, who: dict[str, Any], failed: PackageFailed) -> PackageFailed:
    """The failure of a job that waited for an identical build which failed."""
    return PackageFailed(
        cache_key=cache_key,
        resource_id=who["resource_id"],
        ckan_host=who["ckan_host"],
        **requester_fields(who),
        error=failed.error,
        error_type=failed.error_type,
    )


async def remove_zip(store: Store, name: str) -> None:
    """Remove a package from the store; an object store that fails is logged, not raised: an exception would
    stop the steward, and the stale sweep (or the bucket's lifecycle rule) removes it later."""
    try:
        await store.remove(name)
    except Exception as exc:  # any client error: the steward must go on
        log.warning("could not remove %s from the store yet: %r", name, exc)


async def sweep_partial_files(store: Store, settings: Settings) -> None:
    """Remove partial files a killed build left behind (see PartialArea.sweep_partials)."""
    removed = await asyncio.to_thread(store.sweep_partials, settings.partial_max_age)
    if removed:
        log.warning("removed %d partial file(s) left by builds that were killed", len(removed))


async def sweep_stale_packages(store: Store, settings: Settings) -> None:
    """Remove ZIPs past CACHE_TIME + STALE_MARGIN that no expiry removed (see store.remove_stale)."""
    try:
        removed = await remove_stale(store, settings.cache_time + STALE_MARGIN)
    except Exception as exc:  # a timer that raises stops the worker: the next sweep tries again
        log.warning("could not sweep the store for stale packages: %r", exc)
        return
    if removed:
        log.warning("removed %d package(s) past CACHE_TIME that no expiry had removed", len(removed))
