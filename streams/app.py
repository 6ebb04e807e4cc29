"""The Faust application: topics, tables and agents, wired for the roles one worker process serves.

All workers share one consumer group (the app id). Faust's assignor only gives a member partitions of the
topics it subscribes to, so a worker that serves only the slow lane never receives fast-lane work. Each lane
has its own job table, whose changelog is subscribed by exactly the workers of that lane and so stays
co-partitioned with the lane's topic.

Agents are thin: decode, consult the table, call a handler from `streams.handlers`, emit, record.
Delivery is at-least-once; effects are made idempotent by job id (see DESIGN.md on exactly-once).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import orjson
from aiokafka.errors import KafkaError
from faust.types import TP

from packager import metrics
from packager.analytics import pseudonymise
from packager.errors import EventDecodeError
from packager.events import (
    NOTIFIED_TYPES,
    CacheCleared,
    Envelope,
    Event,
    PackageCompleted,
    PackageExpired,
    PackageFailed,
    PackageQueued,
    RecordRejected,
    RequestAbandoned,
    decode,
    encode,
    envelope,
)
from packager.ingress import system_resolver
from packager.jobs import JobContext, run_job
from packager.kafka_log import ANSWER_DEADLINE_HEADER, LANES, LOG_APPEND_TIME, Topics, iso_ms
from packager.logs import bind_job
from packager.settings import Settings
from packager.store import FileStore
from projections.jobs import JobState
from streams.cache import cache_entry, is_expired, is_fresh, reused, shared_failure, waiter
from streams.handlers import notify, plan_lane
from streams.offsets import (
    OffsetGuard,
    ResumePoints,
    acknowledge_missing,
    group_starts,
    patch_commit_offsets,
)

log = logging.getLogger(__name__)

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
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        datadir=str(Path(settings.store_directory) / ".faust"),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
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

    async def admitted(stream: faust.StreamT) -> AsyncIterator[faust.types.EventT]:
        """The stream's records, each once and in order per partition (see streams.offsets)."""
        guard = OffsetGuard(
            topics=tuple(getattr(stream.channel, "topics", ())),
            generation=lambda: app.consumer_generation_id,
            starts=resume_points,
            assigned=lambda: app.consumer.assignment(),
            seek=lambda tp, offset: app.consumer.seek(tp, offset),
            skip=lambda tp, offsets: acknowledge_missing(app.consumer, tp, offsets),
        )
        guards.append(guard)
        try:
            async for record in stream.events():
                message = record.message
                bind_job(None)  # until the record is decoded, log lines are about no job
                if await guard.admit(message.tp, message.offset):
                    guard.busy = True
                    yield record
                    guard.busy = False
        finally:
            guards.remove(guard)

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
        _add_planner_and_cache(app, settings, requests_topic, events_topic, lane_topics, decoded, publish)
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

    for lane in LANES:
        if f"lane:{lane}" in roles:
            _add_packer(app, settings, lane, lane_topics[lane], events_topic, decoded, publish, worker_name)

    if "mailer" in roles:
        emailed = app.Table("emailed", default=None, partitions=settings.partitions)

        @app.agent(events_topic, name="mailer")
        async def mailer(stream: faust.StreamT) -> None:
            async for env in decoded(stream, owner=False):  # the cache keeper dead-letters
                if env.type not in NOTIFIED_TYPES or emailed.get(env.job_id) is not None:
                    continue
                outcome = await notify(settings, env)
                if outcome is None:
                    continue  # failure notices are turned off
                await publish(events_topic, env.job_id, env.cache_key, outcome)
                emailed[env.job_id] = outcome.TYPE
                # Flush the table's changelog now: after a crash, a redelivered terminal event finds the
                # record and is not emailed again. The window left is between the SMTP server accepting
                # the message and this flush completing (milliseconds).
                await app.producer.flush()

    return app


