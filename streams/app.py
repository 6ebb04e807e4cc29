"""The Faust application: topics, tables and agents, wired for the roles one worker process serves.

All workers share one consumer group (the app id). Faust's assignor only gives a member partitions of the
topics it subscribes to, so a worker that serves only the slow lane never receives fast-lane work. Each lane
has its own job table, whose changelog is subscribed by exactly the workers of that lane and so stays
co-partitioned with the lane's topic.

Agents are thin: decode, consult the table, call a handler from `streams.handlers`, emit, record.
Delivery is at-least-once; effects are made idempotent by job id (see DESIGN.md on exactly-once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from packager.adapters import metrics
from packager.adapters.http_client import http_session
from packager.adapters.kafka_log import ANSWER_DEADLINE_HEADER, LANES, LOG_APPEND_TIME, Topics, iso_ms
from packager.adapters.resolver import system_resolver
from packager.adapters.store import FileStore
from packager.core.errors import EventDecodeError
from packager.core.logs import bind_job
from packager.core.settings import Settings
from packager.domain.events import (
    TERMINAL_TYPES,
    CacheCleared,
    Envelope,
    Event,
    LeaseExpired,
    PackageBuilt,
    PackageCompleted,
    PackageExpired,
    PackageFailed,
    PackageQueued,
    PackageRequested,
    RecordRejected,
    RequestAbandoned,
    decode,
    encode,
    envelope,
)
from packager.service.packaging import JobContext
from projections.analytics import pseudonymise
from streams import leases, offsets
from streams.builds import BuildPool
from streams.cache import cache_entry, is_expired, is_fresh, reused, shared_failure, waiter
from streams.handlers import plan_lane
from streams.offsets import (
    OffsetGuard,
    ResumePoints,
    acknowledge_missing,
    group_starts,
    patch_commit_offsets,
    require_single_actor,
)
from streams.pauses import TICK, PauseWatch
from streams.readahead import LogReader
from streams.transport import SCHEME

log = logging.getLogger(__name__)

APPEND_TIMEOUT = 30.0  # seconds
# How long the steward remembers that a job has ended. A record read again after a rebalance comes from the
# partition's committed offset, which trails the steward by about a commit interval (longer while an append
# waits): a job's events read again within this time find the mark and change nothing.
ENDED_KEPT = 3600.0  # seconds

ROLES = ("planner", "mailer", *(f"lane:{x}" for x in LANES))


def roles_for(lanes: Iterable[str]) -> set[str]:
    """The roles of a worker serving `lanes`: every worker also plans and mails (they scale by partition)."""
    return {"planner", "mailer", *(f"lane:{x}" for x in lanes)}


def create_app(settings: Settings, roles: set[str]) -> faust.App:
    """Build the Faust app with the agents and tables of `roles`."""
    unknown = roles - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    topics = Topics(settings.topic_prefix)
    app = faust.App(
        f"{settings.topic_prefix}-worker",
        broker=f"{SCHEME}://{settings.kafka_bootstrap_servers}",  # idempotent producer
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        datadir=str(Path(settings.store_directory) / ".faust"),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # An append either lands within this time or fails: `end_once` relies on it after a crash.
        producer_request_timeout=APPEND_TIMEOUT,
        broker_commit_every=1,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 5),
        broker_rebalance_timeout=max(60.0, settings.session_timeout),
        stream_wait_empty=False,
    )
    worker_name = f"{socket.gethostname()}:{os.getpid()}"
    resume_points = ResumePoints(
        fetch=group_starts(settings.kafka_bootstrap_servers, app.conf.id),
        generation=lambda: app.consumer_generation_id,
    )
    patch_commit_offsets(resume_points)

    def raw_topic(name: str) -> Any:
        return app.topic(name, partitions=settings.partitions, key_serializer="raw", value_serializer="raw")

    requests_topic = raw_topic(topics.requests)
    events_topic = raw_topic(topics.events)
    dead_letters = raw_topic(topics.dead_letters)
    lane_topics = {lane: raw_topic(topics.lane(lane)) for lane in LANES}

    async def publish(topic: Any, job_id: str, key: str, payload: Event) -> Envelope:
        """Send an event and wait until the broker acknowledged it."""
        env = envelope(job_id, payload)
        fut = await topic.send(key=key.encode(), value=encode(env))
        await fut
        metrics.record_published(payload)
        return env

    async def dead_letter(record: faust.types.EventT, error: EventDecodeError) -> None:
        """Copy an undecodable record to the dead-letter topic and record a `RecordRejected` event."""
        message = record.message
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        log.error("undecodable record on %s: %s", where, error.message)
        key = record.key if isinstance(record.key, bytes) else None
        value = record.value if isinstance(record.value, bytes) else repr(record.value).encode()
        fut = await dead_letters.send(
            key=key,
            value=value,
            headers={
                "error": error.message[:500].encode(),
                "source_topic": message.topic.encode(),
                "source_partition": str(message.partition).encode(),
                "source_offset": str(message.offset).encode(),
            },
        )
        await fut
        rejected = RecordRejected(
            cache_key=key.decode("utf-8", "replace")[:200] if key else "",
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            error=error.message[:500],
            claimed_job_id=readable_job_id(value),
        )
        await publish(events_topic, "-", rejected.cache_key, rejected)

    guards: list[OffsetGuard] = []
    pauses = PauseWatch(settings.session_timeout)
    # (consumer generation, loop time) of a freeze past the session timeout (see streams.pauses)
    fenced: list[tuple[int, float]] = []

    def fence() -> None:
        if not fenced:
            fenced.append((app.consumer_generation_id, asyncio.get_running_loop().time()))
            log.warning("records of this generation are left to their new owners until the group rejoins")

    @app.timer(interval=TICK)
    async def heartbeat() -> None:
        """Notice a freeze (SIGSTOP, a paused VM) longer than the session timeout."""
        if pauses.beat() > pauses.limit:
            fence()

    def left_to_others() -> bool:
        """True while this worker was frozen past its session and its consumer has not rejoined yet."""
        if pauses.frozen():
            fence()
        if fenced:
            generation, since = fenced[0]
            # A new generation: the group has rebalanced. No new one after a session's time: the broker had
            # not expired this member after all, and its partitions are still its own.
            waited = asyncio.get_running_loop().time() - since
            if app.consumer_generation_id != generation or waited > settings.session_timeout:
                fenced.clear()
        return bool(fenced)

    async def settled_after_freeze() -> None:
        """Hold the record in hand (unacknowledged) until the group has settled after a freeze."""
        while left_to_others():  # noqa: ASYNC110 - the group generation changes outside this loop
            await asyncio.sleep(0.2)

    def still_assigned(tp: TP) -> bool:
        try:
            return tp in app.consumer.assignment()
        except (AssertionError, KafkaError):
            return False

    async def admitted(stream: faust.StreamT) -> AsyncIterator[faust.types.EventT]:
        """The stream's records, each once and in order per partition (see streams.offsets).

        After a freeze past the session timeout, a record in hand waits until the group has settled; it is
        handled only if its partition is still this worker's (otherwise its new owner handles it).
        """
        guard = OffsetGuard(
            topics=tuple(getattr(stream.channel, "topics", ())),
            generation=lambda: app.consumer_generation_id,
            starts=resume_points,
            assigned=lambda: app.consumer.assignment(),
            seek=lambda tp, offset: app.consumer.seek(tp, offset),
            skip=lambda tp, offsets: acknowledge_missing(app.consumer, tp, offsets),
        )
        guards.append(guard)
        offsets.track(guard)
        try:
            async for record in stream.events():
                message = record.message
                bind_job(None)  # until the record is decoded, log lines are about no job
                if left_to_others():
                    await settled_after_freeze()
                    if not still_assigned(message.tp):
                        continue  # its new owner handles it; this member's offsets for it are refused
                if await guard.admit(message.tp, message.offset):
                    guard.busy = True
                    yield record
                    guard.busy = False
        finally:
            guards.remove(guard)
            offsets.untrack(guard)

    @app.timer(interval=2.0)
    async def stall_watch() -> None:
        """Catch records Faust never delivered to an agent (see streams.offsets.OffsetGuard.sweep)."""

        def log_end(tp: TP) -> int | None:
            try:
                return app.consumer.highwater(tp)
            except (AssertionError, KafkaError):  # no longer assigned (a rebalance): skip it this time
                return None

        for guard in list(guards):
            await guard.sweep(log_end)

    async def decoded(stream: faust.StreamT, *, owner: bool = True) -> AsyncIterator[Envelope]:
        """Decode each record. The topic's `owner` agent dead-letters undecodable ones; all carry on."""
        async for record in admitted(stream):
            try:
                env = decode(record.value)
            except EventDecodeError as exc:
                if owner:
                    await dead_letter(record, exc)
                continue
            bind_job(env.job_id)  # the agent's log lines about this record carry its job id
            yield env

    if "planner" in roles:
        _add_planner_and_cache(
            app,
            settings,
            requests_topic,
            events_topic,
            lane_topics,
            decoded,
            publish,
            left_to_others,
            settled_after_freeze,
            still_assigned,
        )
        analytics_topic = raw_topic(topics.analytics)

        @app.agent(
            app.topic(topics.requests, topics.events, key_serializer="raw", value_serializer="raw"),
            name="analytics",
        )
        async def analytics(stream: faust.StreamT) -> None:
            """Re-publish every event, requesters pseudonymised, for downstream consumers."""
            async for record in admitted(stream):
                try:
                    decode(record.value)  # only valid events; the others go to dead letters elsewhere
                except EventDecodeError:
                    continue
                out = pseudonymise(record.value, settings.secret)
                fut = await analytics_topic.send(key=record.key, value=out)
                await fut

    pools: list[BuildPool] = []
    for lane in LANES:
        if f"lane:{lane}" in roles:
            pools.append(
                _add_packer(
                    app, settings, lane, lane_topics[lane], events_topic, decoded, publish, worker_name
                )
            )
    app._packager_pools = pools  # type: ignore[attr-defined]  # drained by the worker on SIGTERM (cli)

    require_single_actor(app)  # the guard's order per partition needs one actor per agent
    return app


