"""The planner and the steward: requests become plans, events become leases, cache entries and endings.

The planner reads partition p of the requests topic: a request is answered from the cache, shares a build
already running for the same query, or is queued on a lane. The steward reads partition p of the events
topic and owns the tables of that partition: the cache index, the requests waiting for one build, the
leases of builds in progress (`streams.leases`) and the end mark of every job. It is the only writer of a
built job's terminal event (`end_once`), dispatches lost or released builds again, expires packages, and
reminds requesters before they do (`streams.expiry_notices`).
Both are registered on the app by `add_planner_and_steward`, called from `streams.app.create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from packager.adapters.http_client import http_session
from packager.adapters.kafka_log import iso_ms
from packager.adapters.stores import open_store
from packager.core.logs import bind_job
from packager.core.settings import Settings
from packager.domain.events import (
    TERMINAL_TYPES,
    CacheCleared,
    CancelRequested,
    Envelope,
    Event,
    LeaseExpired,
    PackageBuilt,
    PackageCancelled,
    PackageCompleted,
    PackageExpired,
    PackageFailed,
    PackageQueued,
    PackageRequested,
    RequestAbandoned,
    decode,
)
from streams import expiry_notices, leases
from streams.cache import cache_entry, is_fresh, remove_zip, reused, shared_failure, waiter
from streams.cancels import Cancels
from streams.handlers import abandoned, plan_lane
from streams.janitor import add_janitor
from streams.packers import ATTEMPT_HEADER, lane_partitions
from streams.readahead import LogReader, committed_offsets

log = logging.getLogger(__name__)

APPEND_TIMEOUT = 30.0  # seconds
# How long the steward remembers that a job has ended. A record read again after a rebalance comes from the
# partition's committed offset, which trails the steward by about a commit interval (longer while an append
# waits): a job's events read again within this time find the mark and change nothing.
ENDED_KEPT = 3600.0  # seconds


def add_planner_and_steward(
    app: faust.App,
    settings: Settings,
    requests_topic: Any,
    events_topic: Any,
    lane_topics: dict[str, Any],
    decoded: Any,
    publish: Any,
    left_to_others: Callable[[], bool],
    settled_after_freeze: Callable[[], Awaitable[None]],
    still_assigned: Callable[[TP], bool],
) -> None:
    """The planner (requests -> cache hit, shared build or a lane) and the steward (events -> state).

    The steward owns partition p of the events topic: the cache index, identical requests waiting for one
    build, and the leases of builds in progress (streams.leases): it appends each built job's terminal
    event and dispatches lost or released builds again. Planner and steward read and write the same tables
    while processing partition p of topics keyed alike, so the tables stay co-partitioned.
    """
    planned = app.Table("planned", default=None, partitions=settings.partitions)
    cache = app.Table("cache", default=None, partitions=settings.partitions)
    inflight = app.Table("inflight", default=None, partitions=settings.partitions)
    waiting = app.Table("waiting", default=None, partitions=settings.partitions)
    # job id -> lease of its build (streams.leases), and job id -> its request record, to dispatch it again.
    lease_table = app.Table("leases", default=None, partitions=settings.partitions)
    kept = app.Table("requests", default=None, partitions=settings.partitions)
    # job id -> the events offset from which its terminal event may already be in the log: written (and
    # flushed) before the append, so that after a crash the append is looked for rather than repeated; once
    # read back, the job's end mark, kept for ENDED_KEPT (records read again must not revive its lease).
    ending = app.Table("ending", default=None, partitions=settings.partitions)
    # job id -> where its current attempt's lane record is (attempt, topic, partition, offset): the watchdog
    # compares it with the worker group's committed offset to find builds lost before they started.
    lane_records = app.Table("lane_records", default=None, partitions=settings.partitions)
    turns = {lane: lane_partitions(settings.partitions) for lane in lane_topics}  # where lane records go
    notices, reminders = expiry_notices.notices_table(app, settings), expiry_notices.Reminders()
    # job id -> a cancel that arrived before its request was planned (streams.cancels).
    pending_cancels = app.Table("cancels", default=None, partitions=settings.partitions)
    store = open_store(settings)
    events_name = events_topic.get_topic_name()
    seen: dict[int, int] = {}  # events partition -> the last offset the steward handled
    expiring: set[tuple[str, int]] = set()  # LeaseExpired appended, not yet read back
    stalled: dict[tuple[str, int], float] = {}  # queued attempts whose lane record looked passed, since when
    pruned: dict[int, float] = {}  # events partition -> when its old end marks were last dropped

    async def end_once(job_id: str, key: str, terminal: Event, partition: int) -> None:
        """Append a job's terminal event once, even when the record asking for it is read again.

        The intent (where in the partition the event may appear, and when) is recorded first. Read again,
        the record finds it and looks ahead in the log; an append still on its way from a worker that lost
        the partition lands within the producer's timeout, so until then it looks again before appending.
        """
        tp = TP(events_name, partition)
        where = TopicPartition(events_name, partition)  # aiokafka's own type, for the reader
        generation = app.consumer_generation_id

        def moved_away() -> bool:
            # While this steward waited, the group may have given the partition to another worker, which
            # reads the record again and ends the job itself (chaos run 46: two stewards, neither the owner
            # any more, appended the same terminal event after waiting 20 s).
            if app.consumer_generation_id == generation or still_assigned(tp):
                return False
            log.warning("events[%d] moved to another worker while waiting; it ends the job", partition)
            return True

        intent = ending.get(job_id)
        if intent is not None and intent.get("ended"):
            log.info("the job has already ended; its terminal event is not appended again")
            return
        if intent is not None:
            async with LogReader(settings.kafka_bootstrap_servers) as reader:
                while True:
                    if await reader.contains(
                        where, intent["since"], lambda e: e.job_id == job_id and e.type in TERMINAL_TYPES
                    ):
                        log.info("the job's terminal event is already in the log")
                        return
                    wait = intent["at"] + APPEND_TIMEOUT + 5 - time.time()
                    if wait <= 0:
                        break
                    log.info("an earlier append of the job's terminal event may still land; waiting")
                    await asyncio.sleep(min(wait, 5.0))
                    if moved_away():
                        return
        else:
            try:
                since = app.consumer.highwater(tp)  # at most the true end: a later scan only starts earlier
            except (AssertionError, KafkaError):
                since = None
            if since is None:
                async with LogReader(settings.kafka_bootstrap_servers) as reader:
                    since = await reader.end_offset(where)
            ending[job_id] = {"since": since, "at": time.time()}
            await app.producer.flush()
        if left_to_others():  # frozen meanwhile: wait for the group, then decide again from the intent
            await settled_after_freeze()
            if still_assigned(tp):
                await end_once(job_id, key, terminal, partition)
            else:  # the partition's new owner appends it (and finds the intent above)
                log.warning("events[%d] moved to another worker; it ends the job", partition)
            return
        if moved_away():
            return
        await publish(events_topic, job_id, key, terminal)
        log.info("job ended: %s appended to events[%d]", terminal.TYPE, partition)

    async def dispatch(job_id: str, key: str, lane: str, attempt: int, record: str) -> None:
        """Queue build `attempt` of a job: the event first, so it precedes the build's own events."""
        await publish(events_topic, job_id, key, PackageQueued(cache_key=key, lane=lane, attempt=attempt))
        headers, part = {ATTEMPT_HEADER: str(attempt).encode()}, next(turns[lane])
        fut = await lane_topics[lane].send(
            key=key.encode(), value=record.encode(), partition=part, headers=headers
        )
        where = await fut
        lane_records[job_id] = {
            "attempt": attempt,
            "topic": lane_topics[lane].get_topic_name(),
            "partition": where.partition,
            "offset": where.offset,
        }

    cancels = Cancels(
        partitions=settings.partitions,
        leases=lease_table,
        kept=kept,
        waiting=waiting,
        inflight=inflight,
        ending=ending,
        pending=pending_cancels,
        end_once=end_once,
        dispatch=dispatch,
        store=store,
    )

    @app.agent(requests_topic, name="planner")
    async def planner(stream: faust.StreamT) -> None:
        async with http_session(settings) as session:
            async for env in decoded(stream):
                if planned.get(env.job_id) is not None:
                    continue  # redelivered: already handled
                key = env.cache_key
                event = faust.current_event()
                assert event is not None
                if (late := abandoned(event.message)) is not None:
                    log.warning("request stored after the ingress answered 503; not building it")
                    await end_once(env.job_id, key, RequestAbandoned(key, *late), event.message.partition)
                    planned[env.job_id] = "abandoned"
                    await app.producer.flush()
                    continue
                if (request_cancelled := cancels.before_planning(env)) is not None:
                    await end_once(env.job_id, key, request_cancelled, event.message.partition)
                    planned[env.job_id] = "cancelled"
                    await app.producer.flush()
                    continue
                entry = cache.get(key)
                if entry is not None and await is_fresh(entry, settings, store):
                    await end_once(env.job_id, key, reused(key, waiter(env), entry), event.message.partition)
                    planned[env.job_id] = "cache"
                elif inflight.get(key) not in (None, env.job_id):
                    # An identical request is being built: this one completes with it (its record is
                    # kept in case that build is cancelled: it is then built for this one).
                    who = {**waiter(env), "record": bytes(event.value).decode()}
                    waiting[key] = [*(waiting.get(key) or []), who]
                    log.info("an identical request is being built (job %s): waiting for it", inflight[key])
                    planned[env.job_id] = "shared"
                else:
                    inflight[key] = env.job_id
                    record = bytes(event.value).decode()
                    kept[env.job_id] = record
                    lane = await plan_lane(env, settings, session)
                    await dispatch(env.job_id, key, lane, 1, record)
                    planned[env.job_id] = lane
                await app.producer.flush()

    async def follow_lease(env: Envelope, partition: int) -> bool:
        """Fold the event into its job's lease and do what it obliges; True when anything changed."""
        job_id, key = env.job_id, env.cache_key
        mark = ending.get(job_id)
        if mark is not None and mark.get("ended"):
            return await after_end(env, mark)
        before = lease_table.get(job_id)
        action = leases.decide(before, env, settings.max_attempts)
        after = leases.apply(before, env, settings.lease_time)
        if isinstance(env.payload, LeaseExpired):
            expiring.discard((job_id, env.payload.attempt))
        if after is None and before is not None:
            del lease_table[job_id]
        elif after is not None and after != before:
            lease_table[job_id] = {**after, "partition": partition, "key": key}
        if isinstance(env.payload, PackageBuilt):
            where = faust.current_event().message  # type: ignore[union-attr]
            log.info(
                "build %d proposes %s (events[%d]@%d; lease %s): %s",
                env.payload.attempt,
                env.payload.outcome,
                where.partition,
                where.offset,
                before and before["state"],
                type(action).__name__ if action else "nothing to do",
            )
        match action:
            case leases.End(terminal=terminal):
                await end_once(job_id, key, terminal, partition)
            case leases.Discard(zip_file_name=name):
                log.warning("a build that no longer held the job's lease finished; its result is dropped")
                if name:
                    await remove_zip(store, name)
            case leases.Dispatch(lane=lane, attempt=attempt):
                log.warning("building the job again (attempt %d)", attempt)
                record = kept.get(job_id)
                if record is None:
                    log.error("the job's request is not kept; it cannot be built again")
                    await end_once(job_id, key, leases.gave_up(leases.unknown_request(key), 1), partition)
                else:
                    await dispatch(job_id, key, lane, attempt, record)
            case leases.GiveUp(lost=lost):
                record = kept.get(job_id)
                request = decode(record).payload if record else leases.unknown_request(key)
                assert isinstance(request, PackageRequested)
                log.error("the job's build was lost %d times; it fails", lost)
                await end_once(job_id, key, leases.gave_up(request, lost), partition)
        if env.type in TERMINAL_TYPES:
            if job_id in kept:
                del kept[job_id]
            if job_id in lane_records:
                del lane_records[job_id]
            mark = {"ended": True, "zip": leases.ended_zip(env), "at": time.time(), "partition": partition}
            ending[job_id] = mark
            return True
        return action is not None or after != before

    async def after_end(env: Envelope, mark: dict[str, Any]) -> bool:
        """An event of an ended job: read again after a rebalance, or from a build that lost its lease.

        Nothing is appended. A build's ZIP is removed unless it is the one the job ended with (a proposal
        read again must leave the package its link points to).
        """
        if isinstance(env.payload, PackageBuilt):
            name = leases.proposed_zip(env.payload)
            if name and name != mark.get("zip"):
                log.warning("a build finished after its job had ended; its result is dropped")
                await remove_zip(store, name)
        return False

    async def end_waiters(
        key: str, partition: int, terminal: Callable[..., Event], outcome: Any, builder: str
    ) -> None:
        """End every request that waited for the build of `key`, and release the build's in-flight entry.

        The planner runs beside the steward and may add a waiter while one is being ended: the list is read
        again until no one is left, and the entries go with no await between that last read and their
        removal. A crash before the end ends them again (`end_once` keeps that idempotent).
        """
        ended: set[str] = set()
        while waiters := [w for w in (waiting.get(key) or []) if w["job_id"] not in ended]:
            for who in waiters:
                await end_once(who["job_id"], key, terminal(key, who, outcome), partition)
                ended.add(who["job_id"])
        if key in waiting:
            del waiting[key]
        if inflight.get(key) == builder:
            del inflight[key]

    def forget_ended(partition: int, now: float) -> None:
        """Drop the end marks of `partition` older than ENDED_KEPT (tables change only inside an event)."""
        if now - pruned.get(partition, 0.0) < 60.0:
            return
        pruned[partition] = now
        cancels.forget_pending(partition, now)
        for job_id, mark in list(ending.items()):
            old = mark and mark.get("ended") and now - mark["at"] > ENDED_KEPT
            if old and mark["partition"] == partition:
                del ending[job_id]

    @app.agent(events_topic, name="steward")
    async def steward(stream: faust.StreamT) -> None:
        async for env in decoded(stream):
            message = faust.current_event().message  # type: ignore[union-attr]
            partition = message.partition
            seen[partition] = message.offset
            forget_ended(partition, time.time())
            key, p = env.cache_key, env.payload
            if isinstance(p, CancelRequested):
                if await cancels.requested(env, partition):
                    await app.producer.flush()
                continue
            builder_record = await cancels.before_fold(env)
            changed = await follow_lease(env, partition)
            if isinstance(p, PackageCompleted) and not p.cached_from:
                cache[key] = cache_entry(env, partition)
                await end_waiters(key, partition, reused, cache[key], env.job_id)
            elif isinstance(p, PackageFailed) and inflight.get(key) == env.job_id:
                await end_waiters(key, partition, shared_failure, p, env.job_id)
            elif isinstance(p, PackageCancelled) and inflight.get(key) == env.job_id:
                await cancels.replan(env, partition, builder_record)
            elif isinstance(p, CacheCleared) and p.partition == partition:
                for cached_key, cached in list(cache.items()):
                    if cached and cached.get("partition") == partition:
                        await remove_zip(store, cached["zip_file_name"])
                        del cache[cached_key]
            elif isinstance(p, PackageExpired):
                cached = cache.get(key)
                if cached and cached["job_id"] == env.job_id:
                    del cache[key]
                await remove_zip(store, p.zip_file_name)
            elif not changed and not settings.expiry_notice_before:
                continue
            if settings.expiry_notice_before:
                expiry_notices.track(notices, reminders, env, cache.get(key), partition, settings)
            await app.producer.flush()

    async def caught_up(partitions: set[int]) -> set[int]:
        """Those of `partitions` (assigned here) the steward has read to (nearly) the end: leases are current.

        A partition it has read nothing of since this worker started resumed at the group's committed
        offset, so it is caught up when that offset is at the end (a quiet partition taken over).
        """
        ends: dict[int, int] = {}
        for partition in partitions:
            try:
                end = app.consumer.highwater(TP(events_name, partition))
            except (AssertionError, KafkaError):
                continue
            if end is not None:
                ends[partition] = end
        unseen = [TopicPartition(events_name, p) for p in ends if p not in seen]
        try:
            resumed = (
                await committed_offsets(settings.kafka_bootstrap_servers, app.conf.id, unseen)
                if unseen
                else {}
            )
        except (KafkaError, OSError) as exc:
            log.warning("could not read the worker group's committed offsets: %r", exc)
            resumed = {}
        position = {p: seen[p] for p in ends if p in seen} | {
            tp.partition: at - 1 for tp, at in resumed.items()
        }
        return {p for p, end in ends.items() if p in position and position[p] >= end - 20}

    @app.timer(interval=min(2.0, settings.lease_time / 6))
    async def watchdog() -> None:
        """Append LeaseExpired for every build of this worker's partitions that went silent."""
        now = time.time()
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == events_name}
        silent = {
            job_id: lease
            for job_id, lease in list(lease_table.items())
            if lease
            and leases.expired(lease, now)
            and (job_id, lease["attempt"]) not in expiring
            and lease["partition"] in assigned
        }
        current = await caught_up({lease["partition"] for lease in silent.values()}) if silent else set()
        for job_id, lease in silent.items():
            if lease["partition"] not in current:
                continue
            bind_job(job_id)
            log.warning("build %d on %s sent no heartbeat in time", lease["attempt"], lease["worker"])
            until = iso_ms(int(lease["until"] * 1000))
            lost = LeaseExpired(
                cache_key=lease["key"], attempt=lease["attempt"], worker=lease["worker"], lease_until=until
            )
            try:
                await publish(events_topic, job_id, lease["key"], lost)
            except KafkaError as exc:  # a timer that raises stops the worker: try again at the next tick
                log.warning("LeaseExpired not appended yet: %r", exc)
                continue
            expiring.add((job_id, lease["attempt"]))
        bind_job(None)

    @app.timer(interval=max(2.0, min(10.0, settings.lease_time / 3)))
    async def queue_watch() -> None:
        """Expire queued attempts whose lane record the worker group passed without starting the build.

        A candidate (`leases.stalled_in_queue`) whose lane record is behind the group's committed offset,
        or was never recorded, at two ticks in a row gets a LeaseExpired with no `lease_until`; the
        steward then dispatches it again. Asking twice leaves time for a PackageStarted already in the
        log to be read (the packer appends it before it moves past the record).
        """
        now = time.time()
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == events_name}
        candidates = {
            job_id: lease
            for job_id, lease in list(lease_table.items())
            if lease
            and leases.stalled_in_queue(lease, now, settings.lease_time)
            and lease["partition"] in assigned
        }
        current = (
            await caught_up({lease["partition"] for lease in candidates.values()}) if candidates else set()
        )
        candidates = {job_id: lease for job_id, lease in candidates.items() if lease["partition"] in current}
        if not candidates:
            stalled.clear()
            return
        records = {job_id: lane_records.get(job_id) for job_id in candidates}
        known = {
            job_id: TopicPartition(at["topic"], at["partition"])
            for job_id, at in records.items()
            if at is not None and at["attempt"] == candidates[job_id]["attempt"]
        }
        try:
            group = app.conf.id
            committed = await committed_offsets(
                settings.kafka_bootstrap_servers, group, sorted(set(known.values()))
            )
        except (KafkaError, OSError) as exc:  # a timer that raises stops the worker: ask at the next tick
            log.warning("could not read the worker group's committed offsets: %r", exc)
            return
        passed: dict[tuple[str, int], float] = {}
        for job_id, lease in candidates.items():
            at = records[job_id]
            if job_id in known and committed.get(known[job_id], -1) <= at["offset"]:  # type: ignore[index]
                continue  # still ahead of its lane's consumers: the lane is busy, not stuck
            attempt = lease["attempt"]
            first = stalled.get((job_id, attempt))
            passed[(job_id, attempt)] = first or now
            if first is None or (job_id, attempt) in expiring:
                continue  # seen passed once: ask again at the next tick
            bind_job(job_id)
            log.warning("build %d was passed in its lane without starting; queueing it again", attempt)
            lost = LeaseExpired(cache_key=lease["key"], attempt=attempt, worker="", lease_until="")
            try:
                await publish(events_topic, job_id, lease["key"], lost)
            except KafkaError as exc:
                log.warning("LeaseExpired not appended yet: %r", exc)
                continue
            expiring.add((job_id, attempt))
        bind_job(None)
        stalled.clear()
        stalled.update(passed)

    add_janitor(app, settings, store, cache, events_topic, publish, (notices, reminders), caught_up)
