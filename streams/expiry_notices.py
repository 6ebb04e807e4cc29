"""Expiry notices, the steward's side: which jobs to remind that their download expires, and when.

With EXPIRY_NOTICE_BEFORE set, the steward of partition p keeps a `notices` table (job id -> what the
reminder needs) for every job completed with a link (built, or answered from the cache) whose package
outlives that notice time. The janitor appends one `ExpiryNoticeDue` per due job; the mailer sends it.

Once per job, with several workers and across restarts: only the partition's owner appends, only once it
has read the partition to (nearly) its end (`caught_up`), so a notice appended before a restart or by the
previous owner is read back first; reading it back removes the job from the table; and until then the
owner remembers what it appended (`Reminders.noticing`). Should a notice still be appended twice (the
last records of a partition being taken over), the mailer sends one email: it settles notices by job.
Tables change only while an event is handled (Faust's rule), so entries left behind (their package cleared
or rebuilt) are dropped when their expiry has passed, the next time the steward reads their partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import KafkaError

from packager.adapters.kafka_log import iso_ms
from packager.adapters.store import Store
from packager.core.logs import bind_job
from packager.core.settings import Settings
from packager.domain.events import (
    CacheCleared,
    Envelope,
    ExpiryNoticeDue,
    PackageCompleted,
    requester_fields,
)

log = logging.getLogger(__name__)

PRUNE_EVERY = 60.0  # seconds between two sweeps of a partition's entries whose expiry has passed

Table = MutableMapping[str, Any]


@dataclass(slots=True)
class Reminders:
    """What one steward keeps in memory of the notices: those appended and not yet read back, and when
    each partition's old entries were last dropped."""

    noticing: set[str] = field(default_factory=set)
    pruned: dict[int, float] = field(default_factory=dict)


def notices_table(app: faust.App, settings: Settings) -> Table:
    """The `notices` table (co-partitioned with the events topic), made only with EXPIRY_NOTICE_BEFORE
    set: a deployment without notices keeps no changelog topic for it."""
    if not settings.expiry_notice_before:
        return {}
    table: Table = app.Table("notices", default=None, partitions=settings.partitions)
    return table


def notice_entry(
    env: Envelope, cached: dict[str, Any] | None, partition: int, settings: Settings, now: float
) -> dict[str, Any] | None:
    """What the reminder of a completed job needs, or None when none is due (no package kept long enough)."""
    p = env.payload
    if not isinstance(p, PackageCompleted) or not cached or cached["zip_file_name"] != p.zip_file_name:
        return None
    expires = float(cached["completed_at"]) + max(settings.cache_time, 1)
    if expires - settings.expiry_notice_before <= now:
        return None  # kept for less than the notice time (or read again after the notice was due)
    return {
        "key": env.cache_key,
        "partition": partition,
        "expires": expires,
        "resource_id": p.resource_id,
        "ckan_host": p.ckan_host,
        "zip_file_name": p.zip_file_name,
        **_addressee(p),
    }


def track(
    notices: Table,
    reminders: Reminders,
    env: Envelope,
    cached: dict[str, Any] | None,
    partition: int,
    settings: Settings,
) -> None:
    """Keep the `notices` table in step with an event of `partition` the steward read (`cached`: the
    cache entry of its key, after the event)."""
    now = time.time()
    p = env.payload
    if isinstance(p, PackageCompleted):
        entry = notice_entry(env, cached, partition, settings, now)
        if entry is not None and notices.get(env.job_id) is None:
            notices[env.job_id] = entry
    elif isinstance(p, ExpiryNoticeDue):
        reminders.noticing.discard(env.job_id)
        if env.job_id in notices:
            del notices[env.job_id]
    elif isinstance(p, CacheCleared) and p.partition == partition:
        for job_id, entry in list(notices.items()):
            if entry and entry["partition"] == partition:
                del notices[job_id]
    if now - reminders.pruned.get(partition, 0.0) >= PRUNE_EVERY:
        reminders.pruned[partition] = now
        for job_id, entry in list(notices.items()):
            if entry and entry["partition"] == partition and entry["expires"] <= now:
                del notices[job_id]


async def append_due(
    notices: Table,
    reminders: Reminders,
    cache: Table,
    store: Store,
    assigned: set[int],
    caught_up: Callable[[set[int]], Awaitable[set[int]]],
    publish: Callable[[str, str, ExpiryNoticeDue], Awaitable[Any]],  # (job id, key, event)
    settings: Settings,
) -> None:
    """Append `ExpiryNoticeDue` for every job of this worker's partitions whose reminder is due."""
    now = time.time()
    due = {
        job_id: entry
        for job_id, entry in list(notices.items())
        if entry
        and entry["partition"] in assigned
        and job_id not in reminders.noticing
        and entry["expires"] - settings.expiry_notice_before <= now < entry["expires"]
    }
    current = await caught_up({entry["partition"] for entry in due.values()}) if due else set()
    for job_id, entry in due.items():
        if entry["partition"] not in current:
            continue  # not read to its end yet: a notice appended earlier may be further on
        cached = cache.get(entry["key"])
        name = entry["zip_file_name"]
        if not cached or cached["zip_file_name"] != name:
            continue  # cleared or built again since: this link no longer works, nothing to remind of
        try:
            stored = await store.stat(name)
        except Exception as exc:  # an object store away: a timer that raises stops the worker
            log.warning("the store cannot say whether %s is still there: %r", name, exc)
            break
        if stored is None:
            continue  # removed from the store: nothing to remind of
        bind_job(job_id)
        notice = ExpiryNoticeDue(
            cache_key=entry["key"],
            resource_id=entry["resource_id"],
            ckan_host=entry["ckan_host"],
            zip_file_name=name,
            expires_at=iso_ms(int(entry["expires"] * 1000)),
            **_addressee(entry),
        )
        try:
            await publish(job_id, entry["key"], notice)
        except KafkaError as exc:  # a timer that raises stops the worker: the next sweep tries again
            log.warning("ExpiryNoticeDue not appended yet: %r", exc)
            break
        reminders.noticing.add(job_id)
        log.info("the download expires at %s: its requester is reminded", notice.expires_at)
    bind_job(None)


def _addressee(source: Any) -> dict[str, str]:
    """Who a reminder goes to: the requester fields without the webhook's callback (no webhook is sent
    about a reminder)."""
    fields = requester_fields(source)
    fields.pop("callback_sealed", None)
    return fields
