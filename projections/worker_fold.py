"""Fold of the log into views of the worker's own state: its cache index, its builds in flight, its waiters.

The worker keeps these in Faust tables (`streams.steward`), written by hand in its agents and stamped with
its wall clock. These views are the same state as the log tells it, folded on event time, so that `replay
verify` can rebuild and check them like every other view:

- `cache_index` (one row per cache key): the package that serves hits. Written, like the steward's `cache`
  table, by a PackageCompleted that built its ZIP (not one served from the cache), removed by the builder's
  PackageExpired and by a CacheCleared of the events partition the completion was read from.
  `completed_at` is the completion's `occurred_at`; the steward stamps `time.time()` when it reads the
  event, a few milliseconds later (longer when it lags), and its entry expires that much later than this
  view says. `expires_at` is `completed_at` plus the lifetime the worker applies (`is_expired` in
  `streams.cache`: max(CACHE_TIME, 1 second)): from then on the worker no longer serves hits from the entry,
  though it stays in the index (and here) until the janitor's PackageExpired is read.
- `inflight_builds` (one row per cache key): the build of the key under way, from its PackageQueued to its
  job's terminal event, with the lease as `streams.leases.apply` folds it (attempt, state, worker, deadline
  from PackageStarted's `lease_until` and each PackageProgress plus LEASE_TIME). The planner marks a key in
  flight when it starts planning the request, before it asks the portal for the lane and appends the
  PackageQueued (the log's first sign of it, up to the planner's CKAN timeout later).
- `waiting_requests` (one row per job): requests accepted and not yet planned, built or ended, that is
  requested with no PackageQueued and no terminal event yet. Those of a key with a build in flight by
  another job are the worker's waiters (the `waiters` SQL view joins the two); the rest are requests the
  planner has not reached yet, or is answering from the cache. The planner decides "shared" in the order
  it reads requests and events, which the log does not record; a request stays waiting here until its own
  terminal event, as the worker's waiter does.

Every event of one cache key is in one partition of each topic, so the cache index and the builds in
flight come from one ordered sequence; whether a request is still waiting depends only on which of its
job's events were read (`projections.jobs` makes that independent of the order the two topics were read
in). So the live views and a rebuild to the same positions agree. No wall clock is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from packager.domain.events import (
    TERMINAL_TYPES,
    CacheCleared,
    Envelope,
    LeaseExpired,
    PackageBuilt,
    PackageCompleted,
    PackageExpired,
    PackageProgress,
    PackageQueued,
    PackageReleased,
    PackageRequested,
    PackageStarted,
)
from projections.jobs import JobState

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The states of a build's lease, as `streams.leases` names them.
QUEUED, BUILDING, LOST, RELEASED, BUILT = "queued", "building", "lost", "released", "built"


@dataclass(frozen=True, slots=True)
class WorkerParameters:
    """What the worker's folds need beyond the events: the settings the worker decides with."""

    cache_time: int = 60 * 60 * 24  # CACHE_TIME, seconds
    lease_time: float = 30.0  # LEASE_TIME, seconds

    def to_dict(self) -> dict[str, float]:
        """As recorded in the views' `meta` (row `worker_fold`)."""
        return {"cache_time": self.cache_time, "lease_time": self.lease_time}


# The rows are named tuples: a row of the database is one already, and `_replace` is several times faster than
# `dataclasses.replace` (the projector folds tens of thousands of events a second).
class CacheEntry(NamedTuple):
    """One row of `cache_index`."""

    cache_key: str
    job_id: str  # the job that built the ZIP
    zip_file_name: str
    size: int
    sha256: str
    rows: int | None
    completed_at: str
    expires_at: str
    part: int  # the events partition its completion was read from (what a CacheCleared empties)


class Build(NamedTuple):
    """One row of `inflight_builds`: a cache key's build under way and its lease."""

    cache_key: str
    job_id: str
    lane: str
    attempt: int
    state: str
    worker: str = ""
    queued_at: str = ""
    started_at: str = ""
    lease_carried: str = ""  # PackageStarted's `lease_until` ("" when it carried none)
    heartbeat_at: str = ""  # the latest PackageProgress of the attempt while building
    lease_until: str = ""  # the deadline the watchdog applies ("" until the build starts)
    lost: int = 0  # builds of the job lost so far