def _add_planner_and_cache(
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
    # flushed) before the append, so that after a crash the append is looked for rather than repeated.
    # Once the terminal event is read back, the entry becomes the job's end mark, kept for ENDED_KEPT:
    # records of the job read again after a rebalance must not bring its lease back to life.
    ending = app.Table("ending", default=None, partitions=settings.partitions)
    store = FileStore(Path(settings.store_directory), settings.partial_directory)
    events_name = events_topic.get_topic_name()
    seen: dict[int, int] = {}  # events partition -> the last offset the steward handled
    expiring: set[tuple[str, int]] = set()  # LeaseExpired appended, not yet read back
    pruned: dict[int, float] = {}  # events partition -> when its old end marks were last dropped

    async def end_once(job_id: str, key: str, terminal: Event, partition: int) -> None:
        """Append a job's terminal event once, even when the record asking for it is read again.

        The intent (where in the partition the event may appear, and when) is recorded first. Read again,
        the record finds it and looks ahead in the log; an append still on its way from a worker that lost
        the partition lands within the producer's timeout, so until then it looks again before appending.
        """
        tp = TP(events_name, partition)
        where = TopicPartition(events_name, partition)  # aiokafka's own type, for the reader
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
        await publish(events_topic, job_id, key, terminal)
        log.info("job ended: %s appended to events[%d]", terminal.TYPE, partition)

    async def dispatch(job_id: str, key: str, lane: str, attempt: int, record: str) -> None:
        """Queue build `attempt` of a job: the event first, so it precedes the build's own events."""
        await publish(events_topic, job_id, key, PackageQueued(cache_key=key, lane=lane, attempt=attempt))
        fut = await lane_topics[lane].send(
            key=key.encode(), value=record.encode(), headers={ATTEMPT_HEADER: str(attempt).encode()}
        )
        await fut

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
                entry = cache.get(key)
                if is_fresh(entry, settings, store):
                    await end_once(env.job_id, key, reused(key, waiter(env), entry), event.message.partition)
                    planned[env.job_id] = "cache"
                elif inflight.get(key) not in (None, env.job_id):
                    # An identical request is being built: this one completes with it.
                    waiting[key] = [*(waiting.get(key) or []), waiter(env)]
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
            return after_end(env, mark)
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
                    store.discard(store.path_of(name))
            case leases.Dispatch(lane=lane, attempt=attempt):
                log.warning("building the job again (attempt %d)", attempt)
                record = kept.get(job_id)
                if record is None:
                    log.error("the job's request is not kept; it cannot be built again")
                    await end_once(job_id, key, leases.gave_up(_unknown_request(key), 1), partition)
                else:
                    await dispatch(job_id, key, lane, attempt, record)
            case leases.GiveUp(lost=lost):
                record = kept.get(job_id)
                request = decode(record).payload if record else _unknown_request(key)
                assert isinstance(request, PackageRequested)
                log.error("the job's build was lost %d times; it fails", lost)
                await end_once(job_id, key, leases.gave_up(request, lost), partition)
        if env.type in TERMINAL_TYPES:
            if job_id in kept:
                del kept[job_id]
            mark = {"ended": True, "zip": leases.ended_zip(env), "at": time.time(), "partition": partition}
            ending[job_id] = mark
            return True
        return action is not None or after != before

    def after_end(env: Envelope, mark: dict[str, Any]) -> bool:
        """An event of an ended job: read again after a rebalance, or from a build that lost its lease.

        Nothing is appended. A build's ZIP is removed unless it is the one the job ended with (a proposal
        read again must leave the package its link points to).
        """
        if isinstance(env.payload, PackageBuilt):
            name = leases.proposed_zip(env.payload)
            if name and name != mark.get("zip"):
                log.warning("a build finished after its job had ended; its result is dropped")
                store.discard(store.path_of(name))
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
            changed = await follow_lease(env, partition)
            key, p = env.cache_key, env.payload
            if isinstance(p, PackageCompleted) and not p.cached_from:
                cache[key] = cache_entry(env, partition)
                await end_waiters(key, partition, reused, cache[key], env.job_id)
            elif isinstance(p, PackageFailed) and inflight.get(key) == env.job_id:
                await end_waiters(key, partition, shared_failure, p, env.job_id)
            elif isinstance(p, CacheCleared) and p.partition == partition:
                for cached_key, cached in list(cache.items()):
                    if cached and cached.get("partition") == partition:
                        store.discard(store.path_of(cached["zip_file_name"]))
                        del cache[cached_key]
            elif isinstance(p, PackageExpired):
                cached = cache.get(key)
                if cached and cached["job_id"] == env.job_id:
                    del cache[key]
                store.discard(store.path_of(p.zip_file_name))
            elif not changed:
                continue
            await app.producer.flush()

    def caught_up(partition: int) -> bool:
        """True when the steward has read its partition to (nearly) the end: its leases are current."""
        try:
            end = app.consumer.highwater(TP(events_name, partition))
        except (AssertionError, KafkaError):
            return False
        return end is not None and seen.get(partition, -1) >= end - 20

    @app.timer(interval=min(2.0, settings.lease_time / 6))
    async def watchdog() -> None:
        """Append LeaseExpired for every build of this worker's partitions that went silent."""
        now = time.time()
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == events_name}
        for job_id, lease in list(lease_table.items()):
            if not lease or not leases.expired(lease, now) or (job_id, lease["attempt"]) in expiring:
                continue
            if lease["partition"] not in assigned or not caught_up(lease["partition"]):
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

    @app.task
    async def sweep_at_start() -> None:
        """Remove partial files left by builds killed before this worker started."""
        await sweep_partial_files(store, settings)

    @app.timer(interval=settings.janitor_interval)
    async def janitor() -> None:
        """Sweep old partial files; expire packages older than CACHE_TIME (one PackageExpired each)."""
        await sweep_partial_files(store, settings)
        now = time.time()
        for cached_key, cached in list(cache.items()):
            if cached and is_expired(cached, settings, now):
                expired = PackageExpired(cache_key=cached_key, zip_file_name=cached["zip_file_name"])
                try:
                    await publish(events_topic, cached["job_id"], cached_key, expired)
                except KafkaError as exc:  # a timer that raises stops the worker: the next sweep tries again
                    log.warning("PackageExpired not appended yet: %r", exc)
                    return


