"""Reading the partitions of the requests and events topics in step, by record time (the projector's reads).

A fetch brings about as many bytes from every partition, and there are five event records for each request,
so read as it comes the requests topic runs far ahead of the events topic: catching up on a long log, a job's
request is folded in one batch and its events in later ones, and its row in the views is read and written
in each (measured on a 300,000-event history: 99,682 job rows written for 50,000 jobs, 56,531 in step, and
1.13 times the events per CPU-second; docs/benchmarks.md).

`Aligner` holds back the fetched records timestamped after the "watermark": the newest timestamp fetched from
the slowest partition that still has records to read. The requests topic keeps the broker's append time and
the events topic the sender's, so a request is earlier than the events about it. While more than
`hold_records` are held, the partitions ahead of the watermark are paused (what is held stays under that plus
one fetch per partition); the slowest never is, so the watermark moves on. A partition that brings nothing in
`hold_rounds` reads and `hold_seconds` (its broker does not answer) stops holding the others: both, so that
neither one broker's quick answers nor a slow round of reads marks another broker's partition quiet early.
Only the grouping into batches changes: each partition's records keep their order, and the folds give the same
views for any interleaving of the partitions, so clocks need not agree.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiokafka import TopicPartition

HOLD_ROUNDS = 10  # reads in which a partition still behind brought nothing before it stops holding others
HOLD_SECONDS = 1.0  # and the time since it last brought any (ten empty reads of the projector's 0.1 s)
HOLD_RECORDS = 20_000  # held records above which the partitions ahead are paused

# (topic, partition, records in offset order): one partition's run, as the projector applies it
Run = tuple[str, int, Sequence[Any]]


class Aligner:
    """Records fetched but not yet released, per partition (`add`, `release`, `pausing`)."""

    def __init__(
        self,
        partitions: Sequence[TopicPartition],
        *,
        hold_rounds: int = HOLD_ROUNDS,
        hold_seconds: float = HOLD_SECONDS,
        hold_records: int = HOLD_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._held: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in partitions}
        self._front: dict[TopicPartition, int] = {}  # timestamp of the newest record fetched
        self._quiet: dict[TopicPartition, int] = dict.fromkeys(partitions, 0)  # reads since it brought any
        self._brought: dict[TopicPartition, float] = dict.fromkeys(partitions, clock())  # when it last did
        self._hold_rounds = hold_rounds
        self._hold_seconds = hold_seconds
        self._clock = clock
        self._hold_records = hold_records
        self.count = 0

    def add(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        """Hold newly fetched records of `tp` (in offset order)."""
        if not records:
            return
        self._held[tp].extend(records)
        newest = max(record.timestamp for record in records)
        self._front[tp] = max(self._front.get(tp, newest), newest)
        self._quiet[tp] = 0
        self._brought[tp] = self._clock()
        self.count += len(records)

    def release(self, behind: Callable[[TopicPartition], bool]) -> list[Run]:
        """Called once per read: the runs of records no later than the watermark, computed over the
        partitions `behind` (still with records to fetch) that brought records in the last `hold_rounds`
        reads or `hold_seconds`; every record when there are none."""
        quiet, brought = self._quiet, self._brought
        since = self._clock() - self._hold_seconds
        fronts = [
            self._front.get(tp, -1)
            for tp in self._held
            if (quiet[tp] < self._hold_rounds or brought[tp] > since) and behind(tp)
        ]
        for tp in quiet:
            quiet[tp] += 1
        if not self.count:
            return []
        everything = not fronts
        watermark = min(fronts, default=0)
        runs: list[Run] = []
        for tp, held in self._held.items():
            taken = []
            while held and (everything or held[0].timestamp <= watermark):
                taken.append(held.popleft())
            if taken:
                runs.append((tp.topic, tp.partition, taken))
                self.count -= len(taken)
        return runs

    def pausing(self) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """(to pause, to resume): while more than `hold_records` are held, the partitions with records held
        (those ahead of the watermark) fetch no more; the slowest, with none held, go on."""
        if self.count > self._hold_records:
            return [tp for tp, held in self._held.items() if held], [
                tp for tp, held in self._held.items() if not held
            ]
        return [], list(self._held)


def merged(runs: Sequence[Run]) -> Iterator[tuple[str, int, Any]]:
    """(topic, partition, record) of every run, merged by timestamp. A partition's records stay in the order
    they came, whatever their timestamps (two producers' clocks): its runs are joined first, in order."""
    joined: dict[tuple[str, int], list[Any]] = {}
    for topic, partition, records in runs:
        joined.setdefault((topic, partition), []).extend(records)
    if len(joined) == 1:
        (((topic, partition), records),) = joined.items()
        for record in records:
            yield topic, partition, record
        return
    places = list(joined)
    streams = [_keyed(i, records) for i, records in enumerate(joined.values())]
    for _, i, record in heapq.merge(*streams):
        yield places[i][0], places[i][1], record


def _keyed(i: int, records: Sequence[Any]) -> Iterator[tuple[int, int, Any]]:
    """(timestamp, stream number, record): the stream number breaks ties, so records are never compared."""
    for record in records:
        yield record.timestamp, i, record
