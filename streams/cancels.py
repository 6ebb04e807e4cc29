"""Cancelling a job, on the steward's side: which job a `CancelRequested` is about, and how it ends.

The ingress appends one `CancelRequested` to every partition of the events topic (it does not know the
job's cache key). The steward of each partition asks `Cancels.requested`; only the one whose partition
holds the job acts, and only through `end_once`, the rule that gives every job exactly one terminal event:

- a job that has ended, or whose terminal event is on its way (an end intent), is left alone: the other
  terminal event won, and the ingress answers 409;
- a job with a build (queued or running) ends with `PackageCancelled`. The workers stop the build when
  they read that event (`streams.build_stops`). Requests that waited for that build are not cancelled with
  it: when the steward reads the cancellation, the first of them is dispatched as a build of its own and
  the others wait for that one (`Cancels.replan`);
- a job waiting for an identical request's build leaves the waiting list and ends with `PackageCancelled`;
- a job not planned yet (the cancel overtook its request) is remembered in `pending`, and the planner ends
  it with `PackageCancelled` instead of planning it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from aiokafka.partitioner import DefaultPartitioner

from packager.adapters.store import Store
from packager.core.logs import bind_job
from packager.domain.events import (
    CancelRequested,
    Envelope,
    Event,
    PackageCancelled,
    PackageRequested,
    decode,
    requester_fields,
)
from streams.cache import remove_zip
from streams.leases import unknown_request

log = logging.getLogger(__name__)

EndOnce = Callable[[str, str, Event, int], Awaitable[None]]
Dispatch = Callable[[str, str, str, int, str], Awaitable[None]]
Table = MutableMapping[str, Any]

# How long a cancel that found no job is kept for a request that may still come (as long as end marks).
PENDING_KEPT = 3600.0  # seconds
_partitioner = DefaultPartitioner()


def partition_of(cache_key: str, partitions: int) -> int:
    """The partition a record keyed `cache_key` goes to (the producers' default partitioner)."""
    every = list(range(partitions))
    return int(_partitioner(cache_key.encode(), every, every))


def cancelled(request: PackageRequested, by: str, lane: str) -> PackageCancelled:
    """The terminal event of a cancelled job, from its request."""
    return PackageCancelled(
        cache_key=request.cache_key,
        resource_id=request.resource_id,
        ckan_host=request.ckan_host,
        lane=lane,
        by=by,
        **requester_fields(request),
    )


def waiter_cancelled(cache_key: str, who: dict[str, Any], by: str) -> PackageCancelled:
    """The terminal event of a cancelled job that waited for an identical request's build."""
    return PackageCancelled(
        cache_key=cache_key,
        resource_id=str(who.get("resource_id", "")),
        ckan_host=str(who.get("ckan_host", "")),
        lane="",
        by=by,
        **requester_fields(who),
    )


def retargeted(builder_record: str, who: dict[str, Any]) -> str:
    """The request record of a waiter that kept none (tables written before waiters kept their records).

    Identical requests differ only in who asked: the builder's record with the waiter's job id and
    requester fields stands for the waiter's own request.
    """
    doc = orjson.loads(builder_record)
    doc["job_id"] = who["job_id"]
    doc["payload"] = {**doc["payload"], **requester_fields(who)}
    return orjson.dumps(doc).decode()


class Cancels:
    """The steward's part in cancelling: reads and writes the tables of the partitions it owns."""

    def __init__(
        self,
        *,
        partitions: int,
        leases: Table,
        kept: Table,
        waiting: Table,
        inflight: Table,
        ending: Table,
        pending: Table,
        end_once: EndOnce,
        dispatch: Dispatch,
        store: Store,
    ) -> None:
        self.partitions = partitions
        self.leases, self.kept, self.waiting, self.inflight = leases, kept, waiting, inflight
        self.ending, self.pending = ending, pending
        self.end_once, self.dispatch = end_once, dispatch
        self.store = store

    def _ours(self, cache_key: str, partition: int) -> bool:
        return partition_of(cache_key, self.partitions) == partition

    async def requested(self, env: Envelope, partition: int) -> bool:
        """Handle a `CancelRequested` read from `partition`; True when it was this partition's copy."""
        p = env.payload
        assert isinstance(p, CancelRequested)
        if p.partition != partition:
            return False  # another partition's copy, read again after a partition moved
        outcome = await self._cancel(env.job_id, p.by, partition)
        log.info("cancel asked by the %s: %s", p.by, outcome)
        return True

    def before_planning(self, request: Envelope) -> PackageCancelled | None:
        """The cancellation of a request cancelled before the planner read it (None: it was not)."""
        entry = self.pending.get(request.job_id)
        if entry is None:
            return None
        log.info("the job was cancelled before it was planned")
        assert isinstance(request.payload, PackageRequested)
        return cancelled(request.payload, entry["by"], "")

    async def before_fold(self, env: Envelope) -> str | None:
        """Before the steward folds a `PackageCancelled`: the job's request record (to re-plan its waiters).

        A build that finished just before the cancellation won has its ZIP proposed but never completed
        with: it is removed here.
        """
        if not isinstance(env.payload, PackageCancelled):
            return None
        lease = self.leases.get(env.job_id)
        if lease and lease.get("zip"):
            await remove_zip(self.store, lease["zip"])
        record = self.kept.get(env.job_id)
        return str(record) if record is not None else None

    async def _cancel(self, job_id: str, by: str, partition: int) -> str:
        """Cancel the job if this partition holds it and it has not ended; say what was done."""
        if self.ending.get(job_id) is not None:
            return "the job has ended (or its terminal event is on its way): nothing to cancel"
        lease = self.leases.get(job_id)
        record = self.kept.get(job_id)
        if lease is not None or record is not None:
            request_event = decode(record) if record is not None else None
            if lease is not None:
                key, owner = lease["key"], lease["partition"]
            else:
                assert request_event is not None  # the request is kept when no lease is
                key = request_event.cache_key
                owner = partition_of(key, self.partitions)
            if owner != partition:
                return "the job belongs to another partition"
            request = request_event.payload if request_event is not None else unknown_request(key)
            assert isinstance(request, PackageRequested)
            lane = lease["lane"] if lease is not None else ""
            await self.end_once(job_id, key, cancelled(request, by, lane), partition)
            return "the job's build is cancelled"
        for key, waiters in list(self.waiting.items()):
            who = next((w for w in waiters or [] if w["job_id"] == job_id), None)
            if who is None:
                continue
            if not self._ours(key, partition):
                return "the job belongs to another partition"
            # No await between reading the list and writing it: the planner may add to it meanwhile.
            self.waiting[key] = [w for w in self.waiting.get(key) or [] if w["job_id"] != job_id]
            await self.end_once(job_id, key, waiter_cancelled(key, who, by), partition)
            return "the job waited for an identical build; it alone is cancelled"
        self.pending[job_id] = {"by": by, "at": time.time(), "partition": partition}
        return "the job is not planned yet: it is cancelled when its request is read"

    async def replan(self, cancelled_env: Envelope, partition: int, builder_record: str | None) -> None:
        """After a builder's cancellation: the first waiter gets a build of its own, the others wait for it.

        Called when the steward reads the `PackageCancelled` of the job in flight for its cache key. The
        build is dispatched before the tables say so: read again after a crash, the cancellation dispatches
        it again, which at worst builds it twice (the second result is dropped), never not at all.
        """
        key, builder = cancelled_env.cache_key, cancelled_env.job_id
        payload = cancelled_env.payload
        assert isinstance(payload, PackageCancelled)
        while waiters := list(self.waiting.get(key) or []):
            first = waiters[0]
            record = first.get("record") or (retargeted(builder_record, first) if builder_record else None)
            if record is None:  # cannot happen unless a table was lost: this waiter cannot be rebuilt
                log.error("a waiter of a cancelled build has no request to build; it is cancelled too")
                self.waiting[key] = [w for w in self.waiting.get(key) or [] if w["job_id"] != first["job_id"]]
                await self.end_once(first["job_id"], key, waiter_cancelled(key, first, payload.by), partition)
                continue
            log.info("the cancelled build had waiters: job %s is built for them", first["job_id"])
            bind_job(first["job_id"])  # the dispatch's log lines are about the waiter's job
            try:
                await self.dispatch(first["job_id"], key, payload.lane or "slow", 1, record)
            finally:
                bind_job(builder)
            self.kept[first["job_id"]] = record
            self.inflight[key] = first["job_id"]
            rest = [w for w in self.waiting.get(key) or [] if w["job_id"] != first["job_id"]]
            if rest:
                self.waiting[key] = rest
            elif key in self.waiting:
                del self.waiting[key]
            return
        if key in self.waiting:
            del self.waiting[key]
        if self.inflight.get(key) == builder:
            del self.inflight[key]

    def forget_pending(self, partition: int, now: float) -> None:
        """Drop `partition`'s cancels older than PENDING_KEPT whose request never came.

        Called while the steward handles an event of `partition` (tables change only inside an event).
        """
        for job_id, entry in list(self.pending.items()):
            if entry and entry.get("partition") == partition and now - float(entry["at"]) > PENDING_KEPT:
                del self.pending[job_id]
