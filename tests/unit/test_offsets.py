"""The offset guard and the commit rule that keep Faust from skipping records (streams.offsets)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from intervaltree import IntervalTree

from streams import offsets
from streams.offsets import OffsetGuard, _new_offset

TOPIC = "p.work.fast"


class Partition:
    """A fake consumer position: the guard's seeks land here; `deliver` replays from it."""

    def __init__(self, committed: dict[int, int]) -> None:
        self.committed = committed
        self.seeks: list[tuple[int, int]] = []
        self.generation = 1

    async def starts(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return {p: self.committed.get(p, 0) for p in partitions}

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def guard(self) -> OffsetGuard:
        return OffsetGuard(generation=lambda: self.generation, starts=self.starts, seek=self.seek)


async def admitted(guard: OffsetGuard, records: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(p, o) for p, o in records if await guard.admit(TP(TOPIC, p), o, [0, 1])]


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
    assert await admitted(guard, [(0, 7), (0, 8)]) == [(0, 7), (0, 8)]


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


def test_nothing_acknowledged_commits_nothing() -> None:
    assert _new_offset(consumer(3, []), TP(TOPIC, 0)) is None
