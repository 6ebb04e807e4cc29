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
stop committing past a record no agent has acknowledged: an agent acknowledges a record by asking for the
next one. A record an agent still holds when the worker stops is not acknowledged, though Faust acks it as
it closes the stream, so a stop (SIGTERM) never commits past it; the next owner of the partition reads it
again.

These patches lean on faust-streaming's private consumer fields, so the worker refuses to start on a
version they were not tested with (`require_tested_faust`), and on an agent with several actors
(`require_single_actor`): the guard expects each partition's records one at a time, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.transports import ConsumerT

from packager.core import retrying
from packager.core.errors import ConfigurationError
from packager.core.retrying import Backoff

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


@dataclass(eq=False)  # guards are told apart by identity (see `_holders`)
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
    expected: dict[TP, int] = field(default_factory=dict)
    # tp -> (since, seeks so far, lowest offset delivered since the hole was found)
    seeking: dict[TP, tuple[float, int, int]] = field(default_factory=dict)
    progress_at: dict[TP, float] = field(default_factory=dict)  # when `expected` last moved
    behind_since: dict[TP, float] = field(default_factory=dict)  # first sweep that saw the log end past it
    _generation: int | None = None
    _busy: bool = False
    # (consumer generation, partition, offset) of the record the agent was handed and has not finished.
    holding: tuple[int | None, TP, int] | None = None

    @property
    def busy(self) -> bool:
        """The agent holds a record (the caller sets it around each record it hands the agent)."""
        return self._busy

    @busy.setter
    def busy(self, value: bool) -> None:
        self._busy = value
        if not value:
            # The agent asked for its next record: the one it held is acknowledged.
            self.holding = None
            _holders.discard(self)

    @property
    def current_generation(self) -> int | None:
        """The consumer generation the guard's positions (`expected`) belong to."""
        return self._generation

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

        async def committed() -> dict[int, int]:
            async with asyncio.timeout(SWEEP_TIMEOUT * 2):
                return await self.starts(topic, partitions)

        starts = await retrying.call(
            f"read the committed offsets of {topic}",
            committed,
            backoff=Backoff(first=0.5, cap=10.0),
            retry_on=(KafkaError, OSError, TimeoutError),
        )
        now = time.monotonic()
        for partition, start in starts.items():
            tp = TP(topic, partition)
            if tp not in self.expected:
                self.expected[tp] = start
                self.progress_at[tp] = now
                _handled_below(tp, start)  # the group's commit passed them: another member handled them

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
            since, seeks, lowest = self.seeking.get(tp, (0.0, 0, offset))
            lowest = min(lowest, offset)  # the first offset the partition still delivers, so far
            if seeks >= MAX_SEEKS and time.monotonic() - since >= RESEEK_AFTER:
                # Only what was never delivered is given up; records seen and dropped while waiting
                # are read again.
                log.error(
                    "records %s[%d] %d-%d never arrived; carrying on",
                    tp.topic,
                    tp.partition,
                    expected,
                    lowest - 1,
                )
                self.skip(tp, range(expected, lowest))
                if offset > lowest:
                    self.expected[tp] = lowest
                    self.seeking[tp] = (time.monotonic(), 1, offset)
                    await self.seek(tp, lowest)
                    return False
            elif seeks == 0 or time.monotonic() - since >= RESEEK_AFTER:
                log.warning(
                    "records %s[%d] %d-%d were skipped by the consumer; reading them again",
                    tp.topic,
                    tp.partition,
                    expected,
                    offset - 1,
                )
                self.seeking[tp] = (time.monotonic(), seeks + 1, lowest)
                await self.seek(tp, expected)
                return False
            else:
                self.seeking[tp] = (since, seeks, lowest)
                return False  # waiting for the re-read partition to reach the missing record
        self.seeking.pop(tp, None)
        _handled(tp, offset)
        self.expected[tp] = offset + 1
        self.progress_at[tp] = time.monotonic()
        self.holding = (self._generation, tp, offset)
        _holders.add(self)
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
    """Where `group` resumes partitions: its committed offset, or the log start when there is none or
    retention removed the records from the committed offset on (the consumer resets to earliest then)."""

    async def starts(topic: str, partitions: list[int]) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:
            await consumer.start()
            beginnings = await consumer.beginning_offsets(tps)
            result = {}
            for tp in tps:
                committed = await consumer.committed(tp)
                result[tp.partition] = max(committed or 0, beginnings[tp])
            return result
        finally:
            await consumer.stop()

    return starts


