"""The projector reads the requests and events topics in step by record time (`log_alignment`)."""

from __future__ import annotations

from typing import NamedTuple

from aiokafka import TopicPartition

from packager.adapters.log_alignment import Aligner, Run, merged

REQUESTS = TopicPartition("p.requests", 0)
EVENTS = TopicPartition("p.events", 0)


class Record(NamedTuple):
    offset: int
    timestamp: int


def records(timestamps: list[int], first_offset: int = 0) -> list[Record]:
    return [Record(first_offset + i, ts) for i, ts in enumerate(timestamps)]


def offsets(runs: list[Run], topic: str) -> list[int]:
    return [r.offset for t, _, run in runs if t == topic for r in run]


def test_records_after_the_slowest_partitions_newest_are_held_until_it_catches_up() -> None:
    aligner = Aligner([REQUESTS, EVENTS])
    aligner.add(REQUESTS, records([10, 20, 30, 40]))
    aligner.add(EVENTS, records([5, 15, 25]))

    first = aligner.release(lambda tp: True)
    assert offsets(first, "p.requests") == [0, 1]  # up to 25, the events' newest
    assert offsets(first, "p.events") == [0, 1, 2]
    assert aligner.count == 2

    aligner.add(EVENTS, records([35, 45], first_offset=3))
    second = aligner.release(lambda tp: True)
    assert offsets(second, "p.requests") == [2, 3]
    assert offsets(second, "p.events") == [3]  # 45 waits for the requests' next records
    assert aligner.count == 1


def test_a_partition_read_to_its_end_holds_back_nothing() -> None:
    aligner = Aligner([REQUESTS, EVENTS])
    aligner.add(REQUESTS, records([10, 20, 30]))
    runs = aligner.release(lambda tp: tp == REQUESTS)  # the events topic has nothing more to read
    assert offsets(runs, "p.requests") == [0, 1, 2]
    assert aligner.count == 0


def events_behind_requests_held(now: list[float]) -> Aligner:
    """An aligner on the clock `now[0]` holding two requests behind the events partition's one record."""
    aligner = Aligner([REQUESTS, EVENTS], hold_rounds=3, hold_seconds=1.0, clock=lambda: now[0])
    aligner.add(EVENTS, records([5]))
    aligner.add(REQUESTS, records([10, 20]))
    return aligner


def test_a_partition_behind_that_brings_nothing_stops_holding_the_others() -> None:
    now = [0.0]
    aligner = events_behind_requests_held(now)
    for _ in range(3):
        now[0] += 0.5
        assert offsets(aligner.release(lambda tp: True), "p.requests") == []
    # three reads and 1.5 s without a record from the events partition (its broker does not answer, say)
    assert offsets(aligner.release(lambda tp: True), "p.requests") == [0, 1]


def test_quick_reads_do_not_mark_a_partition_quiet_before_its_time() -> None:
    # Another broker answering at once: many reads within a moment say nothing of the events' broker.
    now = [0.0]
    aligner = events_behind_requests_held(now)
    for _ in range(20):
        now[0] += 0.01
        assert offsets(aligner.release(lambda tp: True), "p.requests") == []
    now[0] = 1.5
    assert offsets(aligner.release(lambda tp: True), "p.requests") == [0, 1]


def test_a_partition_never_read_yet_holds_the_others_until_it_is() -> None:
    aligner = Aligner([REQUESTS, EVENTS])
    aligner.add(REQUESTS, records([10]))
    assert aligner.release(lambda tp: True) == []
    aligner.add(EVENTS, records([12]))
    assert offsets(aligner.release(lambda tp: True), "p.requests") == [0]


def test_each_partitions_order_is_kept_when_its_timestamps_go_back() -> None:
    aligner = Aligner([REQUESTS, EVENTS])
    aligner.add(REQUESTS, records([10, 50, 20, 30]))  # two producers' clocks
    aligner.add(EVENTS, records([40]))
    runs = aligner.release(lambda tp: True)
    assert offsets(runs, "p.requests") == [0]  # 50 is later than 40: it and what follows it wait
    aligner.add(EVENTS, records([60], first_offset=1))
    assert offsets(aligner.release(lambda tp: True), "p.requests") == [1, 2, 3]


def test_while_many_records_are_held_the_partitions_ahead_pause_and_the_slowest_reads_on() -> None:
    aligner = Aligner([REQUESTS, EVENTS], hold_records=3)
    aligner.add(REQUESTS, records([10, 20, 30, 40, 50]))
    aligner.add(EVENTS, records([5]))
    aligner.release(lambda tp: True)
    assert aligner.pausing() == ([REQUESTS], [EVENTS])
    aligner.add(EVENTS, records([60], first_offset=1))
    aligner.release(lambda tp: True)
    assert aligner.pausing() == ([], [REQUESTS, EVENTS])


def test_merged_interleaves_runs_by_time_and_keeps_each_runs_order() -> None:
    runs = [
        ("p.requests", 0, records([10, 30, 20])),
        ("p.events", 3, records([15, 25], first_offset=7)),
    ]
    got = [(topic, partition, r.offset) for topic, partition, r in merged(runs)]
    assert got == [
        ("p.requests", 0, 0),
        ("p.events", 3, 7),
        ("p.events", 3, 8),
        ("p.requests", 0, 1),
        ("p.requests", 0, 2),
    ]
    assert [r.offset for _, _, r in merged(runs[:1])] == [0, 1, 2]


def test_merged_keeps_a_partitions_order_across_its_runs_when_its_timestamps_go_back() -> None:
    # Two reads of one partition in one batch; the second's record was stamped earlier by another producer.
    runs = [
        ("p.events", 0, [Record(0, 100)]),
        ("p.requests", 0, [Record(0, 97)]),
        ("p.events", 0, [Record(1, 95)]),
    ]
    got = [(topic, r.offset) for topic, _, r in merged(runs)]
    assert got == [("p.requests", 0), ("p.events", 0), ("p.events", 1)]
    assert [r.offset for _, _, r in merged([runs[0], runs[2]])] == [0, 1]
