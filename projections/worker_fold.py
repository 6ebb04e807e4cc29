"""Fold of the log into views of the worker's own state: its cache index, its builds in flight, its waiters.

The worker keeps these in Faust tables (`streams.steward`), written by hand in its agents and stamped with
its wall clock. These views are the same state as the log tells it, folded on event time, so that `replay
verify` can rebuild and check them like every other view:

- `cache_index` (one row per cache key): the package that serves hits. Written, like the steward's `cache`
  table, by a PackageCompleted that built its ZIP (not one served from the cache), removed by the builder's
  PackageExpired and by a CacheCleared of the events partition the completion was read from.
  `completed_at` is the completion's `occurred_at`; the steward stamps `time.time()` when it reads the
  event, a few milliseconds later (longer when it lags), so a hit that the worker refuses just after
  `expires_at` may, at most by that lag, still be served. `expires_at` is `completed_at` plus the
  lifetime the worker applies (`is_expired` in `streams.cache`: max(CACHE_TIME, 1 second)): from then on
  the worker no longer serves hits from the entry, though it stays in the index (and here) until the
  janitor's PackageExpired is read.
- `inflight_builds` (one row per cache key): the build of the key under way, from its PackageQueued to its
  job's terminal event, with the lease as `streams.leases.apply` folds it (attempt, state, worker, deadline
  from PackageStarted's `lease_until` and each PackageProgress plus LEASE_TIME). The planner marks a key in
  flight when it plans the request, just before it appends the PackageQueued: the log's first sign of it.
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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

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


@dataclass(frozen=True, slots=True)
class CacheEntry:
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


@dataclass(frozen=True, slots=True)
class Build:
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


@dataclass(frozen=True, slots=True)
class Waiting:
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
    _fold_waiting(rows, event, before, after)
    p = event.payload
    if event.type not in _KEYED and not isinstance(p, CacheCleared):
        return  # a request, an email: nothing of the cache or the builds changes
    key = event.cache_key
    if isinstance(p, PackageCompleted) and not p.cached_from:
        completed = event.occurred_at
        rows.cache[key] = CacheEntry(
            key, event.job_id, p.zip_file_name, p.size, p.sha256, p.rows, completed,
            expiry(completed, params), part,
        )  # fmt: skip
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
    changed = _fold_build(build, event, before, params)
    if changed is not build:
        if changed is None:
            del rows.inflight[key]
        else:
            rows.inflight[key] = changed
        rows.touched_inflight.add(key)


def _pending(job: JobState | None) -> bool:
    """Requested, and neither planned (no lane yet) nor ended."""
    return job is not None and bool(job.requested_at) and not job.lane and not job.terminal


def _fold_waiting(rows: WorkerRows, event: Envelope, before: JobState | None, after: JobState) -> None:
    was, now = _pending(before), _pending(after)
    if now and not was:
        # A job only starts waiting with its request: nothing else sets `requested_at`.
        rows.waiting[event.job_id] = Waiting(event.job_id, event.cache_key, after.requested_at)
    elif was and not now:
        rows.waiting[event.job_id] = None


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
    match p:
        case PackageStarted(worker=worker, lease_until=carried) if build.state in (QUEUED, BUILDING):
            started = replace(
                build, state=BUILDING, worker=worker, started_at=event.occurred_at, lease_carried=carried
            )
            return replace(started, lease_until=lease_deadline(started, params))
        case PackageProgress() if build.state == BUILDING:
            beat = max(build.heartbeat_at, event.occurred_at)
            beaten = replace(build, heartbeat_at=beat)
            return replace(beaten, lease_until=lease_deadline(beaten, params))
        case LeaseExpired(lease_until=seen):
            # `streams.leases.expires`: with no deadline, a queued attempt passed in its lane; with one, a
            # silent build, unless a heartbeat read since moved its deadline past the one the watchdog saw.
            lost = (
                build.state == QUEUED if not seen else build.state == BUILDING and not _renewed(build, seen)
            )
            return replace(build, state=LOST, lost=build.lost + 1) if lost else build
        case PackageReleased() if build.state in (QUEUED, BUILDING):
            return replace(build, state=RELEASED)
        case PackageBuilt() if build.state in (QUEUED, BUILDING):
            return replace(build, state=BUILT)
    return build


def _renewed(build: Build, seen: str) -> bool:
    return bool(build.lease_until) and _ms(build.lease_until) > _ms(seen) + 1


def expiry(completed_at: str, params: WorkerParameters) -> str:
    """When a package completed at `completed_at` stops serving hits (`streams.cache.is_expired`)."""
    return _iso(_ms(completed_at) + max(params.cache_time, 1) * 1000)


def lease_deadline(build: Build, params: WorkerParameters) -> str:
    """The lease's deadline as `streams.leases.apply` folds it: PackageStarted's `lease_until` (or its time
    plus LEASE_TIME), moved on by each heartbeat to its time plus LEASE_TIME; "" before the build started."""
    if not build.started_at:
        return ""
    lease = round(params.lease_time * 1000)
    deadline = _ms(build.lease_carried) if build.lease_carried else _ms(build.started_at) + lease
    if build.heartbeat_at:
        deadline = max(deadline, _ms(build.heartbeat_at) + lease)
    return _iso(deadline)


def _ms(timestamp: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp as events carry them."""
    return round(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(ms: int) -> str:
    """The log's own format (UTC, milliseconds, `Z`), as `occurred_at` is written."""
    moment = _EPOCH + timedelta(milliseconds=ms)  # exact: no float on the way
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
