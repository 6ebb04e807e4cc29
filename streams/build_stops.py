"""Stopping the builds of cancelled jobs: every worker with a lane follows the events topic for them.

A job's build runs on whichever worker took its lane record, while its cancellation (`PackageCancelled`,
appended by the job's steward) lands in the job's partition of the events topic, which that worker may not
own. So each worker serving a lane reads the tail of every partition of the events topic outside any
consumer group, looks only at `PackageCancelled` records (a byte test before any decoding), and stops the
job's builds in its pools at once; the job id is remembered so that a lane record of the job read later is
skipped. A worker that starts reads from the end: a lane record of a job cancelled before it started is
built, and its result dropped by the steward (the job has ended).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from packager.core.errors import EventDecodeError
from packager.domain.events import PackageCancelled, decode
from streams.builds import BuildPool

log = logging.getLogger(__name__)

# orjson writes an envelope without spaces, `type` after `event_id`: a cancellation record contains this.
_MARK = b'"type":"' + PackageCancelled.TYPE.encode() + b'"'
REMEMBERED = 100_000  # cancelled job ids kept, most recent first out last


class CancelledJobs:
    """The ids of the jobs this worker has read a cancellation of (the most recent REMEMBERED)."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, job_id: str) -> None:
        """Remember a cancelled job."""
        self._ids[job_id] = None
        self._ids.move_to_end(job_id)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids


def cancelled_job(raw: bytes | None) -> str | None:
    """The job id of a `PackageCancelled` record; None for any other record."""
    if not raw or _MARK not in raw:
        return None
    try:
        env = decode(raw)
    except EventDecodeError:
        return None
    return env.job_id if env.type == PackageCancelled.TYPE else None


def stop_builds(job_id: str, pools: Iterable[BuildPool], cancelled: CancelledJobs) -> int:
    """Remember the job as cancelled and stop its builds in `pools`; how many were stopped."""
    cancelled.add(job_id)
    stopped = sum(pool.stop(job_id) for pool in pools)
    if stopped:
        log.warning("build stopped: the job was cancelled", extra={"job_id": job_id})
    return stopped


async def follow_cancellations(
    bootstrap_servers: str, topic: str, partitions: int, pools: list[BuildPool], cancelled: CancelledJobs
) -> None:
    """Read the events topic's tail for ever, stopping the builds of every job cancelled meanwhile."""
    while True:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        try:
            await consumer.start()
            every = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(every)
            await consumer.seek_to_end(*every)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        if (job_id := cancelled_job(record.value)) is not None:
                            stop_builds(job_id, pools, cancelled)
        except (KafkaError, OSError) as exc:  # the brokers went away: read on from the end once back
            log.warning("cannot follow cancellations for now: %r", exc)
            await asyncio.sleep(1.0)
        finally:
            await consumer.stop()
