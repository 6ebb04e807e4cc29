"""The offset guard and the commit rule that keep Faust from skipping records (streams.offsets)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from packager.core.errors import ConfigurationError
from packager.core.settings import load_settings
from streams import offsets
from streams.offsets import OffsetGuard, _new_offset, acknowledge_missing

TOPIC = "p.work.fast"


@pytest.fixture(autouse=True)
def no_holds_left() -> Iterator[None]:
    """Guards here are handed records without an agent finishing them: their holds end with the test."""
    yield
    offsets._holders.clear()


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


async def test_giving_up_on_a_hole_skips_only_what_was_never_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(offsets.time, "monotonic", lambda: clock[0])
    log = Partition({0: 3})
    guard = log.guard()
    # Retention removed 3-5 while the records were in the queue: 9 was fetched first, 6-8 since.
    for _ in range(offsets.MAX_SEEKS):
        assert await admitted(guard, [(0, 9), (0, 6), (0, 7), (0, 8)]) == []
        clock[0] += offsets.RESEEK_AFTER
    assert await admitted(guard, [(0, 9)]) == []
    assert log.skipped == [(0, range(3, 6))]
    assert log.seeks[-1] == (0, 6)  # 6-8 were delivered and dropped: read again, not given up
    assert await admitted(guard, [(0, 6), (0, 7), (0, 8), (0, 9)]) == [(0, 6), (0, 7), (0, 8), (0, 9)]


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


def consumer(committed: int | None, acked: list[int], generation: int = 1) -> Any:
    return SimpleNamespace(
        app=SimpleNamespace(consumer_generation_id=generation),
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


def test_a_commit_overtaken_by_retention_moves_on_from_the_resume_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust still has 3 from the group, but retention removed 3-5: the partition resumed at the log start.
    points = offsets.ResumePoints(fetch=Partition({0: 6}).starts, generation=lambda: 1)
    points.points[TP(TOPIC, 0)] = 6
    monkeypatch.setattr(offsets, "_resume_points", points)
    assert _new_offset(consumer(3, [6, 7]), TP(TOPIC, 0)) == 8
    assert _new_offset(consumer(3, [7]), TP(TOPIC, 0)) is None


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
    acknowledge_missing(state, TP(TOPIC, 0), range(10, 13))
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
    offsets.patch_commit_offsets()
    assert Consumer._new_offset is _new_offset


async def test_no_commit_past_a_record_an_agent_holds_even_once_faust_acked_it() -> None:
    # At a stop Faust acks the record an agent is still working on as it closes the stream: the commit
    # must stay at that record, so the partition's next owner reads it again.
    guard = Partition({0: 3}).guard()
    assert await admitted(guard, [(0, 3), (0, 4)]) == [(0, 3), (0, 4)]  # 3 finished, 4 handed over
    guard.busy = True
    state = consumer(3, [3, 4, 5])
    assert _new_offset(state, TP(TOPIC, 0)) == 4
    state._committed_offset[TP(TOPIC, 0)] = 4  # what Faust records once the commit went through
    assert _new_offset(state, TP(TOPIC, 0)) is None
    guard.busy = False  # the agent asks for its next record: 4 is done
    assert _new_offset(state, TP(TOPIC, 0)) == 6


async def test_a_record_held_when_the_agent_is_stopped_is_not_committed_by_the_last_commit() -> None:
    """SIGTERM: Faust cancels the agent in the middle of a record, closes the stream, then commits."""
    guard = Partition({0: 3}).guard()
    offsets.track(guard)
    assert await admitted(guard, [(0, 3), (0, 4)]) == [(0, 3), (0, 4)]  # 3 finished, 4 in hand
    guard.busy = True
    offsets.untrack(guard)  # the stream's generator closes with the record in hand
    assert _new_offset(consumer(3, [3, 4, 5]), TP(TOPIC, 0)) == 4  # 4 is read again by the next owner


async def test_a_hold_limits_only_its_own_partition_and_generation() -> None:
    log = Partition({0: 0, 1: 0})
    guard = log.guard()
    assert await admitted(guard, [(0, 0)]) == [(0, 0)]
    guard.busy = True
    assert _new_offset(consumer(0, [0, 1], generation=1), TP(TOPIC, 0)) is None
    other = consumer(0, [], generation=1)
    other._acked[TP(TOPIC, 1)] = [0, 1]
    other._committed_offset[TP(TOPIC, 1)] = 0
    assert _new_offset(other, TP(TOPIC, 1)) == 2
    # After a rebalance the partition resumed from its commit (not past 0): the old hold is history.
    assert _new_offset(consumer(0, [0, 1], generation=2), TP(TOPIC, 0)) == 2
    guard.busy = False


def test_a_faust_version_the_guard_was_not_tested_with_is_refused() -> None:
    offsets.require_tested_faust("0.15.3")
    with pytest.raises(offsets.UnsupportedFaustError) as refused:
        offsets.require_tested_faust("0.16.0")
    assert "faust-streaming 0.16.0 is installed" in refused.value.message
    assert "0.15.3" in refused.value.message
    assert isinstance(refused.value, ConfigurationError)


def test_the_patch_is_not_installed_on_another_faust_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Consumer, "_new_offset", Consumer._new_offset)  # restored after the test
    monkeypatch.setattr(faust, "__version__", "0.16.0")
    before = Consumer._new_offset
    with pytest.raises(offsets.UnsupportedFaustError):
        offsets.patch_commit_offsets()
    assert Consumer._new_offset is before


def test_the_worker_command_refuses_another_faust_version_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from packager.cli import main as cli

    monkeypatch.setattr(Consumer, "_new_offset", Consumer._new_offset)
    monkeypatch.setattr(faust, "__version__", "0.16.0")
    monkeypatch.setenv("PACKAGER_SECRET", "unit-test-secret-0123456789abcdef")
    monkeypatch.setenv("PACKAGER_STORE_DIRECTORY", str(tmp_path))
    # Nothing listens there: the worker must stop before it talks to a broker.
    monkeypatch.setenv("PACKAGER_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["worker"])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("packager: configuration error: faust-streaming 0.16.0 is installed")
    assert "0.15.3" in lines[0]


def agents_app(**concurrency: int) -> faust.App:
    app = faust.App("unit-offsets", broker="kafka://127.0.0.1:1", store="memory://")
    topic = app.topic("unit-offsets-in")
    for name, n in concurrency.items():

        async def agent(stream: faust.StreamT) -> None:
            async for _ in stream:
                pass

        app.agent(topic, name=name, concurrency=n)(agent)
    return app


def test_agents_reading_through_the_guard_must_have_one_actor() -> None:
    offsets.require_single_actor(agents_app(planner=1, mailer=1))
    with pytest.raises(offsets.AgentConcurrencyError) as refused:
        offsets.require_single_actor(agents_app(planner=1, packer=4))
    assert "packer (concurrency 4)" in refused.value.message
    assert "planner" not in refused.value.message
    # An agent that does not read through the guard may have several.
    offsets.require_single_actor(agents_app(planner=1, packer=4), unguarded=["packer"])


def test_the_worker_app_is_refused_when_a_guarded_agent_has_several_actors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from streams.app import create_app, roles_for

    declare = faust.App.agent

    def with_four_stewards(
        self: faust.App, channel: Any = None, *, name: str | None = None, **kw: Any
    ) -> Any:
        if name == "steward":
            kw["concurrency"] = 4
        return declare(self, channel, name=name, **kw)

    settings = load_settings({}, secret="unit-test-secret-0123456789abcdef", store_directory=str(tmp_path))
    monkeypatch.setattr(Consumer, "_new_offset", Consumer._new_offset)  # both restored after the test
    monkeypatch.setattr(offsets, "_resume_points", offsets._resume_points)
    create_app(settings, roles_for(["fast"]))  # as declared: every agent has one actor
    monkeypatch.setattr(faust.App, "agent", with_four_stewards)
    with pytest.raises(offsets.AgentConcurrencyError, match=r"steward \(concurrency 4\)"):
        create_app(settings, roles_for(["fast"]))


async def test_records_dropped_for_a_re_read_are_not_committed_before_they_are_read_again() -> None:
    # After a rebalance Faust may hand over records fetched in the old generation (72, 73) before the
    # partition's committed offset (64). The guard drops them and reads again from 64, but Faust acks them
    # anyway: a commit must not pass 72 until 72 is read again, or a stop now would lose 72 and 73.
    log = Partition({0: 64})
    guard = log.guard()
    offsets.track(guard)
    try:
        assert await admitted(guard, [(0, 72), (0, 73)]) == []
        assert log.seeks == [(0, 64)]
        re_read = [(0, o) for o in range(64, 72)]
        assert await admitted(guard, re_read) == re_read
        guard.busy = False  # the agent finished 71
        state = consumer(64, [72, 73, *range(64, 72)])
        assert _new_offset(state, TP(TOPIC, 0)) == 72
        state._committed_offset[TP(TOPIC, 0)] = 72
        assert _new_offset(state, TP(TOPIC, 0)) is None  # 72 and 73 are acked, not read again yet
        assert await admitted(guard, [(0, 72), (0, 73)]) == [(0, 72), (0, 73)]
        guard.busy = False
        assert _new_offset(state, TP(TOPIC, 0)) == 74
    finally:
        offsets.untrack(guard)


async def test_a_record_left_to_a_new_owner_is_not_committed_if_the_partition_comes_back() -> None:
    # After a freeze, a record of a partition no longer this member's is left unhandled (Faust acks it).
    # If the partition comes back, commits stay below it until it is read again; if the group's commit
    # already passed it (another member handled it), it no longer holds anything.
    log = Partition({0: 10})
    guard = log.guard()
    offsets.track(guard)
    try:
        offsets.dropped(TP(TOPIC, 0), 12)
        assert await admitted(guard, [(0, 10), (0, 11)]) == [(0, 10), (0, 11)]
        guard.busy = False
        state = consumer(10, [10, 11, 12, 13])
        assert _new_offset(state, TP(TOPIC, 0)) == 12
        assert await admitted(guard, [(0, 12)]) == [(0, 12)]  # read again, and handled
        guard.busy = False
        state._committed_offset[TP(TOPIC, 0)] = 12
        assert _new_offset(state, TP(TOPIC, 0)) == 13
        offsets.dropped(TP(TOPIC, 0), 20)
        log.committed[0] = 30
        log.generation = 2
        assert await admitted(guard, [(0, 30)]) == [(0, 30)]
        assert offsets.first_dropped(TP(TOPIC, 0)) is None
    finally:
        offsets.untrack(guard)