def _add_planner_and_cache(
    app: faust.App,
    settings: Settings,
    requests_topic: Any,
    events_topic: Any,
    lane_topics: dict[str, Any],
    decoded: Any,
    publish: Any,
) -> None:
    """The planner (requests -> cache hit, shared build or a lane) and the cache keeper (events -> index).

    Both read and write the same tables while processing partition p of topics keyed alike, so the tables
    stay co-partitioned with the requests topic.
    """
    planned = app.Table("planned", default=None, partitions=settings.partitions)
    cache = app.Table("cache", default=None, partitions=settings.partitions)
    inflight = app.Table("inflight", default=None, partitions=settings.partitions)
    waiting = app.Table("waiting", default=None, partitions=settings.partitions)
    store = FileStore(Path(settings.store_directory), settings.partial_directory)

    @app.agent(requests_topic, name="planner")
    async def planner(stream: faust.StreamT) -> None:
        async with aiohttp.ClientSession(timeout=http_timeout(settings)) as session:
            async for env in decoded(stream):
                if planned.get(env.job_id) is not None:
                    continue  # redelivered: already handled
                key = env.cache_key
                if (late := abandoned(faust.current_event().message)) is not None:  # type: ignore[union-attr]
                    log.warning("request stored after the ingress answered 503; not building it")
                    await publish(events_topic, env.job_id, key, RequestAbandoned(key, *late))
                    planned[env.job_id] = "abandoned"
                    await app.producer.flush()
                    continue
                entry = cache.get(key)
                if is_fresh(entry, settings, store):
                    await publish(events_topic, env.job_id, key, reused(key, waiter(env), entry))
                    planned[env.job_id] = "cache"
                elif inflight.get(key) not in (None, env.job_id):
                    # An identical request is being built: this one completes with it.
                    waiting[key] = [*(waiting.get(key) or []), waiter(env)]
                    planned[env.job_id] = "shared"
                else:
                    inflight[key] = env.job_id
                    lane = await plan_lane(env, settings, session)
                    fut = await lane_topics[lane].send(key=key.encode(), value=encode(env))
                    await fut
                    await publish(events_topic, env.job_id, key, PackageQueued(cache_key=key, lane=lane))
                    planned[env.job_id] = lane
                await app.producer.flush()

    @app.agent(events_topic, name="cache-keeper")
    async def cache_keeper(stream: faust.StreamT) -> None:
        async for env in decoded(stream):
            partition = faust.current_event().message.partition  # type: ignore[union-attr]
            key, p = env.cache_key, env.payload
            if isinstance(p, PackageCompleted) and not p.cached_from:
                cache[key] = cache_entry(env, partition)
                if inflight.get(key) == env.job_id:
                    del inflight[key]
                for who in waiting.pop(key, None) or []:
                    await publish(events_topic, who["job_id"], key, reused(key, who, cache[key]))
            elif isinstance(p, PackageFailed) and inflight.get(key) == env.job_id:
                del inflight[key]
                for who in waiting.pop(key, None) or []:
                    await publish(events_topic, who["job_id"], key, shared_failure(key, who, p))
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
            else:
                continue
            await app.producer.flush()

    @app.timer(interval=settings.janitor_interval)
    async def janitor() -> None:
        """Expire packages older than CACHE_TIME: one PackageExpired each, handled by the cache keeper."""
        now = time.time()
        for cached_key, cached in list(cache.items()):
            if cached and is_expired(cached, settings, now):
                expired = PackageExpired(cache_key=cached_key, zip_file_name=cached["zip_file_name"])
                await publish(events_topic, cached["job_id"], cached_key, expired)


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


def http_timeout(settings: Settings) -> aiohttp.ClientTimeout:
    """Connect and read timeouts for every outgoing HTTP request (no total: big files take long)."""
    return aiohttp.ClientTimeout(
        total=None, sock_connect=settings.fetch_connect_timeout, sock_read=settings.fetch_read_timeout
    )


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
) -> None:
    """Register the packer agent and job table of one lane."""
    jobs = app.Table(f"jobs-{lane}", default=None, partitions=settings.partitions)
    store = FileStore(Path(settings.store_directory), settings.partial_directory)
    timeout = http_timeout(settings)

    async def packer(stream: faust.StreamT) -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async for env in decoded(stream):
                known = jobs.get(env.job_id)
                if known is not None and JobState.from_dict(known).terminal:
                    continue  # redelivered after it finished: never package twice

                async def emit(payload: Event, env: Envelope = env) -> None:
                    await publish(events_topic, env.job_id, env.cache_key, payload)

                ctx = JobContext(
                    settings=settings,
                    session=session,
                    store=store,
                    resolve=system_resolver,
                    emit=emit,
                    worker=worker_name,
                )
                terminal = await metrics.observed_job(lane, run_job(env, lane, ctx))
                await emit(terminal)
                state = "completed" if terminal.TYPE == "PackageCompleted" else "failed"
                jobs[env.job_id] = JobState(job_id=env.job_id, state=state, lane=lane).to_dict()
                await app.producer.flush()  # see the mailer: shrinks the re-run window to milliseconds

    app.agent(topic, name=f"packer-{lane}")(packer)
