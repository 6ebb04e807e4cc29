"""The offset guard and the commit rule that keep Faust from skipping records (streams.offsets)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from intervaltree import IntervalTree

from streams import offsets
from streams.offsets import OffsetGuard, _new_offset, acknowledge_missing

TOPIC = "p.work.fast"


class Partition:
    """A fake consumer position: the guard's seeks land here; `deliver` replays from it."""

    def __init__(self, committed: dict[int, int]) -> None:
        self.committed = committed
        self.seeks: list[tuple[int, int]] = []
        self.skipped: list[tuple[int, range]] = []
        self.generation = 1
        self.assigned = [TP(TOPIC, 0), TP(TOPIC, 1), TP("other", 0)]

    async def starts(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {p: self.committed.get(p, 0) for p in partitions}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def guard(self) -> OffsetGuard:
        return OffsetGuard(
            topics=(TOPIC,),
            generation=lambda: self.generation,
            starts=self.starts,
            assigned=lambda: self.assigned,
            seek=self.seek,
            skip=lambda tp, offsets: self.skipped.append((tp.partition, offsets)),
        )


async def admitted(guard: OffsetGuard, records: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(p, o) for p, o in records if await guard.admit(TP(TOPIC, p), o)]


async def test_records_in_order_from_the_committed_offset_are_all_admitted() -> None:
    log = Partition({0: 5, 1: 0})
    records = [(0, 5), (1, 0), (0, 6), (1, 1), (0, 7)]
    assert await admitted(log.guard(), records) == records
    assert log.seeks == []


async def test_a_hole_at_the_start_seeks_back_and_waits_for_the_missing_record() -> None:
    log = Partition({0: 2})
    guard = log.guard()
    # The consumer dropped offset 2: 3 and 4 arrive first, then the re-read partition from 2.
    assert await admitted(guard, [(0, 3), (0, 4)]) == []
    assert log.seeks == [(0, 2)]
    assert await admitted(guard, [(0, 2), (0, 3), (0, 4), (0, 5)]) == [(0, 2), (0, 3), (0, 4), (0, 5)]
    assert log.seeks == [(0, 2)]


async def test_a_hole_in_the_middle_is_filled_and_redelivered_records_are_dropped() -> None:
    log = Partition({0: 0})
    guard = log.guard()
    assert await admitted(guard, [(0, 0), (0, 1), (0, 3)]) == [(0, 0), (0, 1)]
    assert log.seeks == [(0, 2)]
    assert await admitted(guard, [(0, 1), (0, 2), (0, 3)]) == [(0, 2), (0, 3)]


async def test_a_new_generation_starts_again_from_the_committed_offsets() -> None:
    log = Partition({0: 0})
    guard = log.guard()
    assert await admitted(guard, [(0, 0), (0, 1)]) == [(0, 0), (0, 1)]
    log.generation, log.committed = 2, {0: 1}
    # After a rebalance the partition is read again from its commit: offset 1 once more.
    assert await admitted(guard, [(0, 1), (0, 2)]) == [(0, 1), (0, 2)]


async def test_a_hole_that_never_fills_is_accepted_after_the_last_seek(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(offsets.time, "monotonic", lambda: clock[0])
    log = Partition({0: 0})
    guard = log.guard()
    for _ in range(offsets.MAX_SEEKS):
        assert await admitted(guard, [(0, 7)]) == []
        clock[0] += offsets.RESEEK_AFTER
    assert len(log.seeks) == offsets.MAX_SEEKS
    assert log.skipped == []
    assert await admitted(guard, [(0, 7), (0, 8)]) == [(0, 7), (0, 8)]
    assert log.skipped == [(0, range(0, 7))]  # so the commit can move past them


async def test_a_hole_at_the_tail_is_found_by_the_sweep_once_the_agent_idles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(offsets.time, "monotonic", lambda: clock[0])
    log = Partition({0: 4, 1: 0})
    guard = log.guard()
    ends = {TP(TOPIC, 0): 6, TP(TOPIC, 1): 0, TP("other", 0): 9}
    # Offsets 4 and 5 of partition 0 were dropped before the agent saw them; nothing else arrives.
    await guard.sweep(ends.get)
    assert log.seeks == []  # behind, but maybe only in flight
    clock[0] += offsets.STALL_AFTER - 1
    await guard.sweep(ends.get)
    assert log.seeks == []
    guard.busy = True  # a long job: its partitions wait, they are not lost
    clock[0] += offsets.STALL_AFTER
    await guard.sweep(ends.get)
    assert log.seeks == []
    guard.busy = False
    await guard.sweep(ends.get)
    clock[0] += offsets.STALL_AFTER
    await guard.sweep(ends.get)
    assert log.seeks == [(0, 4)]  # partition 1 is caught up; "other" is not this agent's topic
    assert await admitted(guard, [(0, 4), (0, 5)]) == [(0, 4), (0, 5)]
    clock[0] += 2 * offsets.STALL_AFTER
    await guard.sweep(ends.get)
    assert log.seeks == [(0, 4)]


def consumer(committed: int | None, acked: list[int]) -> Any:
    return SimpleNamespace(
        _acked={TP(TOPIC, 0): list(acked)},
        _acked_index=defaultdict(set, {TP(TOPIC, 0): set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {TP(TOPIC, 0): committed}),
    )


def test_no_commit_past_a_record_still_being_processed() -> None:
    # Committed 10 means "next to read is 10": with 10 unacknowledged, nothing may be committed.
    assert _new_offset(consumer(10, [11, 12]), TP(TOPIC, 0)) is None


def test_the_first_consecutive_run_from_the_committed_offset_is_committed() -> None:
    state = consumer(10, [12, 10, 11, 14])
    assert _new_offset(state, TP(TOPIC, 0)) == 13
    assert state._acked[TP(TOPIC, 0)] == [14]


def test_without_a_committed_offset_the_guards_resume_point_holds_the_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust says None for a first commit and for one at offset 0; the guard learned the group resumes at 0.
    points = offsets.ResumePoints(fetch=Partition({0: 0}).starts, generation=lambda: 1)
    points.points[TP(TOPIC, 0)] = 0
    monkeypatch.setattr(offsets, "_resume_points", points)
    assert _new_offset(consumer(None, [1, 2]), TP(TOPIC, 0)) is None
    assert _new_offset(consumer(None, [0, 1, 2]), TP(TOPIC, 0)) == 3


def test_nothing_acknowledged_commits_nothing() -> None:
    assert _new_offset(consumer(3, []), TP(TOPIC, 0)) is None


def test_faust_gaps_do_not_count_as_processed() -> None:
    # Faust's fetch loop records a "gap" for offsets it saw no record for; here that is a record the agent
    # has not had yet (re-read by the guard), so the commit must not pass it.
    state = consumer(10, [12, 13])
    state._gap[TP(TOPIC, 0)].addi(10, 12)
    assert _new_offset(state, TP(TOPIC, 0)) is None


def test_offsets_the_guard_gave_up_on_let_the_commit_move_on() -> None:
    state = consumer(10, [13, 14])
    acknowledge_missing(state, TP(TOPIC, 0), range(10, 13))  # type: ignore[arg-type]
    assert _new_offset(state, TP(TOPIC, 0)) == 15


async def test_resume_points_are_read_once_per_partition_and_generation() -> None:
    calls: list[tuple[str, list[int]]] = []
    generation = [1]

    async def fetch(topic: str, partitions: list[int]) -> dict[int, int]:
        calls.append((topic, partitions))
        return {p: 10 * generation[0] + p for p in partitions}

    points = offsets.ResumePoints(fetch=fetch, generation=lambda: generation[0])
    assert await points(TOPIC, [0, 1]) == {0: 10, 1: 11}
    assert await points(TOPIC, [1, 2]) == {1: 11, 2: 12}  # a second agent on the same topic
    assert calls == [(TOPIC, [0, 1]), (TOPIC, [2])]
    generation[0] = 2
    assert await points(TOPIC, [0]) == {0: 20}


def test_the_patch_is_installed_on_fausts_consumer() -> None:
    from faust.transport.consumer import Consumer

    offsets.patch_commit_offsets()
    assert Consumer._new_offset is _new_offset
