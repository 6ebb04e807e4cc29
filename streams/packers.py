"""The packers: one agent per lane reads build requests and runs them in a `BuildPool` (streams.builds).

A lane record carries the build's attempt number in its `attempt` header (set by the steward when it
dispatches a job again); the build's events, terminal proposal included, go to the events topic.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Container, Iterator
from typing import Any

import aiohttp
import faust

from packager.adapters.http_client import http_session
from packager.adapters.resolver import system_resolver
from packager.adapters.stores import open_store
from packager.core.settings import Settings
from packager.domain.events import (
    Envelope,
    Event,
)
from packager.service.packaging import JobContext
from streams.builds import BuildPool

log = logging.getLogger(__name__)


ATTEMPT_HEADER = "attempt"


def lane_partitions(partitions: int) -> Iterator[int]:
    """The partitions of a lane topic to send its records to, in turn (from a random one): builds spread
    evenly over the workers serving the lane, whatever the cache keys hash to. Nothing needs a key's lane
    record in the key's partition: the steward dedupes a key's builds itself and records where each lane
    record went (the watchdog's `lane_records`), and cancellations reach every worker (streams.build_stops).
    """
    return (n % partitions for n in itertools.count(random.randrange(partitions)))


def add_packer(
    app: faust.App,
    settings: Settings,
    lane: str,
    topic: Any,
    events_topic: Any,
    decoded: Any,
    publish: Any,
    worker_name: str,
    cancelled: Container[str] = frozenset(),
) -> BuildPool:
    """Register the packer agent of one lane; its builds run in a `BuildPool` (see streams.builds)."""
    store = open_store(settings)

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
        cancelled=cancelled,
    )

    async def packer(stream: faust.StreamT) -> None:
        async with pool.serving():
            async for env in decoded(stream):
                attempt = attempt_of(faust.current_event().message)  # type: ignore[union-attr]
                await pool.start(env, attempt)

    app.agent(topic, name=f"packer-{lane}")(packer)
    return pool


def attempt_of(message: Any) -> int:
    """The build number a lane record asks for (its `attempt` header; 1 when it has none)."""
    raw = dict(message.headers or ()).get(ATTEMPT_HEADER)
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        return 1