def _unknown_request(cache_key: str) -> PackageRequested:
    """Stands in for a request the steward no longer has (it cannot happen unless a table was lost)."""
    return PackageRequested(kind="", cache_key=cache_key, resource_id="", email="", ckan_host="", request={})


def abandoned(message: Any) -> tuple[str, str] | None:
    """(appended_at, answer_deadline) when the broker stored the request after the ingress gave up on it.

    The requests topic keeps the broker's append time (LogAppendTime); the ingress puts the deadline of
    its wait in an `answer-deadline` header (milliseconds since the epoch).
    """
    if message.timestamp_type != LOG_APPEND_TIME or message.timestamp is None:
        return None
    deadline = dict(message.headers or ()).get(ANSWER_DEADLINE_HEADER)
    if not deadline:
        return None
    try:
        appended_ms, deadline_ms = int(message.timestamp * 1000), int(deadline)
    except ValueError:
        return None  # not a deadline the ingress wrote
    if appended_ms <= deadline_ms:
        return None
    return iso_ms(appended_ms), iso_ms(deadline_ms)


def readable_job_id(raw: bytes) -> str:
    """The `job_id` of a record that is not a valid event, when it has a readable one; else ""."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    job_id = doc.get("job_id") if isinstance(doc, dict) else None
    return job_id[:100] if isinstance(job_id, str) else ""


async def sweep_partial_files(store: FileStore, settings: Settings) -> None:
    """Remove partial files a killed build left behind (see FileStore.sweep_partials)."""
    removed = await asyncio.to_thread(store.sweep_partials, settings.partial_max_age)
    if removed:
        log.warning("removed %d partial file(s) left by builds that were killed", len(removed))


def changelog_topics(app: faust.App) -> list[str]:
    """Names of the changelog topics of the app's tables, to be created before the worker subscribes."""
    return [table.changelog_topic.get_topic_name() for table in app.tables.values()]


