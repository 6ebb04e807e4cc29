"""Fold of one job's lifecycle events into its current state.

Agents keep this state in Faust tables (partition-local, changelog-backed) to make their effects
idempotent: a redelivered request is not packaged twice, a redelivered terminal event is not emailed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from packager.domain.events import (
    CancelRequested,
    EmailFailed,
    EmailSent,
    Envelope,
    ExpiryNoticeDue,
    LeaseExpired,
    PackageBuilt,
    PackageCancelled,
    PackageCompleted,
    PackageFailed,
    PackageProgress,
    PackageQueued,
    PackageReleased,
    PackageRequested,
    PackageStarted,
    RequestAbandoned,
)

QUEUED, RUNNING, COMPLETED, FAILED, ABANDONED = "queued", "running", "completed", "failed", "abandoned"
CANCELLED = "cancelled"


# Not frozen, though never changed in place (`evolve` returns a copy): a frozen dataclass's __init__ sets
# each of the 19 fields through object.__setattr__, which made it the largest cost of the projector's fold
# (4.5 against 1.9 microseconds per event).
@dataclass(slots=True)
class JobState:
    """What is known about one job (treat as immutable: `evolve` makes changed copies)."""

    job_id: str
    state: str = QUEUED
    kind: str = ""
    resource_id: str = ""
    lane: str = ""
    attempt: int = 1  # the build in progress: 2 and more after a lost or released build
    rows_done: int = 0
    rows_total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    zip_file_name: str = ""
    size: int | None = None
    error: str = ""
    emailed: bool = False
    email_error: str = ""
    requested_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    updated_at: str = ""

    @property
    def percent(self) -> float | None:
        """Progress in percent: by rows when their total is known, else by bytes; 100 once completed."""
        if self.state == COMPLETED:
            return 100.0
        if self.rows_total:
            return round(min(100.0, 100.0 * self.rows_done / self.rows_total), 1)
        if self.bytes_total:
            return round(min(100.0, 100.0 * self.bytes_done / self.bytes_total), 1)
        return None

    @property
    def terminal(self) -> bool:
        """True once the job completed, failed or was cancelled (or abandoned: see RequestAbandoned)."""
        return self.state in (COMPLETED, FAILED, ABANDONED, CANCELLED)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, as stored in tables (every field is a scalar, so no deep copy is needed)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def evolve(self, **changes: Any) -> JobState:
        """A copy with `changes` applied (what `dataclasses.replace` does, several times faster)."""
        values = list(_VALUES(self))
        for name, value in changes.items():
            values[_INDEX[name]] = value
        return JobState(*values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobState:
        """Inverse of `to_dict`."""
        return cls(**data)


_FIELDS = tuple(f.name for f in fields(JobState))
_VALUES = attrgetter(*_FIELDS)  # every field's value at once, read in C
_INDEX = {name: i for i, name in enumerate(_FIELDS)}


def apply(state: JobState | None, event: Envelope) -> JobState:
    """Fold one event into the job's state. Terminal states are never left; replays are harmless."""
    current = state or JobState(job_id=event.job_id)
    p = event.payload
    # The latest time seen, whatever order the requests and events topics were read in.
    latest = max(current.updated_at, event.occurred_at)

    def changed(**changes: Any) -> JobState:
        return current.evolve(updated_at=latest, **changes)

    match p:
        case PackageRequested():
            return changed(requested_at=event.occurred_at, kind=p.kind, resource_id=p.resource_id)
        case PackageQueued(lane=lane, attempt=attempt):
            if current.terminal:
                return changed()
            if attempt > current.attempt:  # a new build: its progress starts again
                return changed(state=QUEUED, lane=lane, attempt=attempt, rows_done=0, bytes_done=0)
            return changed(lane=lane)
        case PackageStarted(lane=lane, attempt=attempt):
            if current.terminal or attempt < current.attempt:
                return current  # finished, or a build that already lost its lease
            return changed(state=RUNNING, lane=lane, attempt=attempt, started_at=event.occurred_at)
        case PackageProgress():
            if current.terminal or p.attempt < current.attempt:
                return current
            return changed(
                rows_done=p.rows_done,
                rows_total=p.rows_total,
                bytes_done=p.bytes_done,
                bytes_total=p.bytes_total,
            )
        case PackageCompleted():
            if current.terminal:
                return current
            return changed(
                state=COMPLETED,
                lane=p.lane,
                zip_file_name=p.zip_file_name,
                size=p.size,
                rows_done=p.rows if p.rows is not None else current.rows_done,
                finished_at=event.occurred_at,
            )
        case PackageFailed():
            if current.terminal:
                return current
            return changed(state=FAILED, error=p.error, finished_at=event.occurred_at)
        case RequestAbandoned():
            if current.terminal:
                return current
            error = "not accepted: the ingress answered 503 before the broker stored the request"
            return changed(state=ABANDONED, error=error, finished_at=event.occurred_at)
        case PackageCancelled():
            if current.terminal:
                return current
            return changed(state=CANCELLED, error=f"cancelled by the {p.by}", finished_at=event.occurred_at)
        case CancelRequested():
            return current  # the job's steward decides; its outcome is the next terminal event
        case PackageBuilt() | LeaseExpired() | PackageReleased():
            return current if current.terminal else changed()
        case EmailSent() | EmailFailed() if p.about == ExpiryNoticeDue.TYPE:
            return changed()  # the reminder before expiry: the page tells of the completion email
        case EmailSent():
            return changed(emailed=True, email_error="")
        case EmailFailed():
            return changed(email_error=p.error)
    return current
