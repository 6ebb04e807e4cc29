"""Every record, once, in order: a guard between Faust's consumer and each agent.

faust-streaming 0.15.3 can hand an agent the records of a partition with a hole in them right after a
partition is assigned: its recovery resumes the stream partitions before it seeks them to the committed
offsets, and records fetched in between can be dropped (upstream issues #216 and #221). Its commit logic
then lets the offset move past the hole, because it takes a committed offset for the last record processed
rather than the next one to read (upstream issue #606). A worker restarted after a crash lost jobs and
emails that way in this project's fault suite.

`OffsetGuard` keeps, per agent and partition, the next offset that agent must see. The first record of a
partition in a consumer generation is compared with the group's committed offset. A record past the
expected offset means records were skipped: the guard seeks the partition back and drops records until the
missing one arrives, so nothing is processed out of order or left out. A record before it was already
processed and is dropped too (agents are idempotent by job id anyway). `patch_commit_offsets` makes Faust
stop committing past a record no agent has acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.consumer import Consumer
from faust.types import TP

log = logging.getLogger(__name__)

# How long the guard waits for a re-read partition to deliver the missing record before seeking again, and
# how many times it seeks before it accepts the hole (records removed by retention, say) and carries on.
RESEEK_AFTER = 10.0
MAX_SEEKS = 3
# How long a partition may hold records past what an idle agent has seen before `sweep` reads it again.
STALL_AFTER = 5.0
SWEEP_TIMEOUT = 5.0

Seek = Callable[[TP, int], Awaitable[None]]
Starts = Callable[[str, list[int]], Awaitable[dict[int, int]]]
Skip = Callable[[TP, range], None]


@dataclass
class OffsetGuard:
    """Admits each record of an agent's stream once, in offset order per partition.

    Holes show up two ways: a record past the expected offset arrives (`admit` seeks back at once), or the
    missing records were the last ones and nothing arrives at all; `sweep`, run on a timer, catches those: a
    partition whose log end is past the expected offset while the agent sits idle for `STALL_AFTER` seconds
    is read again from the expected offset.
    """

    topics: tuple[str, ...]
    generation: Callable[[], int]
    starts: Starts  # topic, partitions -> the offset the group resumes each partition from
    assigned: Callable[[], Iterable[TP]]  # the partitions this worker holds now
    seek: Seek
    skip: Skip  # marks offsets that will never arrive as done, so commits can pass them
    busy: bool = False  # the agent holds a record (set by the caller around each record)
    expected: dict[TP, int] = field(default_factory=dict)
    seeking: dict[TP, tuple[float, int]] = field(default_factory=dict)  # tp -> (since, seeks so far)
    progress_at: dict[TP, float] = field(default_factory=dict)  # when `expected` last moved
    behind_since: dict[TP, float] = field(default_factory=dict)  # first sweep that saw the log end past it
    _generation: int | None = None

    def _follow_generation(self) -> None:
        generation = self.generation()
        if generation != self._generation:
            # A rebalance: positions start again from the committed offsets.
            self._generation = generation
            self.expected.clear()
            self.seeking.clear()
            self.progress_at.clear()
            self.behind_since.clear()

    async def _learn(self, topic: str, partitions: list[int]) -> None:
        """Where each of `partitions` starts in this generation (the group's committed offsets).

        Keeps asking while the broker does not answer: the agent cannot get further without it anyway.
        """
        delay = 0.5
        while True:
            try:
                async with asyncio.timeout(SWEEP_TIMEOUT * 2):
                    starts = await self.starts(topic, partitions)
                break
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("cannot read the committed offsets of %s yet: %r", topic, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        now = time.monotonic()
        for partition, start in starts.items():
            tp = TP(topic, partition)
            if tp not in self.expected:
                self.expected[tp] = start
                self.progress_at[tp] = now

    def _assigned(self, topic: str) -> list[int]:
        return sorted(tp.partition for tp in self.assigned() if tp.topic == topic)

    async def admit(self, tp: TP, offset: int) -> bool:
        """True when the agent should process this record; False to drop it."""
        self._follow_generation()
        if tp not in self.expected:
            await self._learn(tp.topic, sorted({tp.partition, *self._assigned(tp.topic)}))
        expected = self.expected.get(tp, offset)
        if offset < expected:
            return False  # processed already: the partition was read again from further back
        if offset > expected:
            since, seeks = self.seeking.get(tp, (0.0, 0))
            if seeks >= MAX_SEEKS and time.monotonic() - since >= RESEEK_AFTER:
                log.error(
                    "records %s[%d] %d-%d never arrived; carrying on",
                    tp.topic,
                    tp.partition,
                    expected,
                    offset - 1,
                )
                self.skip(tp, range(expected, offset))
            elif seeks == 0 or time.monotonic() - since >= RESEEK_AFTER:
                log.warning(
                    "records %s[%d] %d-%d were skipped by the consumer; reading them again",
                    tp.topic,
                    tp.partition,
                    expected,
                    offset - 1,
                )
                self.seeking[tp] = (time.monotonic(), seeks + 1)
                await self.seek(tp, expected)
                return False
            else:
                return False  # waiting for the re-read partition to reach the missing record
        self.seeking.pop(tp, None)
        self.expected[tp] = offset + 1
        self.progress_at[tp] = time.monotonic()
        return True

    async def sweep(self, log_end: Callable[[TP], int | None]) -> None:
        """Read again any partition with records this agent never got while it sat idle."""
        self._follow_generation()
        mine = [tp for tp in self.assigned() if tp.topic in self.topics]
        for topic in {tp.topic for tp in mine if tp not in self.expected}:
            try:
                async with asyncio.timeout(SWEEP_TIMEOUT):
                    await self._learn(topic, self._assigned(topic))
            except TimeoutError:
                return  # the broker is away: try again on the next sweep
        now = time.monotonic()
        for tp in mine:
            end, expected = log_end(tp), self.expected.get(tp)
            if self.busy or end is None or expected is None or end <= expected:
                self.behind_since.pop(tp, None)
                continue
            # Behind, idle, and no progress on this partition for STALL_AFTER: records in flight arrive
            # well within that.
            since = max(self.behind_since.setdefault(tp, now), self.progress_at.get(tp, 0.0))
            if now - since < STALL_AFTER:
                continue
            log.warning(
                "records %s[%d] %d-%d were never delivered; reading them again",
                tp.topic,
                tp.partition,
                expected,
                end - 1,
            )
            self.behind_since[tp] = now
            try:
                await self.seek(tp, expected)
            except (KafkaError, AssertionError) as exc:  # aiokafka asserts the partition is still assigned
                log.warning("could not re-read %s[%d]: %r", tp.topic, tp.partition, exc)


@dataclass
class ResumePoints:
    """Where the group resumes each partition in the current consumer generation.

    Read from the broker once per partition and generation and shared by every agent's guard (three agents
    read the events topic); the commit rule falls back on it when Faust has no committed offset.
    """

    fetch: Starts
    generation: Callable[[], int]
    points: dict[TP, int] = field(default_factory=dict)
    _generation: int | None = None

    async def __call__(self, topic: str, partitions: list[int]) -> dict[int, int]:
        """The resume point of each of `partitions` of `topic`."""
        if (generation := self.generation()) != self._generation:
            self._generation = generation
            self.points.clear()
        if missing := [p for p in partitions if TP(topic, p) not in self.points]:
            for partition, start in (await self.fetch(topic, missing)).items():
                self.points[TP(topic, partition)] = start
        return {p: self.points[TP(topic, p)] for p in partitions}


def group_starts(bootstrap: str, group: str) -> Starts:
    """Where `group` resumes partitions: its committed offset, else the log start (auto reset: earliest)."""

    async def starts(topic: str, partitions: list[int]) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:
            await consumer.start()
            beginnings = await consumer.beginning_offsets(tps)
            result = {}
            for tp in tps:
                committed = await consumer.committed(tp)
                result[tp.partition] = committed if committed is not None else beginnings[tp]
            return result
        finally:
            await consumer.stop()

    return starts


def _new_offset(self: Consumer, tp: TP) -> int | None:
    """Faust's `Consumer._new_offset`, without committing past an unacknowledged record.

    The acknowledged offsets are sorted; the committable offset is one past the first consecutive run, but
    only if that run starts at the committed offset (the next record to read). Faust's "gaps" (offsets its
    fetch loop saw no record for) are not taken as acknowledged: the topics agents read here are neither
    compacted nor transactional, so a gap is a record the agent has not had yet, and the guard reads it
    again; offsets that truly never come are acknowledged by the guard (`acknowledge_missing`).
    """
    self._gap[tp].clear()
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    committed = self._committed_offset[tp]
    if committed is None and _resume_points is not None:
        # Faust keeps None both for "never committed" and for a commit at offset 0.
        committed = _resume_points.points.get(tp)
    if committed is not None and acked[0] > committed:
        return None  # the record at `committed` is still being processed
    run = 1
    while run < len(acked) and acked[run] == acked[run - 1] + 1:
        run += 1
    batch = acked[:run]
    del acked[:run]
    self._acked_index[tp].difference_update(batch)
    return batch[-1] + 1


def acknowledge_missing(consumer: Consumer, tp: TP, offsets: range) -> None:
    """Count offsets that will never be delivered (removed by retention, say) as acknowledged."""
    index = consumer._acked_index[tp]
    fresh = [o for o in offsets if o not in index]
    index.update(fresh)
    consumer._acked[tp].extend(fresh)


PATCHED_FAUST_VERSION = "0.15.3"
_resume_points: ResumePoints | None = None  # set by patch_commit_offsets


def patch_commit_offsets(resume_points: ResumePoints | None = None) -> None:
    """Install `_new_offset` on Faust's consumer (idempotent); it was written against one Faust version."""
    global _resume_points
    _resume_points = resume_points
    if faust.__version__ != PATCHED_FAUST_VERSION:
        log.warning(
            "faust-streaming %s is not %s: check streams/offsets.py still matches its consumer",
            faust.__version__,
            PATCHED_FAUST_VERSION,
        )
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
