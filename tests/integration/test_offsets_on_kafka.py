"""The offset guard and the commit rule (streams.offsets) on a real Faust consumer and a real broker.

A Faust worker (tests/integration/guarded_worker.py, a child process stopped with SIGTERM as an operator
stops one) runs an agent through the guard; its records tell it to hold a record or to make Faust skip
some. The group's committed offsets are read with an admin client, as the next worker would find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from tests.integration.support import ROOT, ServiceProcess, end_offsets

pytestmark = pytest.mark.kafka


class Journal:
    """What the guarded agent wrote: `start p offset value ...` and `done p offset ...` lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def lines(self) -> list[list[str]]:
        return [line.split(" ", 3) for line in self.path.read_text().splitlines()]

    def done(self) -> list[int]:
        return [int(x[2]) for x in self.lines() if x[0] == "done"]

    def started(self) -> list[int]:
        return [int(x[2]) for x in self.lines() if x[0] == "start"]

    def release(self) -> None:
        """Let the agent finish the records it holds."""
        self.path.with_suffix(".release").touch()


@contextlib.contextmanager
def guarded_worker(
    bootstrap: str, topic: str, group: str, journal: Journal, log_dir: Path, **env: str
) -> Iterator[ServiceProcess]:
    """A guarded Faust worker as a child process; always stopped (by its PID) when the block ends."""
    log_file = log_dir / f"worker-{time.monotonic_ns()}.log"
    module = "tests.integration.guarded_worker"
    argv = [sys.executable, "-m", module, bootstrap, topic, group, str(journal.path)]
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
    worker = ServiceProcess(argv=argv, log_file=log_file, proc=proc)
    try:
        yield worker
    finally:
        worker.stop()


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, *values: str) -> list[int]:
    """Append `values` to partition 0 of `topic`, acknowledged by the broker; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, v.encode(), partition=0)).offset for v in values]
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset of partition 0: where the next owner of the partition starts.

    Read by a consumer that names the group but never joins it, so it does not disturb the worker.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def until(what: str, check: Callable[[], object], worker: ServiceProcess, within: float = 60.0) -> None:
    """Wait until `check()` is true, or fail with the worker's log."""
    deadline = time.monotonic() + within
    while not check():
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f}s\n{worker.log()}")
        await asyncio.sleep(0.1)


async def until_committed(
    bootstrap: str, group: str, topic: str, offset: int, worker: ServiceProcess, within: float = 60.0
) -> None:
    deadline = time.monotonic() + within
    while (now := await committed(bootstrap, group, topic)) != offset:
        if time.monotonic() > deadline:
            raise AssertionError(f"committed offset {now}, not {offset}, after {within:.0f}s\n{worker.log()}")
        await asyncio.sleep(0.2)


def stop(worker: ServiceProcess) -> None:
    """SIGTERM, as every ordinary stop sends, and wait for the worker's last commit and exit."""
    worker.proc.terminate()
    worker.proc.wait(timeout=60)


