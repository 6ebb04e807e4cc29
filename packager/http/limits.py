"""Fair limits at the ingress: how many jobs one requester or one resource may have in progress, and how
many requests one requester may make in an hour (docs/http-api.md#fair-limits).

Checked before anything is sealed or appended: a refused request gets 429 with `Retry-After`, and leaves
nothing in any topic. Requesters are counted by their pseudonym (the address is never looked up).

What is counted comes from the views (`active_jobs`, `stat_requests`), which trail the log by the
projector's lag. To close that window, each ingress also counts the requests it accepted itself and the
views do not show yet: the views' positions, read in the same snapshot as the counts, say which (a request
is in them once its offset is below its partition's position), so nothing is counted twice or missed, and
a request is forgotten as soon as the views show it. The check and the reservation happen under a lock
per requester and per resource (of the limits that are set), so concurrent requests to one ingress cannot
slip past a limit together, while requests of different requesters for different resources do not wait
for each other's queries. Requests accepted by *other* ingress processes within the projector's lag are
not seen: with several ingresses a burst can overshoot by what the others accepted in that time. When the
views cannot be read, only this ingress's own count applies (the request is not refused for it: limits are
about fairness, and downloads must not depend on the projector being up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from packager.adapters.kafka_log import Appended
from packager.adapters.view_queries import Usage, UsageAsked
from packager.adapters.viewdb import ViewsUnavailable
from packager.adapters.viewreads import ReadViews
from packager.core.errors import TooManyRequestsError
from packager.core.settings import Settings

log = logging.getLogger(__name__)

HOUR = 3600.0
# When a job in progress ends is not known: a minute is when asking again is worth a try.
ACTIVE_RETRY_AFTER = 60


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request this ingress accepted (or is accepting): counted until the views show it."""

    job_id: str
    who: str
    resource_id: str
    at: float
    # (topic, partition, offset) of its PackageRequested once the log took it: the views show it when
    # their position on that partition is past the offset.
    where: tuple[str, int, int] | None = None

    def shown_by(self, positions: dict[tuple[str, int], int]) -> bool:
        """True when views at these positions have folded this request."""
        return self.where is not None and self.where[2] < positions.get(self.where[:2], 0)


def limits_on(settings: Settings) -> bool:
    """True when any fair limit is set."""
    return bool(
        settings.max_active_jobs_per_requester
        or settings.max_requests_per_hour_per_requester
        or settings.max_active_jobs_per_resource
    )


