"""Leases: who is building which job, until when, and what the job's steward does when a build is lost.

Pure functions, no Faust. The steward (the agent that owns partition p of the events topic, see
`streams.app`) folds the events of its partition into one lease per unfinished job with `apply`, asks
`decide` what an event obliges it to do, and a timer asks `expired` which builds went silent.

The lifecycle of a built job, as it appears in the log:

    PackageQueued(attempt n) -> PackageStarted(n, lease_until) -> PackageProgress(n)... -> PackageBuilt(n)
        -> the steward appends the terminal event PackageCompleted / PackageFailed

and when build n is lost (its worker died or stopped answering) or given back (a stopping worker):

    ... -> LeaseExpired(n) or PackageReleased(n) -> PackageQueued(n + 1) -> ...
    ... -> LeaseExpired(n), n lost builds in all = MAX_ATTEMPTS -> PackageFailed

A build can also be lost before it starts: its lane record was read and passed (the worker group's
committed offset is beyond it) with no PackageStarted, say by a worker frozen in the middle of it. The
watchdog then appends a LeaseExpired with no `lease_until` for the queued attempt (`stalled_in_queue`
picks the candidates; the committed offset decides), and the job is dispatched again like a lost build.

Only the steward appends a built job's terminal event, and only for the build that holds the lease, so a
build that carries on after losing it (a worker resumed after SIGSTOP) cannot end the job a second time.
Deadlines come from event time (`occurred_at`, `lease_until`): a replay of the log rebuilds the same leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from packager.domain.events import (
    EVENT_TYPES,
    NOTIFIED_TYPES,
    TERMINAL_TYPES,
    Envelope,
    Event,
    LeaseExpired,
    PackageBuilt,
    PackageCompleted,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageReleased,
    PackageRequested,
    PackageStarted,
    requester_fields,
)

QUEUED, BUILDING, LOST, RELEASED, BUILT = "queued", "building", "lost", "released", "built"


def epoch(timestamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp as events carry them."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def apply(lease: dict[str, Any] | None, env: Envelope, lease_time: float) -> dict[str, Any] | None:
    """Fold one event into the lease of its job (a plain dict, as Faust tables keep it); None: no lease."""
    p = env.payload
    if env.type in TERMINAL_TYPES:
        return None
    match p:
        case PackageQueued(lane=lane, attempt=attempt):
            if lease is None or attempt > lease["attempt"]:
                lost = lease["lost"] if lease else 0
                return {
                    "attempt": attempt,
                    "lane": lane,
                    "state": QUEUED,
                    "worker": "",
                    "until": 0.0,
                    "lost": lost,
                    "since": epoch(env.occurred_at),
                }
        case PackageStarted(attempt=attempt, worker=worker, lease_until=until):
            if lease is not None and attempt == lease["attempt"] and lease["state"] in (QUEUED, BUILDING):
                deadline = epoch(until) if until else epoch(env.occurred_at) + lease_time
                return {**lease, "state": BUILDING, "worker": worker, "until": deadline}
        case PackageProgress(attempt=attempt):
            if lease is not None and attempt == lease["attempt"] and lease["state"] == BUILDING:
                return {**lease, "until": max(lease["until"], epoch(env.occurred_at) + lease_time)}
        case LeaseExpired(attempt=attempt):
            if lease is not None and attempt == lease["attempt"] and expires(lease, p):
                return {**lease, "state": LOST, "lost": lease["lost"] + 1}
        case PackageReleased(attempt=attempt):
            if lease is not None and attempt == lease["attempt"] and lease["state"] in (QUEUED, BUILDING):
                return {**lease, "state": RELEASED}
        case PackageBuilt(attempt=attempt):
            if lease is not None and attempt == lease["attempt"] and lease["state"] in (QUEUED, BUILDING):
                return {**lease, "state": BUILT, "zip": proposed_zip(p)}
    return lease


def expires(lease: dict[str, Any], expiry: LeaseExpired) -> bool:
    """True when `expiry` ends the lease's attempt.

    With a `lease_until`, the watchdog saw a build go silent: it holds unless a heartbeat read since moved
    the deadline on. Without, it saw the queued attempt's lane record passed with no start: it holds
    unless the build's PackageStarted was read since after all (the build then goes on normally).
    """
    if not expiry.lease_until:
        return bool(lease["state"] == QUEUED)
    return lease["state"] == BUILDING and not renewed_since(lease, expiry)


def renewed_since(lease: dict[str, Any], expiry: LeaseExpired) -> bool:
    """True when a heartbeat read after the watchdog decided moved the deadline past the one it saw."""
    return bool(lease["until"] > epoch(expiry.lease_until) + 0.001)


def ended_zip(terminal: Envelope) -> str:
    """The ZIP a job ended with ("" unless it completed): the one file a late proposal must not remove."""
    p = terminal.payload
    return p.zip_file_name if isinstance(p, PackageCompleted) else ""


def proposed_zip(built: PackageBuilt) -> str:
    """The name of the ZIP a build made ("" when it failed)."""
    name = built.result.get("zip_file_name") if built.outcome == PackageCompleted.TYPE else ""
    return name if isinstance(name, str) else ""


@dataclass(frozen=True, slots=True)
class End:
    """Append the terminal event a build proposed."""

    terminal: Event


@dataclass(frozen=True, slots=True)
class Discard:
    """Drop what a build that no longer held the lease produced (its ZIP, if it made one)."""

    zip_file_name: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Put the job on `lane` again as build `attempt`."""

    lane: str
    attempt: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the job with PackageFailed: its builds were lost `lost` times."""

    lost: int


Action = End | Discard | Dispatch | GiveUp


def decide(before: dict[str, Any] | None, env: Envelope, max_attempts: int) -> Action | None:
    """What the steward must do about `env`, given the job's lease before it.

    An event read again after a crash (the lease already moved on by it) asks for the same action again:
    the steward's appends are made idempotent where they happen (`streams.app`), so nothing is lost
    between recording a decision and acting on it.
    """
    p = env.payload
    if before is None:
        # The job has ended (or never had a lease): a proposal read again may be the one that ended it,
        # so its ZIP is left alone.
        return None
    if getattr(p, "attempt", None) != before["attempt"]:
        return Discard(proposed_zip(p)) if isinstance(p, PackageBuilt) else None
    state = before["state"]
    match p:
        case PackageBuilt():
            if state in (QUEUED, BUILDING) or (state == BUILT and before.get("zip") == proposed_zip(p)):
                return End(proposed_terminal(p))
            return Discard(proposed_zip(p))
        case LeaseExpired(attempt=attempt) if state == LOST or expires(before, p):
            lost = before["lost"] + (0 if state == LOST else 1)
            return GiveUp(lost) if lost >= max_attempts else Dispatch(before["lane"], attempt + 1)
        case PackageReleased(attempt=attempt) if state in (QUEUED, BUILDING, RELEASED):
            return Dispatch(before["lane"], attempt + 1)
    return None


def proposed_terminal(built: PackageBuilt) -> Event:
    """The terminal event a build proposed; a malformed proposal becomes an internal failure."""
    cls = EVENT_TYPES.get(built.outcome)
    if built.outcome in NOTIFIED_TYPES and cls is not None:
        try:
            return cls(**built.result)
        except TypeError:
            pass
    result = built.result
    return PackageFailed(
        cache_key=built.cache_key,
        resource_id=str(result.get("resource_id", "")),
        ckan_host=str(result.get("ckan_host", "")),
        **requester_fields(result),
        error="The service failed while preparing this package.",
        error_type="InternalError",
    )


def expired(lease: dict[str, Any], now: float) -> bool:
    """True when a build holds the lease and sent no heartbeat before its deadline."""
    return lease["state"] == BUILDING and now > lease["until"]


def stalled_in_queue(lease: dict[str, Any], now: float, after: float) -> bool:
    """True when the attempt has been queued for more than `after` seconds with no build started.

    Only a candidate: a long queue is normal on a busy lane. The watchdog asks the worker group's
    committed offset whether the lane record was passed before it expires the attempt.
    """
    return lease["state"] == QUEUED and now - float(lease.get("since", 0.0)) > after


def gave_up(request: PackageRequested, lost: int) -> PackageFailed:
    """The terminal failure of a job whose builds were lost MAX_ATTEMPTS times."""
    return PackageFailed(
        cache_key=request.cache_key,
        resource_id=request.resource_id,
        ckan_host=request.ckan_host,
        **requester_fields(request),
        error=(
            f"The service lost this package's build {lost} times (its workers stopped while building it), "
            "so it stopped trying. Please ask for it again; if it keeps failing, contact the portal."
        ),
        error_type="BuildLost",
    )


def unknown_request(cache_key: str) -> PackageRequested:
    """Stands in for a request the steward no longer has (it cannot happen unless a table was lost)."""
    return PackageRequested(kind="", cache_key=cache_key, resource_id="", email="", ckan_host="", request={})