class Waiting(NamedTuple):
    """One row of `waiting_requests`."""

    job_id: str
    cache_key: str
    requested_at: str


@dataclass(slots=True)
class WorkerNeeds:
    """The rows a batch reads: by cache key, and every cache entry of the partitions it clears."""

    cache_keys: set[str] = field(default_factory=set)
    cleared: set[int] = field(default_factory=set)


@dataclass(slots=True)
class WorkerRows:
    """The rows a batch depends on, changed in place as it is folded; `touched` says which to write."""

    cache: dict[str, CacheEntry] = field(default_factory=dict)
    inflight: dict[str, Build] = field(default_factory=dict)
    waiting: dict[str, Waiting | None] = field(default_factory=dict)  # job id -> row (None: removed)
    touched_cache: set[str] = field(default_factory=set)
    touched_inflight: set[str] = field(default_factory=set)
    # The keys the views held rows of before the batch: a row made and removed within it is not written.
    stored_cache: set[str] = field(default_factory=set)
    stored_inflight: set[str] = field(default_factory=set)


def worker_needs(events: Sequence[Envelope], parts: Sequence[int]) -> WorkerNeeds:
    """The rows `fold_worker` reads for these events (`parts`: the partition each was read from)."""
    wanted = WorkerNeeds()
    for event, part in zip(events, parts, strict=True):
        p = event.payload
        if isinstance(p, CacheCleared):
            if p.partition == part:
                wanted.cleared.add(part)
        elif event.type in _KEYED:
            wanted.cache_keys.add(event.cache_key)
    return wanted


# The events that can change a key's cache entry or build in flight (an email, say, changes neither).
_KEYED = frozenset(
    {
        *TERMINAL_TYPES,
        PackageExpired.TYPE,
        PackageQueued.TYPE,
        PackageStarted.TYPE,
        PackageProgress.TYPE,
        LeaseExpired.TYPE,
        PackageReleased.TYPE,
        PackageBuilt.TYPE,
    }
)


def fold_worker(
    rows: WorkerRows,
    event: Envelope,
    part: int,
    before: JobState | None,
    after: JobState,
    params: WorkerParameters,
) -> None:
    """Fold one event, read from partition `part`, into the rows; `before`/`after`: its job's state."""
    kind = event.type
    # Only a request starts a job's wait (nothing else sets `requested_at`); any event may end it.
    if kind == PackageRequested.TYPE:
        if _pending(after) and not _pending(before):
            rows.waiting[event.job_id] = Waiting(event.job_id, event.cache_key, after.requested_at)
        return
    # A wait that started in this batch leaves nothing to remove from the views; an older one's row goes.
    # (`before.lane` first: most events are of jobs already planned, and this runs for each of them.)
    if (
        before is not None
        and not before.lane
        and _pending(before)
        and not _pending(after)
        and rows.waiting.pop(event.job_id, None) is None
    ):
        rows.waiting[event.job_id] = None
    p = event.payload
    if kind not in _KEYED and kind != CacheCleared.TYPE:
        return  # an email, an erasure: nothing of the cache or the builds changes
    key = event.cache_key
    if isinstance(p, PackageCompleted) and not p.cached_from:
        # `expires_at` is filled in by `finish_worker`, once per entry and batch.
        rows.cache[key] = CacheEntry(
            key, event.job_id, p.zip_file_name, p.size, p.sha256, p.rows, event.occurred_at, "", part
        )
        rows.touched_cache.add(key)
    elif isinstance(p, CacheCleared):
        if p.partition == part:  # the steward of that partition empties its own entries only
            for cached in [k for k, entry in rows.cache.items() if entry.part == part]:
                del rows.cache[cached]
                rows.touched_cache.add(cached)
    elif isinstance(p, PackageExpired):
        entry = rows.cache.get(key)
        if entry is not None and entry.job_id == event.job_id:
            del rows.cache[key]
            rows.touched_cache.add(key)
    build = rows.inflight.get(key)
    if build is None and kind != PackageQueued.TYPE:
        return  # only a PackageQueued puts a key in flight
    changed = _fold_build(build, event, before, params)
    if changed is not build:
        if changed is None:
            del rows.inflight[key]
        else:
            rows.inflight[key] = changed
        rows.touched_inflight.add(key)


