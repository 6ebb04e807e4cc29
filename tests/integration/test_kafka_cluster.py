"""The dev broker tool's cluster: 3 KRaft nodes that lose one node without losing a write, and get it back.

It starts three JVMs of its own, so it carries the chaos campaign's marker (`-m 'not chaos'` leaves both out).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.dev import kafka as dev_kafka
from tests.integration.support import read_topic

pytestmark = pytest.mark.chaos


async def leaders_when(state: Path, topic: str, ok: Callable[[dict[int, int]], bool]) -> dict[int, int]:
    """The partition leaders of `topic` once they satisfy `ok` (metadata reaches every node in a moment)."""
    deadline = time.monotonic() + 30
    while True:
        cluster = dev_kafka.cluster_status(state)
        assert cluster is not None
        with contextlib.suppress(dev_kafka.BrokerError):
            leaders = dev_kafka.partition_leaders(cluster, topic)
            if ok(leaders):
                return leaders
        assert time.monotonic() < deadline, f"leaders of {topic} never satisfied the condition"
        await asyncio.sleep(0.3)


async def test_a_killed_leader_loses_no_acknowledged_write_and_rejoins_on_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "cluster"
    cluster = await asyncio.to_thread(dev_kafka.start_cluster, state, nodes=3, partitions=2, log=print)
    try:
        assert len(cluster.nodes) == 3
        topics = Topics("clustertest")
        await ensure_topics(cluster.bootstrap_servers, topics, 2, replication_factor=3)
        leaders = await leaders_when(state, topics.requests, lambda found: -1 not in found.values())
        assert set(leaders) == {0, 1} and set(leaders.values()) <= {1, 2, 3}
        victim = leaders[0]

        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap_servers, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topics.requests, f"before-{i}".encode(), partition=0)
            await asyncio.to_thread(dev_kafka.kill_node, state, victim)
            # Two of three copies remain (min.insync.replicas=2): writes go on once a new leader is elected.
            for i in range(20):
                await producer.send_and_wait(topics.requests, f"during-{i}".encode(), partition=0)
            await leaders_when(state, topics.requests, lambda found: found[0] not in (victim, -1))

            await asyncio.to_thread(dev_kafka.restart_node, state, victim)
            for i in range(20):
                await producer.send_and_wait(topics.requests, f"after-{i}".encode(), partition=0)
        finally:
            await producer.stop()
        values = [v.decode() for _, v in await read_topic(cluster.bootstrap_servers, topics.requests)]
        expected = [f"{phase}-{i}" for phase in ("before", "during", "after") for i in range(20)]
        assert values == expected

        # restart_node returned once the cluster's metadata listed the node again; the CLI agrees.
        assert dev_kafka.main(["status", "--state-dir", str(state)]) == 0
        out = capsys.readouterr().out
        node_lines = [line for line in out.splitlines() if line.startswith("node ")]
        assert len(node_lines) == 3 and all(line.endswith(" up") for line in node_lines), out
    finally:
        assert dev_kafka.stop_cluster(state)
    assert dev_kafka.cluster_status(state) is None
    assert not any((state / f"node-{n}" / "data").exists() for n in (1, 2, 3))
