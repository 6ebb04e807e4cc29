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
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import faust

from packager.errors import EventDecodeError
from packager.events import (
    TERMINAL_TYPES,
    Envelope,
    Event,
    PackageQueued,
    decode,
    encode,
    envelope,
)
from packager.ingress import system_resolver
from packager.jobs import JobContext, run_job
from packager.kafka_log import LANES, Topics
from packager.settings import Settings
from packager.store import FileStore
from projections.jobs import JobState
from streams.handlers import notify, plan_lane

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
        topic_replication_factor=1,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        datadir=str(Path(settings.store_directory) / ".faust"),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
    )
    worker_name = f"{socket.gethostname()}:{os.getpid()}"

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
        return env

    async def dead_letter(record: faust.types.EventT, error: EventDecodeError) -> None:
        log.error("undecodable record on %s: %s", record.message.topic, error.message)
        value = record.value if isinstance(record.value, bytes) else repr(record.value).encode()
        fut = await dead_letters.send(
            key=record.key if isinstance(record.key, bytes) else None,
            value=value,
            headers={"error": error.message.encode(), "source_topic": record.message.topic.encode()},
        )
        await fut

    async def decoded(stream: faust.StreamT) -> AsyncIterator[Envelope]:
        """Decode each record; undecodable ones go to the dead-letter topic and the agent carries on."""
        async for record in stream.events():
            try:
                yield decode(record.value)
            except EventDecodeError as exc:
                await dead_letter(record, exc)

    if "planner" in roles:
        planned = app.Table("planned", default=None, partitions=settings.partitions)

        @app.agent(requests_topic, name="planner")
        async def planner(stream: faust.StreamT) -> None:
            async with aiohttp.ClientSession(timeout=http_timeout(settings)) as session:
                async for env in decoded(stream):
                    if planned.get(env.job_id) is not None:
                        continue  # redelivered: already on its lane
                    lane = await plan_lane(env, settings, session)
                    fut = await lane_topics[lane].send(key=env.cache_key.encode(), value=encode(env))
                    await fut
                    queued = PackageQueued(cache_key=env.cache_key, lane=lane)
                    await publish(events_topic, env.job_id, env.cache_key, queued)
                    planned[env.job_id] = lane
                    await app.producer.flush()

    for lane in LANES:
        if f"lane:{lane}" in roles:
            _add_packer(app, settings, lane, lane_topics[lane], events_topic, decoded, publish, worker_name)

    if "mailer" in roles:
        emailed = app.Table("emailed", default=None, partitions=settings.partitions)

        @app.agent(events_topic, name="mailer")
        async def mailer(stream: faust.StreamT) -> None:
            async for env in decoded(stream):
                if env.type not in TERMINAL_TYPES or emailed.get(env.job_id) is not None:
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
                terminal = await run_job(env, lane, ctx)
                await emit(terminal)
                state = "completed" if terminal.TYPE == "PackageCompleted" else "failed"
                jobs[env.job_id] = JobState(job_id=env.job_id, state=state, lane=lane).to_dict()
                await app.producer.flush()  # see the mailer: shrinks the re-run window to milliseconds

    app.agent(topic, name=f"packer-{lane}")(packer)