def _new_offset(self: Consumer, tp: TP) -> int | None:
    """Faust's `Consumer._new_offset`, without committing past an unacknowledged record.

    The acknowledged offsets are sorted; the committable offset is one past the first consecutive run, but
    only if that run starts at the committed offset (the next record to read), and never past a record an
    agent holds (Faust acks that one when it closes the stream at a stop, though the agent never finished
    it). Faust's "gaps" (offsets its fetch loop saw no record for) are not taken as acknowledged: the
    topics agents read here are neither compacted nor transactional, so a gap is a record the agent has
    not had yet, and the guard reads it again; offsets that truly never come are acknowledged by the guard
    (`acknowledge_missing`).
    """
    self._gap[tp].clear()
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    committed = self._committed_offset[tp]
    if _resume_points is not None and (start := _resume_points.points.get(tp)) is not None:
        # Faust keeps None both for "never committed" and for a commit at offset 0, and keeps a commit
        # that retention has overtaken: the partition was resumed from the guard's resume point then.
        committed = start if committed is None else max(committed, start)
    if committed is not None and acked[0] > committed:
        return None  # the record at `committed` is still being processed
    generation = self.app.consumer_generation_id
    held = held_offset(tp, generation)
    wanted = next_wanted(tp, generation)
    if (unhandled := first_dropped(tp)) is not None:
        wanted = unhandled if wanted is None else min(wanted, unhandled)
    run = 0
    while (
        run < len(acked)
        and (run == 0 or acked[run] == acked[run - 1] + 1)
        and (held is None or acked[run] < held)
        and (wanted is None or acked[run] < wanted)
    ):
        run += 1
    if run == 0:
        return None  # the first acknowledged record is one an agent still holds
    batch = acked[:run]
    del acked[:run]
    self._acked_index[tp].difference_update(batch)
    return batch[-1] + 1


# The guards whose agent holds a record now, process-wide like the patch itself.
_holders: set[OffsetGuard] = set()
# Every guard of a running agent stream (see `track`).
_guards: set[OffsetGuard] = set()


def track(guard: OffsetGuard) -> None:
    """Let `guard` bound commits (`next_wanted`) while its agent's stream runs; `untrack` when it ends."""
    _guards.add(guard)


def untrack(guard: OffsetGuard) -> None:
    """The agent's stream ended. A record it still held keeps bounding commits (`held_offset`).

    At a stop Faust cancels the agents, closes their streams (acknowledging the record each was working
    on) and only then makes its last commit: a planner stopped in the middle of a request must leave that
    request to the partition's next owner, not commit past it.
    """
    _guards.discard(guard)
    if guard.holding is None:
        _holders.discard(guard)


# Offsets of records an agent was handed after a freeze for a partition no longer its own (see
# `streams.app`): acknowledged by Faust, never handled here.
_dropped: dict[TP, set[int]] = {}


def dropped(tp: TP, offset: int) -> None:
    """Record that the record at `offset` of `tp` was left unhandled; commits stay below it until it is."""
    _dropped.setdefault(tp, set()).add(offset)


def _handled(tp: TP, offset: int) -> None:
    if (left := _dropped.get(tp)) is not None:
        left.discard(offset)
        if not left:
            del _dropped[tp]


def _handled_below(tp: TP, start: int) -> None:
    if (left := _dropped.get(tp)) is not None:
        left.difference_update([o for o in left if o < start])
        if not left:
            del _dropped[tp]