def finish_worker(rows: WorkerRows, params: WorkerParameters) -> None:
    """Fill in the derived columns (expiries, lease deadlines) of the rows a batch changed: computed once per
    row and batch rather than at every heartbeat."""
    for key in rows.touched_cache:
        entry = rows.cache.get(key)
        if entry is not None:
            rows.cache[key] = entry._replace(expires_at=expiry(entry.completed_at, params))
    for key in rows.touched_inflight:
        build = rows.inflight.get(key)
        if build is not None:
            rows.inflight[key] = build._replace(lease_until=lease_deadline(build, params))


def _pending(job: JobState | None) -> bool:
    """Requested, and neither planned (no lane yet) nor ended."""
    return job is not None and not job.lane and bool(job.requested_at) and not job.terminal


def _fold_build(
    build: Build | None, event: Envelope, job: JobState | None, params: WorkerParameters
) -> Build | None:
    """The key's build in flight after `event` (`job`: the event's job before it); `build` when unchanged."""
    p = event.payload
    if event.type in TERMINAL_TYPES:
        return None if build is not None and build.job_id == event.job_id else build
    if isinstance(p, PackageQueued):
        if job is not None and job.terminal:
            return build  # queued again after it ended (a record read again): nothing is in flight
        if build is None or build.job_id != event.job_id:
            return Build(
                event.cache_key, event.job_id, p.lane, p.attempt, QUEUED, queued_at=event.occurred_at
            )
        if p.attempt > build.attempt:  # the same job built again: its lease starts again, lost builds kept
            return Build(
                event.cache_key, event.job_id, p.lane, p.attempt, QUEUED,
                queued_at=event.occurred_at, lost=build.lost,
            )  # fmt: skip
        return build
    if build is None or build.job_id != event.job_id or getattr(p, "attempt", None) != build.attempt:
        return build
    # `lease_until` is filled in by `finish_worker`, once per build and batch.
    match p:
        case PackageStarted(worker=worker, lease_until=carried) if build.state in (QUEUED, BUILDING):
            # A start sets the deadline afresh (`leases.apply`): earlier heartbeats no longer count.
            return build._replace(
                state=BUILDING,
                worker=worker,
                started_at=event.occurred_at,
                lease_carried=carried,
                heartbeat_at="",
            )
        case PackageProgress() if build.state == BUILDING:
            return build._replace(heartbeat_at=max(build.heartbeat_at, event.occurred_at))
        case LeaseExpired(lease_until=seen):
            # `streams.leases.expires`: with no deadline, a queued attempt passed in its lane; with one, a
            # silent build, unless a heartbeat read since moved its deadline past the one the watchdog saw.
            if not seen:
                lost = build.state == QUEUED
            else:
                lost = build.state == BUILDING and not _deadline_ms(build, params) > _ms(seen) + 1
            return build._replace(state=LOST, lost=build.lost + 1) if lost else build
        case PackageReleased() if build.state in (QUEUED, BUILDING):
            return build._replace(state=RELEASED)
        case PackageBuilt() if build.state in (QUEUED, BUILDING):
            return build._replace(state=BUILT)
    return build


def expiry(completed_at: str, params: WorkerParameters) -> str:
    """When a package completed at `completed_at` stops serving hits (`streams.cache.is_expired`)."""
    moment = datetime.fromisoformat(completed_at.replace("Z", "+00:00")).astimezone(UTC)
    later = moment + timedelta(seconds=max(params.cache_time, 1))
    return later.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lease_deadline(build: Build, params: WorkerParameters) -> str:
    """The lease's deadline as `streams.leases.apply` folds it: PackageStarted's `lease_until` (or its time
    plus LEASE_TIME), moved on by each heartbeat to its time plus LEASE_TIME; "" before the build started."""
    return _iso(_deadline_ms(build, params)) if build.started_at else ""


def _deadline_ms(build: Build, params: WorkerParameters) -> int:
    lease = round(params.lease_time * 1000)
    deadline = _ms(build.lease_carried) if build.lease_carried else _ms(build.started_at) + lease
    if build.heartbeat_at:
        deadline = max(deadline, _ms(build.heartbeat_at) + lease)
    return deadline


def _ms(timestamp: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp as events carry them."""
    return round(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    """The log's own format (UTC, milliseconds, `Z`), as `occurred_at` is written."""
    moment = _EPOCH + timedelta(milliseconds=ms)  # exact: no float on the way
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