def _add_packer(
    app: faust.App,
    settings: Settings,
    lane: str,
    topic: Any,
    events_topic: Any,
    decoded: Any,
    publish: Any,
    worker_name: str,
) -> BuildPool:
    """Register the packer agent of one lane; its builds run in a `BuildPool` (see streams.builds)."""
    store = FileStore(Path(settings.store_directory), settings.partial_directory)

    async def emit(request: Envelope, payload: Event) -> None:
        await publish(events_topic, request.job_id, request.cache_key, payload)

    def context(session: aiohttp.ClientSession, request: Envelope, attempt: int) -> JobContext:
        async def emit_for_job(payload: Event) -> None:
            await emit(request, payload)

        return JobContext(
            settings=settings,
            session=session,
            store=store,
            resolve=system_resolver,
            emit=emit_for_job,
            worker=worker_name,
            attempt=attempt,
        )

    pool = BuildPool(
        lane,
        capacity=settings.worker_concurrency,
        drain_timeout=settings.drain_timeout,
        worker=worker_name,
        emit=emit,
        make_context=context,
        open_session=lambda: http_session(settings),
    )

    async def packer(stream: faust.StreamT) -> None:
        async with pool.serving():
            async for env in decoded(stream):
                attempt = attempt_of(faust.current_event().message)  # type: ignore[union-attr]
                await pool.start(env, attempt)

    app.agent(topic, name=f"packer-{lane}")(packer)
    return pool


ATTEMPT_HEADER = "attempt"


def attempt_of(message: Any) -> int:
    """The build number a lane record asks for (its `attempt` header; 1 when it has none)."""
    raw = dict(message.headers or ()).get(ATTEMPT_HEADER)
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        return 1


def build_pools(app: faust.App) -> list[BuildPool]:
    """The build pools of the app's lanes (drained on SIGTERM by the worker command)."""
    return list(getattr(app, "_packager_pools", []))