class KeyLocks:
    """asyncio locks by name, made when first wanted and dropped when nobody holds or awaits them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def held(self, key: str) -> bool:
        """True while some task holds the lock of `key`."""
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of every key; taken in sorted order, so two holders never wait for each other."""
        ordered = sorted(set(keys))
        locks = []
        for key in ordered:  # counted before waiting, so a lock awaited is not dropped
            lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
            self._locks[key] = (lock, users + 1)
            locks.append(lock)
        taken: list[asyncio.Lock] = []
        try:
            for lock in locks:
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()
            for key in ordered:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class Limits:
    """One ingress's enforcement of the fair limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._locks = KeyLocks()
        # Requests accepted here that the views did not show yet, oldest first, and indexes of them.
        self._accepted: dict[str, Accepted] = {}
        self._by_who: dict[str, set[str]] = {}
        self._by_resource: dict[str, set[str]] = {}
        # (topic, partition) -> (offset, job id) of the appended ones, smallest offset first.
        self._offsets: dict[tuple[str, int], list[tuple[int, str]]] = {}

    def _keys(self, who: str, resource_id: str) -> list[str]:
        """The locks a request of `who` for `resource_id` is checked under: those of the limits set."""
        s = self.settings
        keys = []
        if s.max_active_jobs_per_requester or s.max_requests_per_hour_per_requester:
            keys.append(f"who:{who}")
        if s.max_active_jobs_per_resource:
            keys.append(f"resource:{resource_id}")
        return keys

    async def admit(self, views: ReadViews | None, job_id: str, who: str, resource_id: str) -> None:
        """Reserve a place for the job, or raise TooManyRequestsError (nothing reserved then)."""
        if not limits_on(self.settings):
            return
        keys = self._keys(who, resource_id)
        async with self._locks.hold(keys):
            now = time.time()
            s = self.settings
            asked = UsageAsked(
                who,
                resource_id,
                now - HOUR,
                s.max_active_jobs_per_requester,
                s.max_requests_per_hour_per_requester,
                s.max_active_jobs_per_resource,
                unseen_at_most=len(self._by_who.get(who, ())),
            )
            usage = await self._usage(views, asked)
            self._forget(usage.positions, now, keys)
            mine = self._by_who.get(who, set()) | self._by_resource.get(resource_id, set())
            unseen = [a for j in mine if not (a := self._accepted[j]).shown_by(usage.positions)]
            check(s, usage, unseen, who, resource_id, now)
            self._accepted[job_id] = Accepted(job_id, who, resource_id, now)
            self._by_who.setdefault(who, set()).add(job_id)
            self._by_resource.setdefault(resource_id, set()).add(job_id)

    def appended(self, job_id: str, topic: str, where: Appended | None) -> None:
        """Note where the log put a reserved request, so that it is forgotten once the views show it."""
        accepted = self._accepted.get(job_id)
        if accepted is None or where is None:
            return  # an hour old already, or a log that does not say: counted until an hour old
        self._accepted[job_id] = dataclasses.replace(accepted, where=(topic, where.partition, where.offset))
        heapq.heappush(self._offsets.setdefault((topic, where.partition), []), (where.offset, job_id))

    def withdraw(self, job_id: str) -> None:
        """Forget a reservation: its request is in the views now, or the log did not take it."""
        accepted = self._accepted.pop(job_id, None)
        if accepted is None:
            return
        for index, key in ((self._by_who, accepted.who), (self._by_resource, accepted.resource_id)):
            jobs = index.get(key)
            if jobs is not None:
                jobs.discard(job_id)
                if not jobs:
                    del index[key]

    @property
    def pending(self) -> int:
        """Requests accepted here that are still counted on top of the views."""
        return len(self._accepted)

    def _forget(self, positions: dict[tuple[str, int], int], now: float, held: list[str]) -> None:
        """Forget the requests an hour old, and those the views show at `positions`; but none another check
        is counting right now: that check's snapshot may be older and not show it (its locks say which)."""

        def free(accepted: Accepted) -> bool:
            keys = self._keys(accepted.who, accepted.resource_id)
            return all(key in held or not self._locks.held(key) for key in keys)

        while self._accepted and (first := next(iter(self._accepted.values()))).at < now - HOUR:
            if not free(first):
                break
            self.withdraw(first.job_id)  # out of every window
        for where, heap in self._offsets.items():
            position = positions.get(where, 0)
            while heap and heap[0][0] < position:
                accepted = self._accepted.get(heap[0][1])
                if accepted is not None and not free(accepted):
                    break  # the next check of its requester or resource forgets it
                heapq.heappop(heap)
                if accepted is not None:
                    self.withdraw(accepted.job_id)
        if sum(map(len, self._offsets.values())) > 2 * len(self._accepted) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop the offsets of requests forgotten an hour after they were made (views that stopped)."""
        self._offsets = {}
        for accepted in self._accepted.values():
            if accepted.where is not None:
                topic, partition, offset = accepted.where
                heap = self._offsets.setdefault((topic, partition), [])
                heapq.heappush(heap, (offset, accepted.job_id))

    async def _usage(self, views: ReadViews | None, asked: UsageAsked) -> Usage:
        if views is not None:
            try:
                return await views.usage(asked)
            except ViewsUnavailable as exc:
                log.warning("fair limits: the views cannot be read (%s); counting this ingress's only", exc)
        return Usage(active=0, resource_active=0, requests=0, recent=[], positions={})


def check(
    settings: Settings, usage: Usage, unseen: list[Accepted], who: str, resource_id: str, now: float
) -> None:
    """Raise TooManyRequestsError when one more request would pass a limit; the message says when to retry.

    `unseen`: requests accepted here that the views do not show yet (each is in progress, and recent).
    """
    refusals: list[tuple[int, str]] = []
    most = settings.max_active_jobs_per_requester
    active = usage.active + sum(1 for a in unseen if a.who == who)
    if most and active >= most:
        refusals.append(
            (
                ACTIVE_RETRY_AFTER,
                f"You already have {_downloads(active)} being prepared, the most this service prepares at "
                "once for one person. Each is emailed when ready; please ask again when one has arrived "
                "(try again in a few minutes).",
            )
        )
    most = settings.max_requests_per_hour_per_requester
    hours = [a.at for a in unseen if a.who == who and a.at >= now - HOUR]
    asked = usage.requests + len(hours)
    if most and asked >= most:
        # Asking succeeds again once enough of the hour's requests are more than an hour old: the
        # views' newest `most` and the unseen ones hold the hour's newest `most`.
        times = sorted([*usage.recent, *hours])
        frees_at = times[len(times) - most] + HOUR
        wait = max(1, math.ceil(frees_at - now))
        refusals.append(
            (
                wait,
                f"You have asked for {_downloads(asked)} in the last hour, the most this service takes "
                f"from one person in an hour. Please try again after {_clock(frees_at)} UTC "
                f"(in {_duration(wait)}).",
            )
        )
    most = settings.max_active_jobs_per_resource
    resource_active = usage.resource_active + sum(1 for a in unseen if a.resource_id == resource_id)
    if most and resource_active >= most:
        refusals.append(
            (
                ACTIVE_RETRY_AFTER,
                f"This resource already has {_downloads(resource_active)} being prepared, the most this "
                "service prepares at once for one resource. Please try again in a few minutes.",
            )
        )
    if refusals:
        wait, message = max(refusals)
        raise TooManyRequestsError(message, retry_after=wait)


def _downloads(count: int) -> str:
    return "1 download" if count == 1 else f"{count} downloads"


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M")


def _duration(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return "1 minute" if minutes <= 1 else f"{minutes} minutes"