async def test_a_hole_is_read_again_and_a_held_record_is_never_committed_past_not_even_at_a_stop(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topic, group = f"{topic_prefix}.work", f"{topic_prefix}-worker"
    journal = Journal(tmp_path / "journal")
    await create_topic(kafka_bootstrap, topic)
    # Record 5 makes Faust jump from 6 to 9, so 6-8 are never delivered unless the guard reads them again.
    await produce(kafka_bootstrap, topic, "r", "r", "r", "r", "r", "skip-ahead:3")

    with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as worker:
        await until("records 0-5 done", lambda: journal.done() == [0, 1, 2, 3, 4, 5], worker)
        # 6 is a long build: the agent holds it while 7-12 are fetched, acknowledged or not.
        await produce(kafka_bootstrap, topic, "hold", "r", "r", "r", "r", "r", "r")
        await until("record 6 started", lambda: 6 in journal.started(), worker)
        assert "were skipped by the consumer; reading them again" in worker.log()
        assert journal.started() == [0, 1, 2, 3, 4, 5, 6]  # 9-12 came first, and were held back
        await until_committed(kafka_bootstrap, group, topic, 6, worker)
        # Faust commits every second; over several commits the offset stays at the record in progress.
        watch_until = time.monotonic() + 4.0
        while time.monotonic() < watch_until:
            assert await committed(kafka_bootstrap, group, topic) == 6
            await asyncio.sleep(0.5)
        # An operator's stop mid-build: Faust acks record 6 as it closes the agent's stream, and commits.
        stop(worker)
    assert 6 not in journal.done()
    assert await committed(kafka_bootstrap, group, topic) == 6, worker.log()

    # The next worker resumes at the unfinished record: nothing is lost, each record is done once.
    journal.release()
    with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as worker:
        await until("records 6-12 done", lambda: 12 in journal.done(), worker)
        await until_committed(kafka_bootstrap, group, topic, 13, worker)
    assert journal.done() == list(range(13))


async def test_a_rebalance_while_a_record_is_held_resumes_at_that_record_and_loses_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topic, group = f"{topic_prefix}.work", f"{topic_prefix}-worker"
    journal = Journal(tmp_path / "journal")
    await create_topic(kafka_bootstrap, topic)
    await produce(kafka_bootstrap, topic, "r", "r", "r", "hold", "r", "r")
    with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as first:
        await until("record 3 started", lambda: 3 in journal.started(), first)
        await until_committed(kafka_bootstrap, group, topic, 3, first)
        # A second worker joins: the group rebalances while the first one's agent holds record 3.
        with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as second:
            await until(
                "the second worker joined", lambda: "Successfully synced group" in second.log(), second
            )
            # The first worker committed as its partitions were revoked, before the group could sync.
            assert await committed(kafka_bootstrap, group, topic) == 3
            journal.release()
            await until("records 3-5 done", lambda: {3, 4, 5} <= set(journal.done()), second)
            await until_committed(kafka_bootstrap, group, topic, 6, second)
    done = journal.done()
    assert done[:3] == [0, 1, 2] and sorted(set(done)) == list(range(6))
    # 3 may be done twice (the first worker finishes it, its new owner does it again): at least once.


async def test_records_removed_before_anyone_read_them_do_not_stop_the_partition(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topic, group = f"{topic_prefix}.work", f"{topic_prefix}-worker"
    journal = Journal(tmp_path / "journal")
    await create_topic(kafka_bootstrap, topic)
    await produce(kafka_bootstrap, topic, "r", "r", "r")
    with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as worker:
        await until_committed(kafka_bootstrap, group, topic, 3, worker)
        stop(worker)

    # While no worker runs, 3-9 arrive and retention removes 3-5: the group's commit points before the
    # log start, and the consumer resets to it.
    await produce(kafka_bootstrap, topic, *["r"] * 7)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=6)})
    finally:
        await admin.close()

    with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as worker:
        await until("records 6-9 done", lambda: 9 in journal.done(), worker)
        # The commit moves from 3 straight on: the guard resumed at the log start, no hole to wait for.
        await until_committed(kafka_bootstrap, group, topic, 10, worker)
        assert "never arrived" not in worker.log() and "reading them again" not in worker.log()
    assert journal.done() == [0, 1, 2, 6, 7, 8, 9]


async def test_an_offset_no_record_will_ever_fill_is_given_up_and_the_commit_passes_it(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topic, group = f"{topic_prefix}.work", f"{topic_prefix}-worker"
    journal = Journal(tmp_path / "journal")
    await create_topic(kafka_bootstrap, topic)
    # A transaction's commit marker takes an offset that no consumer is ever handed: a hole for good.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}-tx")
    await producer.start()
    try:
        async with producer.transaction():
            record = await producer.send_and_wait(topic, b"r", partition=0)
    finally:
        await producer.stop()
    # The coordinator writes the marker (offset 1) after the commit returns: wait for it.
    deadline = time.monotonic() + 30
    while (await end_offsets(kafka_bootstrap, topic)).get(0) != 2:
        assert time.monotonic() < deadline, "the transaction marker was never written"
        await asyncio.sleep(0.1)
    [after] = await produce(kafka_bootstrap, topic, "r")
    assert (record.offset, after) == (0, 2)

    with guarded_worker(
        kafka_bootstrap, topic, group, journal, tmp_path, PACKAGER_TEST_RESEEK_AFTER="1.0"
    ) as worker:
        # The guard reads the partition again from 1 a few times, then acknowledges 1 as missing
        # (acknowledge_missing), so the commit rule can move past it.
        await until("record 2 done", lambda: 2 in journal.done(), worker)
        await until_committed(kafka_bootstrap, group, topic, 3, worker)
        assert "records " + topic + "[0] 1-1 never arrived; carrying on" in worker.log()
    assert journal.done() == [0, 2]


async def test_a_worker_asking_its_group_to_rebalance_rejoins_and_reads_on(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The remedy of a stalled table recovery (streams.recovery_watch), on a real Faust consumer."""
    topic, group = f"{topic_prefix}.work", f"{topic_prefix}-worker"
    journal = Journal(tmp_path / "journal")
    await create_topic(kafka_bootstrap, topic)
    await produce(kafka_bootstrap, topic, "r", "rejoin")
    with guarded_worker(kafka_bootstrap, topic, group, journal, tmp_path) as worker:
        await until("records 0-1 done", lambda: journal.done() == [0, 1], worker)
        # Joined once at start, and again when asked.
        await until(
            "the group rebalanced", lambda: worker.log().count("Successfully synced group") >= 2, worker
        )
        await produce(kafka_bootstrap, topic, "r", "r")
        await until("records 2-3 done", lambda: 3 in journal.done(), worker)
        await until_committed(kafka_bootstrap, group, topic, 4, worker)
    done = [(int(x[2]), x[3].split()[0]) for x in journal.lines() if x[0] == "done"]  # (offset, "g<n>")
    # At least once: records read before the rebalance and not yet committed may be read again.
    assert sorted({offset for offset, _ in done}) == [0, 1, 2, 3]
    assert done[0] == (0, "g1") and done[-1][1] != "g1", done  # read on in a new generation
