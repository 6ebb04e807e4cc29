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
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka.errors import KafkaError
from faust.types import TP

from packager.adapters import metrics
from packager.adapters.kafka_log import LANES, Topics
from packager.core.errors import EventDecodeError
from packager.core.logs import bind_job
from packager.core.settings import Settings
from packager.domain.events import (
    Envelope,
    Event,
    RecordRejected,
    decode,
    encode,
    envelope,
)
from projections.analytics import pseudonymise
from streams import offsets
from streams.build_stops import CancelledJobs, follow_cancellations
from streams.builds import BuildPool
from streams.offsets import (
    OffsetGuard,
    ResumePoints,
    acknowledge_missing,
    group_starts,
    patch_commit_offsets,
    require_single_actor,
)
from streams.packers import add_packer
from streams.pauses import TICK, PauseWatch
from streams.recovery_watch import add_recovery_watch
from streams.steward import APPEND_TIMEOUT, add_planner_and_steward
from streams.transport import SCHEME

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
                        # Its new owner handles it. Faust acknowledges it all the same; should the partition
                        # come back to this member, no commit may pass it before it is read again.
                        offsets.dropped(message.tp, message.offset)
                        continue
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
            if app.in_recovery:
                # Stream partitions are paused while tables are restored: nothing is due to any agent yet
                # (a stalled recovery is streams.recovery_watch's to handle).
                guard.behind_since.clear()
                continue
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
        add_planner_and_steward(
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
                out = pseudonymise(record.value, settings.pseudonym_key)
                fut = await analytics_topic.send(key=record.key, value=out)
                await fut

    pools: list[BuildPool] = []
    cancelled_jobs = CancelledJobs()
    for lane in LANES:
        if f"lane:{lane}" in roles:
            pools.append(
                add_packer(
                    app,
                    settings,
                    lane,
                    lane_topics[lane],
                    events_topic,
                    decoded,
                    publish,
                    worker_name,
                    cancelled=cancelled_jobs,
                )
            )
    if pools:

        @app.task
        async def stop_cancelled_builds() -> None:
            """Stop this worker's builds of jobs cancelled while they run (streams.build_stops)."""
            await follow_cancellations(
                settings.kafka_bootstrap_servers, topics.events, settings.partitions, pools, cancelled_jobs
            )

    app._packager_pools = pools  # type: ignore[attr-defined]  # drained by the worker on SIGTERM (cli)

    add_recovery_watch(app, clock=time.monotonic)
    require_single_actor(app)  # the guard's order per partition needs one actor per agent
    return app


def readable_job_id(raw: bytes) -> str:
    """The `job_id` of a record that is not a valid event, when it has a readable one; else ""."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    job_id = doc.get("job_id") if isinstance(doc, dict) else None
    return job_id[:100] if isinstance(job_id, str) else ""


def changelog_topics(app: faust.App) -> list[str]:
    """Names of the changelog topics of the app's tables, to be created before the worker subscribes."""
    return [table.changelog_topic.get_topic_name() for table in app.tables.values()]


def build_pools(app: faust.App) -> list[BuildPool]:
    """The build pools of the app's lanes (drained on SIGTERM by the worker command)."""
    return list(getattr(app, "_packager_pools", []))
