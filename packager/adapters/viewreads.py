"""Adapter: the ingress's reads of the views, off the event loop, on a small pool of connections.

The ingress keeps no read model of its own: every `/status`, `/statistics*` and `/jobs/*` answer is a query
on the views the projector writes (`packager.adapters.viewdb`). Queries run in a few threads, each borrowing
one of up to `POOL_SIZE` connections (SQLite: read connections on the WAL file; PostgreSQL: sessions in
autocommit mode), so any number of ingress processes can share one database. Whether the read side is
usable (`readiness`) is the views being reachable and the projector's lag, from its tracking records
against the log's end offsets, and whether the projector reported a problem (a fold that raised, its loop
being restarted) in its status row: then the ingress is ready but "degraded".
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from packager.adapters import projector_shares, view_queries
from packager.adapters.kafka_log import Topics
from packager.adapters.readside import identity_for, topic_partitions
from packager.adapters.view_queries import Usage, UsageAsked
from packager.adapters.viewdb import ViewDatabase, ViewsUnavailable, database_url
from packager.core.settings import Settings
from projections.jobs import JobState

T = TypeVar("T")

POOL_SIZE = 4
WATCH_INTERVAL = 0.25  # seconds between two looks at a watched job
WATCH_HEARTBEAT = 15.0  # seconds without news after which a watcher is given a heartbeat (None)
END_OFFSETS_TTL = 2.0  # seconds the log's end offsets are reused between probes


class ReadViews:
    """The views as the ingress reads them."""

    def __init__(self, settings: Settings, *, url: str | None = None) -> None:
        self.settings = settings
        self.db = ViewDatabase(url or database_url(settings))
        self.identity = identity_for(settings)
        self._connections: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._executor = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="views")
        self._ends: tuple[float, dict[tuple[str, int], int]] | None = None

    async def close(self) -> None:
        """Close the threads and every pooled connection."""
        self._executor.shutdown(wait=True)
        while True:
            try:
                conn = self._connections.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()

    def _with_connection(self, work: Callable[[Any], T]) -> T:
        try:
            conn = self._connections.get_nowait()
        except queue.Empty:
            conn = self.db.connect()
        try:
            result = work(conn)
        except ViewsUnavailable:
            conn.close()
            raise
        except self.db.errors as exc:  # a missing table, a lost server: the views are not usable now
            with contextlib.suppress(Exception):
                conn.close()
            raise ViewsUnavailable(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._connections.put(conn)
        return result

    async def run(self, work: Callable[[Any], T]) -> T:
        """Run `work(connection)` on a pooled connection in a thread; ViewsUnavailable when it fails."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._with_connection, work)

    async def job(self, job_id: str) -> JobState | None:
        """One job's state."""
        return await self.run(lambda conn: self.db.job(conn, job_id))

    async def job_request(self, job_id: str) -> dict[str, Any] | None:
        """What the job asked for (its format and query), or None."""
        return await self.run(lambda conn: self.db.job_request(conn, job_id))

    async def counters(self) -> tuple[int, int]:
        """(accepted, finished)."""
        return await self.run(self.db.counters)

    async def worker_counts(self) -> dict[str, int]:
        """Entries of the worker's cache index, builds in flight, and requests waiting behind them."""
        return await self.run(self.db.worker_counts)

    async def totals(self, resource_id: str | None) -> dict[str, dict[str, int]]:
        """`/statistics` totals."""
        return await self.run(lambda conn: self.db.totals(conn, resource_id))

    async def listing(self, kind: str, **filters: Any) -> list[dict[str, Any]]:
        """`/statistics/requests` or `/statistics/errors`."""
        return await self.run(lambda conn: self.db.listing(conn, kind, **filters))

    async def daily(self, *, since: float, resource_id: str | None) -> dict[int, tuple[int, int, int]]:
        """Requests, errors and unique requesters per UTC day since `since`."""
        return await self.run(
            lambda conn: view_queries.daily(self.db, conn, since=since, resource_id=resource_id)
        )

    async def requester(self, job_id: str) -> tuple[str, str, bool] | None:
        """(pseudonym, domain, erased) of the job's requester."""
        return await self.run(lambda conn: self.db.requester(conn, job_id))

    async def zip_was_built(self, name: str) -> bool:
        """True when some job completed with this ZIP."""
        return await self.run(lambda conn: self.db.zip_was_built(conn, name))

    async def usage(self, asked: UsageAsked) -> Usage:
        """What the fair limits count, and how far the views have read the log (`view_queries.usage`)."""
        return await self.run(lambda conn: view_queries.usage(self.db, conn, asked))

    async def positions(self) -> dict[tuple[str, int], int]:
        """The projector's tracking records."""
        return await self.run(self.db.positions)

    async def projector_status(self) -> str:
        """What went wrong in the projectors writing these views ("" when nothing did): their `meta` rows."""
        found = await self.run(lambda conn: projector_shares.statuses(self.db, conn))
        return projector_shares.problems(found)

    async def watch(
        self, job_id: str, until: Callable[[JobState], bool] = attrgetter("terminal")
    ) -> AsyncIterator[JobState | None]:
        """The job's state now and after every change seen, until `until(state)` (by default: until it is
        terminal); None after every WATCH_HEARTBEAT seconds without news, so that the caller writes
        something and notices a client that went away (aiohttp does not cancel a handler when its client
        disconnects)."""
        last: JobState | None = None
        quiet_since = time.monotonic()
        while True:
            current = await self.job(job_id)
            if current is not None and current != last:
                yield current
                if until(current):
                    return
                last, quiet_since = current, time.monotonic()
            elif time.monotonic() - quiet_since >= WATCH_HEARTBEAT:
                yield None
                quiet_since = time.monotonic()
            await asyncio.sleep(WATCH_INTERVAL)

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records on each partition of the log not yet in the views (the log's ends are cached briefly)."""
        now = time.monotonic()
        if self._ends is None or now - self._ends[0] > END_OFFSETS_TTL:
            self._ends = (now, await log_end_offsets(self.settings))
        ends = self._ends[1]
        positions = await self.positions()
        return {where: max(0, end - positions.get(where, 0)) for where, end in ends.items()}


async def log_end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """The next offset of every partition of the requests and events topics."""
    topics = Topics(settings.topic_prefix)
    bootstrap = settings.kafka_bootstrap_servers
    partitions = await topic_partitions(bootstrap, [topics.requests, topics.events])
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: Mapping[TopicPartition, int] = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): end for tp, end in ends.items()}
