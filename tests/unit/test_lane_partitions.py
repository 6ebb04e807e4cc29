"""Lane records go round the lane topic's partitions, so builds spread evenly whatever the keys hash to."""

from __future__ import annotations

from collections import Counter
from itertools import islice, pairwise

from streams.packers import lane_partitions


def test_lane_records_take_the_partitions_in_turn() -> None:
    turns = list(islice(lane_partitions(6), 144))
    assert set(turns) == set(range(6))
    assert set(Counter(turns).values()) == {24}  # every partition gets its share, to the record
    assert all((b - a) % 6 == 1 for a, b in pairwise(turns))


def test_processes_start_at_different_partitions() -> None:
    firsts = {next(lane_partitions(6)) for _ in range(200)}
    assert len(firsts) > 1  # not every worker's first record to partition 0
