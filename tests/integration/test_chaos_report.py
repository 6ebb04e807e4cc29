"""The chaos campaign's report places a lost job's request against the worker group's committed offsets."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from benchmarks.chaos_check import place_requests
from packager.domain.events import PackageRequested, encode, envelope

pytestmark = pytest.mark.kafka


def request(job_id: str) -> bytes:
    payload = PackageRequested("url", "k", "res", "a@example.org", "", {"resource_id": "res"})
    return encode(envelope(job_id, payload))


async def test_lost_requests_are_placed_by_partition_and_offset_beside_the_committed_offsets(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}.requests", f"{topic_prefix}-worker"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for job_id, partition in [("j0", 0), ("j1", 0), ("j2", 1), ("j3", 0)]:
            await producer.send_and_wait(topic, request(job_id), partition=partition)
        await producer.send_and_wait(topic, b"not an event", partition=1)
    finally:
        await producer.stop()
    # The group read partition 0 up to offset 2 (j0 and j1), and nothing of partition 1.
    committer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await committer.start()
    try:
        tp = TopicPartition(topic, 0)
        committer.assign([tp])
        await committer.commit({tp: OffsetAndMetadata(2, "")})
    finally:
        await committer.stop()

    placed = await place_requests(kafka_bootstrap, topic, group, 2, {"j1", "j2", "j3", "never-sent"})

    assert placed == {
        "requests": {"j1": "0@1", "j2": "1@0", "j3": "0@2"},
        "committed": {"0": 2, "1": None},
        "end": {"0": 3, "1": 2},
    }
