"""Fair limits at the ingress: how many jobs one requester or one resource may have in progress, and how
many requests one requester may make in an hour (docs/http-api.md#fair-limits).

Checked before anything is sealed or appended: a refused request gets 429 with `Retry-After`, and leaves
nothing in any topic. Requesters are counted by their pseudonym (the address is never looked up).

What is counted comes from the views (`active_jobs`, `stat_requests`), which trail the log by the
projector's lag. To close that window, each ingress also counts the requests it accepted itself and the
views do not show yet; the check and that reservation happen under one lock, so concurrent requests to
one ingress cannot slip past a limit together. Requests accepted by *other* ingress processes within the
projector's lag are not seen: with several ingresses a burst can overshoot by what the others accepted in
that time. When the views cannot be read, only this ingress's own count applies (the request is not
refused for it: limits are about fairness, and downloads must not depend on the projector being up).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from packager.adapters.view_queries import Usage
from packager.adapters.viewdb import ViewsUnavailable
from packager.adapters.viewreads import ReadViews
from packager.core.errors import TooManyRequestsError
from packager.core.settings import Settings

log = logging.getLogger(__name__)

HOUR = 3600.0
# When a job in progress ends is not known: a minute is when asking again is worth a try.
ACTIVE_RETRY_AFTER = 60
SWEEP_EVERY = 10.0  # seconds between two looks at which of this ingress's requests the views show


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request this ingress accepted (or is accepting): counted until the views show it."""

    job_id: str
    who: str
    resource_id: str
    at: float


def limits_on(settings: Settings) -> bool:
    """True when any fair limit is set."""
    return bool(
        settings.max_active_jobs_per_requester
        or settings.max_requests_per_hour_per_requester
        or settings.max_active_jobs_per_resource
    )


class Limits:
    """One ingress's enforcement of the fair limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = asyncio.Lock()
        # Requests accepted here that the views did not show yet, oldest first, and indexes of them.
        self._accepted: dict[str, Accepted] = {}
        self._by_who: dict[str, set[str]] = {}
        self._by_resource: dict[str, set[str]] = {}
        self._swept = 0.0

    async def admit(self, views: ReadViews | None, job_id: str, who: str, resource_id: str) -> None:
        """Reserve a place for the job, or raise TooManyRequestsError (nothing reserved then)."""
        if not limits_on(self.settings):
            return
        async with self._lock:
            now = time.time()
            while self._accepted and (first := next(iter(self._accepted.values()))).at < now - HOUR:
                self.withdraw(first.job_id)  # an hour old: out of every window
            mine = self._by_who.get(who, set()) | self._by_resource.get(resource_id, set())
            asked = set(mine)
            if now - self._swept >= SWEEP_EVERY:  # forget what the views show now, whoever asked it
                self._swept = now
                asked |= set(self._accepted)
            usage = await self._usage(views, who, resource_id, now - HOUR, asked)
            for known in usage.known:
                self.withdraw(known)
            unseen = [self._accepted[j] for j in mine if j in self._accepted]
            check(self.settings, usage, unseen, who, resource_id, now)
            self._accepted[job_id] = Accepted(job_id, who, resource_id, now)
            self._by_who.setdefault(who, set()).add(job_id)
            self._by_resource.setdefault(resource_id, set()).add(job_id)

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

    async def _usage(
        self, views: ReadViews | None, who: str, resource_id: str, since: float, pending: set[str]
    ) -> Usage:
        if views is not None:
            try:
                return await views.usage(who, resource_id, since, pending)
            except ViewsUnavailable as exc:
                log.warning("fair limits: the views cannot be read (%s); counting this ingress's only", exc)
        return Usage(active=0, resource_active=0, recent=[], known=set())


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
    times = sorted([*usage.recent, *(a.at for a in unseen if a.who == who)])
    if most and len(times) >= most:
        # Asking succeeds again once enough of the hour's requests are more than an hour old.
        frees_at = times[len(times) - most] + HOUR
        wait = max(1, math.ceil(frees_at - now))
        refusals.append(
            (
                wait,
                f"You have asked for {_downloads(len(times))} in the last hour, the most this service takes "
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
