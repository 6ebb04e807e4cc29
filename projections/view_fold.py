"""Fold of a batch of log records into row changes of the SQL views (`projections.view_schema`).

The projector reads a batch of records, asks `needs` which rows the batch depends on, loads them from the
views (`Known`), and `fold` runs the same per-event folds as ever (`projections.jobs.apply` and the
statistics rules of `projections.statistics`, and the worker's views of `projections.worker_fold`) over the
batch in log order. The result (`Changes`) is what
the batch changed, coalesced: one row per job however many events it had in the batch, new statistics
entries, and deltas of the totals and counters. Nothing here touches a database, so the fold is the same
for SQLite, PostgreSQL and any test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from packager.domain.events import (
    TERMINAL_TYPES,
    Envelope,
    PackageFailed,
    PackageRequested,
    RequesterErased,
    StatisticsReset,
)
from projections import jobs as job_fold
from projections.jobs import JobState
from projections.statistics import ALL, email_domain, unix_time
from projections.worker_fold import (
    WorkerNeeds,
    WorkerParameters,
    WorkerRows,
    finish_worker,
    fold_worker,
    worker_needs,
)

Identity = Callable[[str], str]

# (topic, partition, offset, event): one decoded record of the requests or events topic.
Record = tuple[str, int, int, Envelope]


@dataclass(slots=True)
class Needs:
    """The rows of the views a batch depends on."""

    job_ids: set[str] = field(default_factory=set)
    failed_job_ids: set[str] = field(default_factory=set)
    requesters: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    worker: WorkerNeeds = field(default_factory=WorkerNeeds)


@dataclass(slots=True)
class Known:
    """Those rows as the views hold them before the batch."""

    jobs: dict[str, JobState] = field(default_factory=dict)
    failed_job_ids: set[str] = field(default_factory=set)
    requesters: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    worker: WorkerRows = field(default_factory=WorkerRows)  # changed in place by the fold
    # `requests` / `errors` -> the unix time of their latest reset (StatisticsReset): what is counted.
    cuts: dict[str, float] = field(default_factory=dict)

    def counted(self, which: str, ts: float) -> bool:
        """True when an entry of `which` that occurred at `ts` is after the latest reset of `which`."""
        return ts > self.cuts.get(which, float("-inf"))


@dataclass(slots=True)
class Changes:
    """What one batch changes in the views."""

    jobs: dict[str, JobState] = field(default_factory=dict)
    requests: list[tuple[str, float, str, str, str, str]] = field(default_factory=list)
    errors: list[tuple[str, float, str, str, str]] = field(default_factory=list)
    requesters: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    # resource id (and `*`) -> [requests, errors, emails] to add
    totals: dict[str, list[int]] = field(default_factory=dict)
    accepted: int = 0
    finished: int = 0
    zips: set[str] = field(default_factory=set)
    # (job id, `request_details` as JSON) of the requests folded for the first time
    details: list[tuple[str, str]] = field(default_factory=list)
    erased: set[str] = field(default_factory=set)  # ids of destroyed data keys
    worker: WorkerRows = field(default_factory=WorkerRows)  # the worker's views, `touched` to be written
    # job id -> (who, resource id) of a job now queued or running, or None when it ended (`active_jobs`)
    active: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    # `requests` / `errors` -> a newer reset's cut: the store recounts that column of the totals from the
    # entries after it, so a reset gives the same totals whatever order the partitions are folded in.
    resets: dict[str, float] = field(default_factory=dict)
    folded: int = 0

    def _total(self, resource_id: str) -> list[int]:
        found = self.totals.get(resource_id)
        if found is None:
            found = self.totals[resource_id] = [0, 0, 0]
        return found


def requester_of(event: Envelope, identity: Identity) -> str | None:
    """The identity statistics keep of the requester of a request or a failure (None for other events).

    The pseudonym the event carries; for an event written before pseudonyms (v1, the address in clear),
    `identity` of the address, which gives the same pseudonym under the same PSEUDONYM_SECRET.
    """
    p = event.payload
    if isinstance(p, PackageRequested | PackageFailed):
        return p.requester or identity(p.email)
    return None


def needs(
    events: Sequence[Envelope], requesters: Sequence[str | None], parts: Sequence[int] | None = None
) -> Needs:
    """The rows `fold` will read for these events (`requesters` from `requester_of`, one per event;
    `parts`: the partition each was read from, for the worker's views)."""
    wanted = Needs(worker=worker_needs(events, parts if parts is not None else [0] * len(events)))
    for event, who in zip(events, requesters, strict=True):
        if event.type == "RecordRejected":
            continue
        wanted.job_ids.add(event.job_id)
        if who is not None and event.type == "PackageRequested":
            wanted.requesters.add(who)
            wanted.pairs.add((who, event.payload.resource_id))  # type: ignore[attr-defined]
        elif event.type == "PackageFailed":
            wanted.failed_job_ids.add(event.job_id)
    return wanted


def fold(
    events: Sequence[Envelope],
    requesters: Sequence[str | None],
    known: Known,
    parts: Sequence[int] | None = None,
    params: WorkerParameters = WorkerParameters(),  # noqa: B008 - frozen, so one shared default is safe
) -> Changes:
    """Fold the events, in order, over the known rows; return the coalesced changes. `parts` and `params`:
    the partition each event was read from, and the settings the worker's views are folded with."""
    out = Changes(worker=known.worker)
    parts = parts if parts is not None else [0] * len(events)
    jobs = known.jobs  # updated in place: the batch's later events see its earlier ones
    seen_requesters = known.requesters
    seen_pairs = known.pairs
    failed = known.failed_job_ids
    for event, who, part in zip(events, requesters, parts, strict=True):
        if event.type == "RecordRejected":
            continue  # about a bad record, not a job
        job_id = event.job_id
        before = jobs.get(job_id)
        after = job_fold.apply(before, event)
        fold_worker(out.worker, event, part, before, after, params)
        out.folded += 1
        # The fold returns the state it was given when nothing changed: an identity test is enough.
        if after is not before and (before is not None or after != JobState(job_id=job_id)):
            # An event that tells nothing about a job it does not know (a cache clearing) makes no row.
            jobs[job_id] = out.jobs[job_id] = after
            if after.zip_file_name:
                out.zips.add(after.zip_file_name)
        p = event.payload
        if isinstance(p, PackageRequested):
            if before is not None and before.requested_at:
                continue  # a replayed request counts once
            assert who is not None
            out.accepted += 1
            if not after.terminal:  # its end may have been folded first (the topics are read apart)
                out.active[job_id] = (who, p.resource_id)
            out.details.append((job_id, orjson.dumps(request_details(p)).decode()))
            resource = p.resource_id
            domain = p.requester_domain or email_domain(p.email)
            ts = unix_time(event.occurred_at)
            out.requests.append((job_id, ts, who, domain, resource, p.email_sealed))
            here, overall = out._total(resource), out._total(ALL)
            if known.counted("requests", ts):
                here[0] += 1
                overall[0] += 1
            if who not in seen_requesters:
                seen_requesters.add(who)
                out.requesters.append(who)
                overall[2] += 1
            if (who, resource) not in seen_pairs:
                seen_pairs.add((who, resource))
                out.pairs.append((who, resource))
                here[2] += 1
        elif isinstance(p, RequesterErased):
            out.erased.update(p.key_ids)
        elif isinstance(p, StatisticsReset):
            cut = unix_time(event.occurred_at)
            if not known.counted(p.which, cut) or p.which not in ("requests", "errors"):
                continue  # an older reset than the one in force (or of nothing known) changes nothing
            known.cuts[p.which] = out.resets[p.which] = cut
        elif event.type in TERMINAL_TYPES:
            if before is None or not before.terminal:
                out.finished += 1
                out.active[job_id] = None
            if isinstance(p, PackageFailed) and job_id not in failed:
                failed.add(job_id)
                assert who is not None
                ts = unix_time(event.occurred_at)
                out.errors.append((job_id, ts, who, p.error, p.resource_id))
                if known.counted("errors", ts):
                    out._total(p.resource_id)[1] += 1
                    out._total(ALL)[1] += 1
    finish_worker(out.worker, params)
    return out


# The request's parameters a requester chose, kept for the job's page (`view_schema.JOB_REQUESTS`).
_DETAIL_NAMES = ("format", "filters", "q", "fields", "sort", "offset", "limit")


def request_details(request: PackageRequested) -> dict[str, Any]:
    """What the job's page tells of a request: its kind, format and query, or the name of the file at a URL
    (never the requester's address, the CKAN key or the portal's URL)."""
    asked = request.request
    details: dict[str, Any] = {"kind": request.kind}
    for name in _DETAIL_NAMES:
        value = asked.get(name)
        if value not in (None, "", {}, []):
            details[name] = value
    url = str(asked.get("resource_url") or "")
    if url:
        details["file"] = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1][:200]
    return details


def job_row(job: JobState) -> tuple[Any, ...]:
    """A job as a row of the `jobs` table (columns in `view_schema.JOB_COLUMNS` order)."""
    return (
        job.job_id,
        job.state,
        job.kind,
        job.resource_id,
        job.lane,
        job.attempt,
        job.rows_done,
        job.rows_total,
        job.bytes_done,
        job.bytes_total,
        job.zip_file_name,
        job.size,
        job.error,
        1 if job.emailed else 0,
        job.email_error,
        job.requested_at,
        job.started_at,
        job.finished_at,
        job.updated_at,
    )


def job_from_row(row: Sequence[Any]) -> JobState:
    """Inverse of `job_row`."""
    values = list(row)
    values[13] = bool(values[13])
    return JobState(*values)
