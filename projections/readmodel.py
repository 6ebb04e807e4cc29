"""The ingress's read model: every job's state and the statistics, with the log position they reflect.

`ReadModel.apply` is the single entry point for the live consumer and the replay tool, so both run the
same folds. Positions are kept per topic partition (the next offset to read); a snapshot stores state and
positions together, so a restarted ingress resumes exactly where its state ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from packager.domain.events import TERMINAL_TYPES, Envelope
from projections import jobs as job_fold
from projections import statistics as stats_fold
from projections.jobs import JobState

SNAPSHOT_VERSION = 1


@dataclass
class ReadModel:
    """Jobs, statistics and positions."""

    identity: Callable[[str], str]
    jobs: dict[str, JobState] = field(default_factory=dict)
    stats: stats_fold.Statistics = field(default_factory=stats_fold.Statistics)
    positions: dict[str, int] = field(default_factory=dict)
    # Which log the positions are in (`packager.adapters.kafka_log.LogIdentity.to_dict()`), None if unknown.
    log_identity: dict[str, Any] | None = None
    accepted: int = 0
    finished: int = 0
    # Called with every job whose state changed (live progress streams subscribe here).
    on_change: Callable[[JobState], None] | None = None
    # Names of every ZIP a job completed with, derived from `jobs` (not state of its own): a download that
    # is gone but was once built was removed (expired, swept or cleared), not never there.
    zip_names: set[str] = field(default_factory=set, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.zip_names.update(job.zip_file_name for job in self.jobs.values() if job.zip_file_name)

    def apply(self, topic: str, partition: int, offset: int, event: Envelope) -> None:
        """Fold one record in and advance the position of its partition.

        All or nothing: what can raise (the folds) runs before anything is changed, so a fold that raises
        leaves the model, its position included, as it was (the caller decides to skip the event).
        """
        key = f"{topic}:{partition}"
        if offset < self.positions.get(key, 0):
            return  # already folded (a replayed or re-read record)
        if event.type == "RecordRejected":
            self.positions[key] = offset + 1
            return  # about a bad record, not a job
        before = self.jobs.get(event.job_id)
        after = job_fold.apply(before, event)
        stats_fold.apply(self.stats, event, self.identity)  # all or nothing too (see its docstring)
        self.positions[key] = offset + 1
        self.jobs[event.job_id] = after
        if after.zip_file_name:
            self.zip_names.add(after.zip_file_name)
        if event.type == "PackageRequested" and (before is None or not before.requested_at):
            self.accepted += 1
        if event.type in TERMINAL_TYPES and (before is None or not before.terminal):
            self.finished += 1
        if self.on_change is not None and after != before:
            self.on_change(after)

    @property
    def queue_length(self) -> int:
        """Accepted jobs that have not reached a terminal event."""
        return self.accepted - self.finished

    def state(self) -> dict[str, Any]:
        """Everything but the positions, as plain data (what the replay tool compares)."""
        return {
            "jobs": {k: v.to_dict() for k, v in sorted(self.jobs.items())},
            "stats": self.stats.to_dict(),
            "accepted": self.accepted,
            "finished": self.finished,
        }

    def snapshot(self) -> bytes:
        """State and positions together, serialised."""
        return orjson.dumps(
            {
                "version": SNAPSHOT_VERSION,
                "positions": self.positions,
                "log_identity": self.log_identity,
                **self.state(),
            }
        )

    @classmethod
    def load(cls, path: Path, identity: Callable[[str], str]) -> ReadModel:
        """A model from a snapshot, or an empty one (rebuilt from the log) when there is none."""
        if not path.exists():
            return cls(identity=identity)
        doc = orjson.loads(path.read_bytes())
        if doc.get("version") != SNAPSHOT_VERSION:
            return cls(identity=identity)
        return cls(
            identity=identity,
            jobs={k: JobState.from_dict(v) for k, v in doc["jobs"].items()},
            stats=stats_fold.Statistics.from_dict(doc["stats"]),
            positions=dict(doc["positions"]),
            log_identity=doc.get("log_identity"),  # absent from snapshots written before it was kept
            accepted=int(doc["accepted"]),
            finished=int(doc["finished"]),
        )


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a reader (or a crash) never sees half a snapshot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