def first_dropped(tp: TP) -> int | None:
    """The lowest offset of `tp` left unhandled and not read again since, if any."""
    return min(_dropped.get(tp, ()), default=None)


def next_wanted(tp: TP, generation: int | None) -> int | None:
    """The lowest offset of `tp` a guard still waits for in consumer `generation`, if any guard tracks it.

    A record the guard drops to read the partition again (a hole before it) is acknowledged by Faust all
    the same when the stream moves on; without this bound a commit could pass it before it is read again,
    and a rebalance or a stop then would lose it.
    """
    wanted = [g.expected[tp] for g in _guards if g.current_generation == generation and tp in g.expected]
    return min(wanted, default=None)


def held_offset(tp: TP, generation: int | None) -> int | None:
    """The lowest offset of `tp` that an agent holds in consumer `generation`, if any.

    A hold taken in an earlier generation no longer limits commits: a rebalance has resumed the partition
    from its committed offset since, which was not past the held record. So a guard whose agent crashed
    holds the partition's commit at the record it crashed on until the next rebalance, when that record is
    read again: delivered twice rather than lost.
    """
    held = [h[2] for g in _holders if (h := g.holding) is not None and h[1] == tp and h[0] == generation]
    return min(held, default=None)


def acknowledge_missing(app_consumer: ConsumerT, tp: TP, offsets: range) -> None:
    """Count offsets that will never be delivered (removed by retention, say) as acknowledged."""
    consumer = cast(Consumer, app_consumer)  # the app's consumer, whose private bookkeeping this fills in
    index = consumer._acked_index[tp]
    fresh = [o for o in offsets if o not in index]
    index.update(fresh)
    consumer._acked[tp].extend(fresh)


# The faust-streaming versions `_new_offset`, `acknowledge_missing` and the guard were tested with, against
# a real consumer (tests/integration/test_offsets_on_kafka.py). Add one only after those tests pass on it.
TESTED_FAUST_VERSIONS = ("0.15.3",)
_resume_points: ResumePoints | None = None  # set by patch_commit_offsets


class UnsupportedFaustError(ConfigurationError):
    """The installed faust-streaming is not one the offset guard was tested with; the worker stops."""


class AgentConcurrencyError(ConfigurationError):
    """An agent reading through the offset guard has more than one actor; the worker stops."""


def require_tested_faust(installed: str | None = None) -> None:
    """Raise `UnsupportedFaustError` unless `installed` (default: faust's own) is a tested version."""
    installed = faust.__version__ if installed is None else installed
    if installed not in TESTED_FAUST_VERSIONS:
        raise UnsupportedFaustError(
            f"faust-streaming {installed} is installed, but streams/offsets.py patches consumer internals "
            f"tested only with faust-streaming {', '.join(TESTED_FAUST_VERSIONS)}: install that version "
            "(pip install -r requirements.lock)"
        )


def require_single_actor(app: faust.App, unguarded: Iterable[str] = ()) -> None:
    """Raise `AgentConcurrencyError` if an agent of `app` other than `unguarded` has concurrency != 1.

    Every agent reads through the guard unless named in `unguarded`. Several actors of one agent share its
    stream: each would see only some of a partition's records, take the others for holes and seek back for
    ever, and the commit rule would count records acknowledged out of order.
    """
    exempt = set(unguarded)
    several = {
        name: agent.concurrency
        for name, agent in app.agents.items()
        if name not in exempt and agent.concurrency != 1
    }
    if several:
        listed = ", ".join(f"{name} (concurrency {n})" for name, n in sorted(several.items()))
        raise AgentConcurrencyError(
            f"agents reading through the offset guard must have concurrency 1, not: {listed}; "
            "run builds in tasks of their own instead, or name the agent in `unguarded` if it does not "
            "read through the guard"
        )


def patch_commit_offsets(resume_points: ResumePoints | None = None) -> None:
    """Install `_new_offset` on Faust's consumer (idempotent), on a tested faust-streaming only."""
    global _resume_points
    require_tested_faust()
    _resume_points = resume_points
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
