"""Reading ahead in a partition on the real broker: what a restarted agent uses to tell done from undone."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP

from packager.adapters.kafka_log import Topics, ensure_topics
from packager.domain.events import Envelope, PackageQueued, encode, envelope
from streams.readahead import LogReader
from tests.unit.samples import completed

pytestmark = pytest.mark.kafka


async def test_the_reader_finds_an_event_further_on_and_only_from_where_it_is_told(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, topics, 1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(5):
            queued = envelope(f"job-{n}", PackageQueued(cache_key="k", lane="fast", attempt=1))
            await producer.send_and_wait(topics.events, encode(queued), key=b"k", partition=0)
        done = encode(envelope("job-3", completed()))
        await producer.send_and_wait(topics.events, done, key=b"k", partition=0)
    finally:
        await producer.stop()

    def ended(job: str) -> object:
        return lambda e: e.job_id == job and e.type == "PackageCompleted"

    seen: list[Envelope] = []
    # Faust hands its own TP type around; the reader takes it as well as aiokafka's.
    async with LogReader(kafka_bootstrap) as reader:
        where = TP(topics.events, 0)
        assert await reader.end_offset(where) == 6
        assert await reader.contains(where, 0, ended("job-3"))  # type: ignore[arg-type]
        assert await reader.contains(where, 5, ended("job-3"))  # type: ignore[arg-type]
        assert not await reader.contains(where, 6, ended("job-3"))  # type: ignore[arg-type]
        assert not await reader.contains(where, 0, ended("job-4"))  # type: ignore[arg-type]
        await reader.scan(where, 2, seen.append)
    assert [e.job_id for e in seen] == ["job-2", "job-3", "job-4", "job-3"]
